"""The fault matrix: an upstream that misbehaves on command, and what the client sees each time.

One switchboard upstream (raw sockets, so resets and silences are real) picks its misbehaviour
from the ``X-Fault`` request header, which the sidecar forwards like any client header. The same
table runs in-process and against the sidecar under gunicorn, where the worker must survive it all.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from sidecar.web import pipeline as pipeline_mod

from ..conftest import MISTRAL_KEY
from ..fakes import Blackhole, RawUpstream, chat_body, chat_events, reset
from ..servers import children, free_port, gunicorn_sidecar

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
HUGE = 200 * 1024 * 1024


# -- the switchboard --------------------------------------------------------------------------------
def _head(status=200, ctype="application/json", length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n{framing}\r\n{extra}Connection: close\r\n\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _answer(status, body: bytes, ctype="application/json", extra=""):
    return lambda conn: conn.sendall(_head(status, ctype, len(body), extra) + body)


def _json_then(after):
    def behave(conn):
        conn.sendall(_head(200, length=1000) + b'{"id": "cmpl-')
        after(conn)
    return behave


def _sse_then(after):
    def behave(conn):
        conn.sendall(_head(200, "text/event-stream") + b"".join(_chunk(e) for e in chat_events(3)[:2]))
        after(conn)
    return behave


def _silence(conn):
    """Say nothing: the sidecar's read timeout ends it (the switchboard then waits for the hang-up)."""


def _huge(ctype, size=HUGE):
    """``size`` bytes (a JSON string, or binary), sent as fast as the sidecar takes them."""
    def behave(conn):
        conn.sendall(_head(200, ctype, size))
        sent, block = 0, b"x" * (1024 * 1024)
        if ctype == "application/json":
            conn.sendall(b'{"data": "')
            sent = 12  # with the closing '"}'
        while sent < size:  # raises once the sidecar (or its client) has gone
            piece = block[: size - sent]
            conn.sendall(piece)
            sent += len(piece)
        if ctype == "application/json":
            conn.sendall(b'"}')
    return behave


def _endless_sse(conn):
    conn.sendall(_head(200, "text/event-stream"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded: the sidecar must hang up long before
        conn.sendall(_chunk(chat_events(2)[0]))
        time.sleep(0.02)


ERROR_502 = {"object": "error", "message": "Bad gateway", "type": "upstream_error", "param": None, "code": "x"}
RATE = {"object": "error", "message": "Rate limit exceeded", "type": "rate_limited", "param": None, "code": "1300"}
FAULTS = {
    "none": _answer(200, json.dumps(chat_body()).encode()),
    "silence": _silence,
    "json-then-silence": _json_then(_silence),
    "json-then-reset": _json_then(reset),
    "sse-then-silence": _sse_then(_silence),
    "sse-then-reset": _sse_then(reset),
    "429": _answer(429, json.dumps(RATE).encode(), extra="Retry-After: 7\r\n"),
    "500": _answer(500, b"Internal Server Error", "text/plain"),
    "502": _answer(502, json.dumps(ERROR_502).encode()),
    "503": _answer(503, b"<html>unavailable</html>", "text/html", "Retry-After: 30\r\n"),
    "invalid-json": _answer(200, b'{"id": "cmpl-1", "choices": [tru'),
    "deep-json": _answer(200, b"[" * 100_000),
    "huge-json": _huge("application/json"),
    "huge-binary": _huge("application/octet-stream"),
    "endless-sse": _endless_sse,
}


def switchboard(conn, request: bytes) -> None:
    fault = "none"
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-fault":
            fault = value.strip().decode()
    FAULTS[fault](conn)


def _sse_error_at_end(body: bytes) -> dict:
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"data: {"), body[:200]
    last = json.loads(events[-1].split(b"data: ", 1)[1])
    assert last["object"] == "error", last
    return last


# name -> (request json, check(status, headers, body)); shared by the in-process and gunicorn runs
def _relayed(status, body, **headers):
    def check(got_status, got_headers, got_body):
        assert (got_status, got_body) == (status, body)
        for name, value in headers.items():
            assert got_headers.get(name.replace("_", "-")) == value
    return check


def _refused(status, code):
    def check(got_status, got_headers, got_body):
        assert got_status == status, got_body[:300]
        assert json.loads(got_body)["code"] == code
    return check


def _cut_stream(got_status, got_headers, got_body):
    assert got_status == 200
    assert got_headers["Content-Type"].startswith("text/event-stream")
    assert _sse_error_at_end(got_body)["code"] == "stream_interrupted"


def _normal(got_status, got_headers, got_body):
    assert got_status == 200 and json.loads(got_body) == chat_body()


MATRIX = {
    "none": (CHAT, _normal),
    "silence": (CHAT, _refused(504, "upstream_timeout")),
    "json-then-silence": (CHAT, _refused(504, "upstream_timeout")),
    "json-then-reset": (CHAT, _refused(502, "upstream_unavailable")),
    "sse-then-silence": (dict(CHAT, stream=True), _cut_stream),
    "sse-then-reset": (dict(CHAT, stream=True), _cut_stream),
    "429": (CHAT, _relayed(429, json.dumps(RATE).encode(), Retry_After="7")),
    "500": (CHAT, _relayed(500, b"Internal Server Error")),
    "502": (CHAT, _relayed(502, json.dumps(ERROR_502).encode())),
    "503": (CHAT, _relayed(503, b"<html>unavailable</html>", Retry_After="30")),
    "invalid-json": (CHAT, _relayed(200, b'{"id": "cmpl-1", "choices": [tru')),
    "deep-json": (CHAT, _relayed(200, b"[" * 100_000)),
}


# -- in-process -------------------------------------------------------------------------------------
@pytest.fixture
def raw():
    upstream = RawUpstream(switchboard)
    yield upstream
    upstream.close()


@pytest.fixture
def exchanges():
    return []


@pytest.fixture
def faulty(make_app, raw, exchanges):
    app = make_app(mistral_api_base=raw.url, read_timeout=1.0, connect_timeout=1.0)
    app.extensions["sidecar"].accountant.sinks.append(exchanges.append)
    return app.test_client()


@pytest.mark.parametrize("fault", list(MATRIX))
def test_fault_matrix_in_process(faulty, raw, exchanges, fault):
    payload, check = MATRIX[fault]
    started = time.monotonic()
    response = faulty.post("/v1/chat/completions", json=payload, headers={"X-Fault": fault})
    body = response.get_data()
    response.close()
    assert time.monotonic() - started < 5
    check(response.status_code, response.headers, body)
    assert len(exchanges) == 1, "every exchange is accounted exactly once"
    assert exchanges[0].status == response.status_code
    assert raw.wait_idle(2), "the sidecar still holds the upstream connection"


@pytest.mark.parametrize("fault", ["sse-then-reset", "sse-then-silence"])
def test_a_cut_stream_is_noted_on_the_exchange(faulty, exchanges, fault):
    response = faulty.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers={"X-Fault": fault})
    response.get_data()
    response.close()
    (ex,) = exchanges
    assert ex.error and ex.error.startswith("upstream stream interrupted")


def test_connection_refused_is_a_502(make_app):
    client = make_app(mistral_api_base=f"http://127.0.0.1:{free_port()}").test_client()
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502 and response.json["code"] == "upstream_unavailable"


def test_a_host_that_never_accepts_is_a_504_within_the_connect_timeout(make_app):
    hole = Blackhole()
    try:
        client = make_app(mistral_api_base=hole.url, connect_timeout=0.5).test_client()
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json=CHAT)
        assert time.monotonic() - started < 3
    finally:
        hole.close()
    assert response.status_code == 504 and response.json["code"] == "upstream_timeout"
    assert "connection" in response.json["message"]


def test_json_above_the_accounting_cap_is_relayed_as_a_stream(faulty, monkeypatch, exchanges):
    """Large JSON answers are relayed chunk by chunk, not held whole (they go unaccounted)."""
    monkeypatch.setattr(pipeline_mod, "JSON_ACCOUNT_LIMIT", 1024 * 1024)
    monkeypatch.setitem(FAULTS, "huge-json", _huge("application/json", 3 * 1024 * 1024))
    response = faulty.get("/v1/models", headers={"X-Fault": "huge-json"}, buffered=False)
    assert response.is_streamed and response.status_code == 200
    size = sum(len(chunk) for chunk in response.response)
    response.close()
    assert size == 3 * 1024 * 1024
    assert exchanges[0].usage is None and exchanges[0].error is None


# -- under gunicorn: the whole matrix against one worker, which must survive it -------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's resident memory in the background; ``peak`` is the highest seen."""

    def __init__(self, pid: int):
        self.pid, self._stop = pid, threading.Event()
        self.start = self.peak = _rss_mb(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def served(raw, tmp_path):
    env = {"MISTRAL_API_BASE": raw.url, "MISTRAL_API_KEY": MISTRAL_KEY, "SIDECAR_READ_TIMEOUT": "1",
           "SIDECAR_CONNECT_TIMEOUT": "1", "SIDECAR_DB_PATH": str(tmp_path / "sidecar.sqlite3")}
    log = tmp_path / "sidecar.log"
    with gunicorn_sidecar(env, workers=1, log_path=log) as (url, process):
        yield url, process, log


def _send_and_leave(url: str, fault: str) -> None:
    """A client that reads the first event of a stream, then disconnects."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(dict(CHAT, stream=True)).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"X-Fault: %s\r\nContent-Length: %d\r\n\r\n" % (fault.encode(), len(payload)) + payload)
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(65536)
            assert chunk, f"stream ended before its first event: {received!r}"
            received += chunk


@pytest.mark.slow
def test_fault_matrix_under_gunicorn_leaves_the_worker_healthy(served, raw):
    url, process, log = served
    workers = children(process.pid)
    assert len(workers) == 1
    (worker,) = workers
    fds_before = len(os.listdir(f"/proc/{worker}/fd"))

    for fault, (payload, check) in MATRIX.items():
        response = requests.post(url + "/v1/chat/completions", json=payload, headers={"X-Fault": fault}, timeout=10)
        check(response.status_code, response.headers, response.content)

    # 200 MB answers, JSON and binary: relayed in full while the worker's memory stays flat
    for fault in ("huge-json", "huge-binary"):
        with PeakRss(worker) as rss, requests.get(url + "/v1/models", headers={"X-Fault": fault},
                                                  stream=True, timeout=30) as response:
            size = sum(len(chunk) for chunk in response.iter_content(1024 * 1024))
        assert response.status_code == 200 and size == HUGE
        assert rss.peak - rss.start < 64, f"{fault}: worker grew by {rss.peak - rss.start:.0f} MB"

    # a slow client: the relay waits for it (backpressure), other requests are served meanwhile
    with PeakRss(worker) as rss, requests.get(url + "/v1/models", headers={"X-Fault": "huge-binary"},
                                              stream=True, timeout=30) as response:
        chunks = response.iter_content(64 * 1024)
        for _ in range(40):
            next(chunks)
            time.sleep(0.02)
        started = time.monotonic()
        assert requests.get(url + "/health/liveliness", timeout=5).status_code == 200
        assert time.monotonic() - started < 1
    assert rss.peak - rss.start < 64
    assert raw.wait_idle(2), "the upstream of the slow client's download is still open"

    # clients that leave mid-stream: the upstream is closed within a second, every time
    for _ in range(10):
        _send_and_leave(url, "endless-sse")
        assert raw.wait_idle(1.0), "upstream stream still open 1 s after the client left"

    # absurd request lines and header sections are refused by gunicorn's limits before the app
    for path in ("/v1/models?q=" + "x" * 1_000_000, "/v1/models?" + "&".join(f"p{i}=1" for i in range(100_000))):
        assert 400 <= requests.get(url + path, timeout=10).status_code < 500
    many = {f"X-H{i}": "v" for i in range(200)}
    assert 400 <= requests.get(url + "/v1/models", headers=many, timeout=10).status_code < 500

    # afterwards: a normal answer, the same worker, no descriptor leak, no traceback in the log
    response = requests.post(url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 200 and response.json()["usage"]["total_tokens"] == 17
    assert children(process.pid) == [worker]
    assert len(os.listdir(f"/proc/{worker}/fd")) <= fds_before + 5
    text = log.read_text()
    assert "Traceback" not in text and "Worker timeout" not in text, text[-3000:]
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    cut = [line for line in lines if (line.get("error") or "").startswith("upstream stream interrupted")]
    assert len(cut) >= 2, "a cut stream is noted in its access log line"
