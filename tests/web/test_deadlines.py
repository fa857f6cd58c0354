"""Total deadlines on what upstream sends: a non-streamed answer within ``SIDECAR_TOTAL_TIMEOUT`` (else 504),
a stream's next complete event within ``SIDECAR_STREAM_IDLE_TIMEOUT`` (else it ends with an SSE error event).

The upstreams here drip bytes (each read succeeds, so the read timeout never fires) or fall silent.
Under gunicorn's gevent worker the deadline interrupts the wait itself; in-process it is checked
between reads.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from ..conftest import MISTRAL_KEY
from ..fakes import RawUpstream
from ..servers import gunicorn_sidecar

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
BODY = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": []}).encode()


def drip_json(conn, _request):
    """A JSON answer, headers at once, then its body one byte every 0.1 s (about 8 s in all)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY * 2))
    for byte in BODY * 2:
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


def drip_headers(conn, _request):
    """The status line and headers themselves, one byte every 0.1 s."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n":
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


def drip_stream(conn, _request):
    """An event stream that sends one event, then trickles a second one that never completes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    first = b'data: {"id":"s","object":"chat.completion.chunk","choices":[]}\n\n'
    conn.sendall(b"%x\r\n%s\r\n" % (len(first), first))
    for _ in range(100):
        conn.sendall(b"1\r\nx\r\n")
        time.sleep(0.1)


def silent_stream(conn, _request):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    first = b'data: {"id":"s","object":"chat.completion.chunk","choices":[]}\n\n'
    conn.sendall(b"%x\r\n%s\r\n" % (len(first), first))
    time.sleep(8)


@pytest.fixture
def raw_upstream():
    made = []

    def build(behave):
        made.append(RawUpstream(behave))
        return made[-1]
    yield build
    for upstream in made:
        upstream.close()


def test_a_dripping_json_answer_gets_504_after_the_total_timeout_in_process(make_app, raw_upstream):
    upstream = raw_upstream(drip_json)
    client = make_app(mistral_api_base=upstream.url, total_timeout=1.0, read_timeout=5.0).test_client()
    started = time.monotonic()
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 504, response.get_data()
    assert response.json["code"] == "upstream_total_timeout"
    assert 1.0 <= time.monotonic() - started < 3.0


def test_a_stream_that_trickles_without_an_event_ends_with_an_idle_error_in_process(make_app, raw_upstream):
    upstream = raw_upstream(drip_stream)
    client = make_app(mistral_api_base=upstream.url, stream_idle_timeout=1.0, read_timeout=5.0).test_client()
    started = time.monotonic()
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert text.startswith("data: ") and "stream_idle_timeout" in text
    assert time.monotonic() - started < 3.5


BEHAVIOURS = {"json": drip_json, "headers": drip_headers, "trickle": drip_stream, "silent": silent_stream}


def switchboard(conn, request):
    """One upstream for the gunicorn test: the forwarded ``X-Fault`` header picks the misbehaviour."""
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"x-fault:"):
            return BEHAVIOURS[line.split(b":", 1)[1].strip().decode()](conn, request)


@pytest.mark.slow
def test_deadlines_under_gunicorn(raw_upstream, tmp_path):
    """The production worker: drip in the body, drip in the headers, a trickling and a silent stream."""
    upstream = raw_upstream(switchboard)
    env = {"MISTRAL_API_BASE": upstream.url, "MISTRAL_API_KEY": MISTRAL_KEY,
           "SIDECAR_DB_PATH": str(tmp_path / "sidecar.sqlite3"), "SIDECAR_READ_TIMEOUT": "5",
           "SIDECAR_TOTAL_TIMEOUT": "1.5", "SIDECAR_STREAM_IDLE_TIMEOUT": "1"}
    with gunicorn_sidecar(env, workers=1, log_path=tmp_path / "sidecar.log") as (url, _process):
        for name in BEHAVIOURS:
            stream = name in ("trickle", "silent")
            started = time.monotonic()
            response = requests.post(url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                                     headers={"X-Fault": name}, timeout=15)
            elapsed = time.monotonic() - started
            if stream:
                assert response.status_code == 200
                assert ("stream_idle_timeout" if name == "trickle" else "stream_interrupted") in response.text
                assert elapsed < 3.5, (name, elapsed)
            else:
                assert response.status_code == 504, (name, response.text)
                assert response.json()["code"] == "upstream_total_timeout"
                assert 1.4 <= elapsed < 3.0, (name, elapsed)  # the headers drip is cut too, mid-read
