"""A worker at its connection cap (``sidecar/worker.py``), under gunicorn, against slow-header sockets.

The cap is small (``SIDECAR_WORKER_CONNECTIONS``) and the header timeout long, so without shedding a new
connection would wait at least half of that timeout for a slot: the bounds below are generous and still
far from it.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from werkzeug.wrappers import Response

from sidecar.worker import DeadlineSocket

from .conftest import MISTRAL_KEY
from .fakes import FakeMistral, chat_body, chat_events
from .servers import gunicorn_sidecar

pytestmark = pytest.mark.slow
CAP, HEADER_TIMEOUT = 20, 60.0  # without shedding, a new connection waits >= 30 s for a slot
PROMPT = 10.0  # seconds: "answered promptly", with room for a loaded machine
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
STREAM_EVENTS = 4


@pytest.fixture(scope="module")
def gate():
    return threading.Event()


@pytest.fixture(scope="module")
def sidecar(gate, tmp_path_factory):
    upstream = FakeMistral()
    plain = json.dumps(chat_body())

    def chat(request):
        if not request.get_json().get("stream"):
            return Response(plain, 200, {"Content-Type": "application/json"})

        def held():  # the first event, then the rest once the test opens the gate
            events = chat_events(STREAM_EVENTS)
            yield events[0]
            gate.wait(60)
            yield from events[1:]
        return Response(held(), 200, {"Content-Type": "text/event-stream"})
    upstream.on("POST", "/v1/chat/completions", chat)
    tmp = tmp_path_factory.mktemp("cap")
    env = {"MISTRAL_API_BASE": upstream.url, "MISTRAL_API_KEY": MISTRAL_KEY,
           "SIDECAR_DB_PATH": str(tmp / "sidecar.sqlite3"), "SIDECAR_WORKER_CONNECTIONS": str(CAP),
           "SIDECAR_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}
    try:
        with gunicorn_sidecar(env, workers=1, log_path=tmp / "sidecar.log") as (url, _process):
            yield url, tmp / "sidecar.log"
    finally:
        gate.set()
        upstream.close()


def _slow_sockets(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that send the start of a request and then nothing, opened in this order."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(sock)
    return socks


def _closed_by_the_sidecar(socks: list[socket.socket]) -> list[int]:
    """Which of ``socks`` the sidecar has closed (an end of stream is waiting to be read), by index."""
    select.select(socks, [], [], 2.0)
    closed = []
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed.append(i)
        except BlockingIOError:
            pass
    return closed


def _fresh_chat(url: str) -> tuple[int, float]:
    """A chat call on a new connection (``Connection: close``): it must be accepted, not only answered."""
    started = time.monotonic()
    response = requests.post(url + "/v1/chat/completions", json=CHAT, headers={"Connection": "close"}, timeout=20)
    return response.status_code, time.monotonic() - started


def test_a_full_worker_sheds_the_connections_waiting_longest_for_new_ones(sidecar):
    url, log = sidecar
    socks = _slow_sockets(url, CAP + 5)  # every slot taken, and 5 more waiting in the listen queue
    try:
        for _ in range(3):
            status, elapsed = _fresh_chat(url)
            assert status == 200
            assert elapsed < PROMPT
        closed = _closed_by_the_sidecar(socks)
        assert 5 < len(closed) < CAP  # room made for the 5 queued and the new calls, not more
        assert closed == list(range(len(closed)))  # the oldest first; the others are still held
    finally:
        for sock in socks:
            sock.close()
    text = log.read_text()
    assert text.count(f"holds its cap of {CAP} connections") == 1  # one line a minute, not one per shed
    assert "Traceback" not in text


def test_requests_in_progress_are_never_shed(sidecar, gate):
    """Streams held open by the upstream keep their slots while slow clients fill the rest and new calls
    come in; each stream then completes with every event."""
    url, _log = sidecar
    streams = 5
    started = threading.Barrier(streams + 1)

    def stream() -> bytes:
        with requests.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True,
                           timeout=60) as response:
            chunks = response.iter_content(chunk_size=None)
            first = next(chunks)
            started.wait(30)
            return first + b"".join(chunks)

    with ThreadPoolExecutor(streams) as pool:
        results = [pool.submit(stream) for _ in range(streams)]
        started.wait(30)  # every stream is serving its first event
        socks = _slow_sockets(url, CAP)  # more than the slots left
        try:
            for _ in range(3):
                status, elapsed = _fresh_chat(url)
                assert status == 200
                assert elapsed < PROMPT
            assert len(_closed_by_the_sidecar(socks)) >= streams  # the slow ones paid for the new ones
        finally:
            gate.set()
            for sock in socks:
                sock.close()
        bodies = [result.result(timeout=60) for result in results]
    for body in bodies:
        assert body.count(b"data: ") == STREAM_EVENTS + 1  # the events and [DONE]: nothing cut
        assert body.endswith(b"data: [DONE]\n\n")


LIVE = b"GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    """One whole answer to ``LIVE`` (it has a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_connection_with_requests_queued_takes_turns_with_the_others(sidecar):
    """A keep-alive client whose next request is always already there (pipelined here; in practice a
    fast client beside a fast upstream) must not hold the worker: every request served is a turn, and
    a connection that became ready meanwhile is served before the next one. Without turns, the probe
    waited for all of the greedy connection's requests (the loaded benchmark's p99: 150-500 ms)."""
    url, _log = sidecar
    host, port = url.removeprefix("http://").split(":")
    greedy = socket.create_connection((host, int(port)), timeout=30)
    probe = socket.create_connection((host, int(port)), timeout=30)
    queued = 1000
    served = []  # the greedy connection's answers so far, counted by a reader that keeps it drained
    try:
        for sock in (greedy, probe):
            sock.sendall(LIVE)
            assert _answer(sock).startswith(b"HTTP/1.1 200")

        def drain():
            seen = b""
            while len(served) < queued:
                data = greedy.recv(65536)
                if not data:
                    return
                seen += data
                served.extend(range(seen.count(b"HTTP/1.1 ")))
                seen = seen[seen.rfind(b"HTTP/1.1 ") + 1:] if b"HTTP/1.1 " in seen else seen
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        greedy.sendall(LIVE * queued)
        time.sleep(0.05)  # the worker is busy with them
        probe.sendall(LIVE)
        assert _answer(probe).startswith(b"HTTP/1.1 200")
        before_probe = len(served)
        reader.join(60)
        assert len(served) == queued  # every queued request was answered
        assert before_probe < queued // 2, f"the probe waited for {before_probe} of {queued} queued requests"
    finally:
        greedy.close()
        probe.close()


class Wire:
    """Stands for a connected client socket: records what reaches it, send by send."""

    def __init__(self):
        self.sends: list[object] = []

    def sendall(self, data) -> None:
        self.sends.append(bytes(data))

    def sendfile(self, file, offset=0, count=None) -> None:
        self.sends.append(("file", count))

    def fileno(self) -> int:
        return -1


HEAD_BLOCK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"


def _serving() -> tuple[DeadlineSocket, Wire]:
    wire = Wire()
    sock = DeadlineSocket(wire, header_timeout=10, keepalive_timeout=5)
    sock.serving()
    return sock, wire


def test_a_response_header_block_leaves_with_its_body_in_one_send():
    sock, wire = _serving()
    sock.sendall(HEAD_BLOCK)  # gunicorn's send_headers
    assert wire.sends == []
    sock.sendall(b"{}")  # its first body write
    assert wire.sends == [HEAD_BLOCK + b"{}"]
    sock.sendall(b"more")  # later writes go out as they come
    assert wire.sends[-1] == b"more"


def test_a_header_block_with_nothing_after_it_is_flushed_and_never_overtaken():
    sock, wire = _serving()
    sock.sendall(HEAD_BLOCK)
    sock.flush()  # the worker, when the request is done (HEAD, 204)
    assert wire.sends == [HEAD_BLOCK]
    sock.sendall(HEAD_BLOCK)
    sock.sendfile(object(), 0, 2)  # gunicorn's sendfile path
    assert wire.sends[1:] == [HEAD_BLOCK, ("file", 2)]


def test_only_a_served_request_s_header_block_is_held():
    wire = Wire()
    sock = DeadlineSocket(wire, header_timeout=10, keepalive_timeout=5)  # still reading the request
    sock.sendall(HEAD_BLOCK)
    assert wire.sends == [HEAD_BLOCK]
