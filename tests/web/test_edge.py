"""The edge under gunicorn, over raw sockets: HEAD, malformed body framing, slow and idle clients.

Each case is what a hostile or broken client can send before the sidecar's own code sees a request:
it must get a 4xx in Mistral's error shape (or a closed connection, for headers that never finish)
within a bounded time, never a 500 or a connection held open.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from ..conftest import MISTRAL_KEY
from ..fakes import FakeMistral, chat_body
from ..servers import gunicorn_sidecar

pytestmark = pytest.mark.slow
HEADER_TIMEOUT, KEEPALIVE = 1.0, 3.0
ERROR_KEYS = {"object", "message", "type", "param", "code"}


@pytest.fixture(scope="module")
def upstream():
    fake = FakeMistral()
    fake.on("GET", "/v1/models", json_body={"object": "list", "data": []})
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def sidecar(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge")
    env = {"MISTRAL_API_BASE": upstream.url, "MISTRAL_API_KEY": MISTRAL_KEY,
           "SIDECAR_DB_PATH": str(tmp / "sidecar.sqlite3"),
           "SIDECAR_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "SIDECAR_KEEPALIVE_TIMEOUT": str(KEEPALIVE)}
    with gunicorn_sidecar(env, workers=1, log_path=tmp / "sidecar.log") as (url, _process):
        yield url, tmp / "sidecar.log"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _parse(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _chunked_post(url: str, body: bytes, *, half_close: bool) -> tuple[int, bytes, float]:
    """POST chat with a hand-framed chunked body; returns (status, body, seconds until the answer)."""
    sock = _connect(url)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    if half_close:
        sock.shutdown(socket.SHUT_WR)
    raw = _read_until_closed(sock)
    elapsed = time.monotonic() - started
    sock.close()
    status, _headers, payload = _parse(raw)
    return status, payload, elapsed


def _dechunk(payload: bytes) -> bytes:
    out = b""
    while payload:
        size, _, rest = payload.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, payload = out + rest[:n], rest[n + 2:]
    return out


@pytest.mark.parametrize("path", ["/health/readiness", "/health/liveliness", "/metrics", "/v1/models",
                                  "/mistral/v1/models", "/key/list", "/spend/logs"])
def test_head_answers_like_get_without_a_body(sidecar, path):
    url, _log = sidecar
    get = requests.get(url + path, timeout=10)
    head = requests.head(url + path, timeout=10)
    assert head.status_code == get.status_code < 500
    assert head.content == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]


def test_head_on_a_route_without_get_is_405(sidecar):
    url, _log = sidecar
    response = requests.head(url + "/v1/chat/completions", timeout=10)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


CHAT = json.dumps({"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}).encode()
MALFORMED = {
    "negative size": b"-1\r\n" + CHAT + b"\r\n0\r\n\r\n",
    "hex prefix": b"0x10\r\n" + CHAT[:16] + b"\r\n0\r\n\r\n",
    "size shorter than the data": b"2\r\n" + CHAT + b"\r\n0\r\n\r\n",
    "no size at all": b"\r\n" + CHAT + b"\r\n0\r\n\r\n",
    "bad chunk extension": b"%x;=\r\n" % len(CHAT) + CHAT + b"\r\n0\r\n\r\n",
    "size line never ends": b"1" * 10_000,
    "bare LF in trailers": b"%x\r\n" % len(CHAT) + CHAT + b"\r\n0\r\nX-A: b\nX-C: d\r\n\r\n",
}
PREMATURE = {  # the client stops sending (half-closes) before the body is complete
    "cut inside a chunk": b"%x\r\n" % len(CHAT) + CHAT[:10],
    "no last chunk": b"%x\r\n" % len(CHAT) + CHAT + b"\r\n",
    "no final CRLF": b"%x\r\n" % len(CHAT) + CHAT + b"\r\n0\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED) + list(PREMATURE))
def test_malformed_chunked_bodies_get_400_in_mistral_shape(sidecar, upstream, name):
    url, _log = sidecar
    before = len(upstream.seen)
    framed = MALFORMED.get(name) or PREMATURE[name]
    status, payload, elapsed = _chunked_post(url, framed, half_close=name in PREMATURE)
    assert status == 400, payload[:300]
    error = json.loads(_dechunk(payload) if not payload.startswith(b"{") else payload)
    assert set(error) == ERROR_KEYS and error["code"] == "invalid_body_framing"
    assert elapsed < HEADER_TIMEOUT + 5
    assert len(upstream.seen) == before


@pytest.mark.parametrize("framed", [
    b"ffffffff\r\n" + CHAT + b"\r\n",  # a size far larger than what follows, then silence
    b"f" * 40 + b"\r\n" + CHAT,
])
def test_a_body_that_stops_arriving_gets_408_within_the_header_timeout(sidecar, upstream, framed):
    url, _log = sidecar
    status, payload, elapsed = _chunked_post(url, framed, half_close=False)
    assert status == 408, payload[:300]
    assert json.loads(_dechunk(payload) if not payload.startswith(b"{") else payload)["code"] == "request_timeout"
    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 5


def test_a_short_content_length_body_that_stalls_gets_408(sidecar):
    url, _log = sidecar
    sock = _connect(url)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\nConnection: close\r\n\r\n{\"model\":")
    status, _headers, _body = _parse(_read_until_closed(sock))
    sock.close()
    assert status == 408
    assert time.monotonic() - started < HEADER_TIMEOUT + 5


def test_a_short_content_length_body_whose_client_stops_sending_gets_400(sidecar):
    """The body is read straight from gunicorn's wsgi.input (no werkzeug LimitedStream): a body that
    ends before its Content-Length is still the client's 400, not a truncated body forwarded."""
    url, _log = sidecar
    sock = _connect(url)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\nConnection: close\r\n\r\n{\"model\":")
    sock.shutdown(socket.SHUT_WR)
    status, _headers, body = _parse(_read_until_closed(sock))
    sock.close()
    assert status == 400, body[:300]
    assert json.loads(body)["code"] == "invalid_body_framing"


def test_a_large_body_is_forwarded_byte_for_byte(sidecar, upstream):
    """A body of megabytes arrives in many reads, received straight into one buffer (worker.read_body):
    what Mistral gets is exactly what the client sent."""
    url, _log = sidecar
    body = json.dumps({"model": "mistral-small-latest", "messages": [
        {"role": "user", "content": "".join(chr(0x20 + i % 90) for i in range(3_000_000)).replace('"', "'")
         .replace("\\", "/")}]}, separators=(",", ":")).encode()
    answer = requests.post(url + "/v1/chat/completions", data=body, timeout=30,
                           headers={"Authorization": f"Bearer {MISTRAL_KEY}", "Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text[:300]
    assert upstream.last.body == body


def test_pipelined_requests_with_bodies_are_each_answered(sidecar, upstream):
    """Two requests sent at once on one connection: the first body ends where the second request begins,
    whatever part of it the worker read along with the headers."""
    url, _log = sidecar
    sock = _connect(url)
    bodies = [json.dumps({"model": "mistral-small-latest", "messages": [{"role": "user", "content": word * n}]}).encode()
              for word, n in (("first ", 10), ("second ", 20_000))]
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + MISTRAL_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n")
    before = len(upstream.seen)
    sock.sendall(b"".join(head % len(body) + body for body in bodies))
    raw = b""
    while raw.count(b"HTTP/1.1 200") < 2 or not raw.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, raw[-300:]
        raw += chunk
    sock.close()
    assert [seen.body for seen in upstream.seen[before:]] == bodies


def test_headers_that_never_finish_are_closed_after_the_header_timeout(sidecar):
    url, _log = sidecar
    sock = _connect(url)
    started = time.monotonic()
    sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed_at = None
    for _ in range(40):  # one header byte every 0.25 s: each read succeeds, the whole never completes
        try:
            sock.sendall(b"X")
        except OSError:
            closed_at = time.monotonic()
            break
        sock.settimeout(0.25)
        try:
            if sock.recv(1) == b"":
                closed_at = time.monotonic()
                break
        except TimeoutError:
            pass
    sock.close()
    assert closed_at is not None, "the connection was still open after 10 s of trickled headers"
    assert HEADER_TIMEOUT * 0.5 <= closed_at - started < HEADER_TIMEOUT + 2  # a random half to all of it


def test_a_silent_connection_is_closed_after_the_header_timeout(sidecar):
    url, _log = sidecar
    sock = _connect(url)
    started = time.monotonic()
    assert _read_until_closed(sock) == b""
    assert HEADER_TIMEOUT * 0.5 <= time.monotonic() - started < HEADER_TIMEOUT + 2
    sock.close()


def test_keep_alive_waits_longer_than_the_header_timeout_then_closes(sidecar):
    """An idle kept-alive connection lives ``SIDECAR_KEEPALIVE_TIMEOUT``, not the header timeout."""
    url, _log = sidecar
    sock = _connect(url)
    request = b"GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(2):
        sock.sendall(request)
        raw = b""
        while b'"ok"' not in raw:
            raw += sock.recv(4096)
        assert _parse(raw)[0] == 200
        time.sleep(HEADER_TIMEOUT * 1.5)  # idle longer than the header timeout: still served
    idle_from = time.monotonic() - HEADER_TIMEOUT * 1.5
    assert _read_until_closed(sock) == b""
    assert KEEPALIVE * 0.9 <= time.monotonic() - idle_from < KEEPALIVE + 2
    sock.close()


def test_no_traceback_in_the_log_after_the_edge_cases(sidecar):
    url, log = sidecar
    assert requests.get(url + "/health/liveliness", timeout=5).status_code == 200
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
