"""A local fake Mistral: a real HTTP server on 127.0.0.1 whose answers each test programs.

Real sockets (not ``responses``) so streaming, timeouts, resets and disconnects behave as on
the wire. Every request it receives is recorded for assertions (headers, body, path).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict
    body: bytes


def chat_body(model="mistral-small-latest", content="Hello!", prompt=12, completion=5) -> dict:
    return {
        "id": "cmpl-fake", "object": "chat.completion", "created": 1732548656, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": None},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def tool_call_body() -> dict:
    """A chat answer that calls ``TOOL``."""
    body = chat_body(content="")
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "call_1", "type": "function", "function": {"name": "get_current_weather",
                                                          "arguments": '{"location": "Boston"}'}}]
    body["choices"][0]["finish_reason"] = "tool_calls"
    return body


# Requests and answers several test modules send to, or program into, the fake.
TOOL = {"type": "function", "function": {"name": "get_current_weather", "description": "Weather in a place",
                                         "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                                                        "required": ["location"]}}}
OCR_ANSWER = {"pages": [], "model": "mistral-ocr-latest", "usage_info": {"pages_processed": 3, "doc_size_bytes": 1000}}
OCR_REQUEST = {"model": "mistral-ocr-latest", "document": {"document_url": "https://example.com/a.pdf"}}
TRANSCRIPT = {"model": "voxtral-mini-2602", "text": "bonjour", "language": "fr", "segments": [],
              "usage": {"prompt_audio_seconds": 90, "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


def batch_output_line(custom_id: str, prompt=100, completion=50, model="mistral-small-2603", status=200) -> dict:
    """One line of a chat batch job's output file, as Mistral writes it: the request's answer and usage."""
    body = {"id": f"cmpl-{custom_id}", "object": "chat.completion", "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    return {"id": f"req-{custom_id}", "custom_id": custom_id, "response": {"status_code": status, "body": body},
            "error": None}


# Output lines of batch requests Mistral did not bill: one that failed, one refused with a 400.
BATCH_FAILED = {"id": "req-x", "custom_id": "x", "response": None,
                "error": {"message": "model overloaded", "code": 3900}}
BATCH_REFUSED = {"id": "req-y", "custom_id": "y", "response": {"status_code": 400, "body": {"message": "bad request"}},
                 "error": None}


def jsonl(*lines) -> bytes:
    """Objects (or raw bytes) as JSON Lines, each ended by a newline."""
    return b"".join((raw if isinstance(raw, bytes) else json.dumps(raw).encode()) + b"\n" for raw in lines)


def chat_events(n=3, model="mistral-small-latest", prompt=10, completion=None) -> list[bytes]:
    """``n`` data-only chat chunks, usage on the last, then ``[DONE]``, as Mistral frames them."""
    completion = n if completion is None else completion
    events = []
    for i in range(n):
        chunk = {"id": "cmpl-s", "object": "chat.completion.chunk", "created": 1732548656, "model": model,
                 "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
        if i == n - 1:
            chunk["choices"][0]["finish_reason"] = "stop"
            chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


@dataclass
class FakeMistral:
    """Routes map (METHOD, path) -> handler(request) -> werkzeug Response."""

    routes: dict = field(default_factory=dict)
    seen: list = field(default_factory=list)
    fallback: object = None  # handler for requests no route matches (None: a 404)

    def __post_init__(self):
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    def on(self, method: str, path: str, handler=None, *, json_body=None, status=200, headers=None):
        """Program an answer: a handler, or a fixed JSON body."""
        if handler is None:
            def handler(request, _body=json_body, _status=status, _headers=headers or {}):
                return Response(json.dumps(_body), _status, {"Content-Type": "application/json", **_headers})
        self.routes[(method.upper(), path)] = handler
        return handler

    def cut_stream(self, method: str, path: str):
        """Start an SSE answer (one chat event), then drop the connection, as an upstream that dies midway."""
        def handler(request):
            def body():
                yield chat_events(3)[0]
                raise ConnectionResetError("upstream went away")
            return Response(body(), 200, {"Content-Type": "text/event-stream"})
        return self.on(method, path, handler)

    def stream(self, method: str, path: str, events, delay: float = 0.0, gate: threading.Event | None = None):
        """Answer with SSE events; after the first, optionally wait for ``gate`` before the rest."""
        def handler(request):
            def body():
                for i, event in enumerate(events):
                    yield event
                    if i == 0 and gate is not None:
                        gate.wait(10)
                    elif delay:
                        time.sleep(delay)
            return Response(body(), 200, {"Content-Type": "text/event-stream"})
        return self.on(method, path, handler)

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        self.seen.append(Seen(request.method, request.path, request.query_string.decode(),
                              dict(request.headers), body))
        handler = self.routes.get((request.method, request.path), self.fallback)
        if handler is None:
            response = Response(json.dumps({"detail": "Not Found"}), 404, {"Content-Type": "application/json"})
        else:
            response = handler(request)
        return response(environ, start_response)

    @property
    def last(self) -> Seen:
        return self.seen[-1]


class RawUpstream:
    """An upstream that misbehaves at the byte level: it reads one request, then ``behave(conn, request)``
    writes whatever bytes (or resets, or silence) the test wants, then waits (bounded) for the sidecar
    to hang up. ``open`` counts the connections the sidecar still holds."""

    def __init__(self, behave):
        self.behave = behave
        self.connections = 0
        self.open = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
                self.open += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(10)
                request = _read_request(conn)
                self.requests.append(request)
                self.behave(conn, request)
                conn.settimeout(10)
                while conn.recv(65536):  # until the sidecar hangs up
                    pass
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1

    def wait_idle(self, timeout: float) -> bool:
        """True once the sidecar holds no connection to this upstream (within ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open == 0:
                return True
            time.sleep(0.01)
        return self.open == 0

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def reset(conn: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees ECONNRESET."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class Blackhole:
    """A loopback address that accepts no connection: its one-slot backlog is already full, so a
    connect waits until the client's connect timeout (no non-routable address needed)."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._filler = socket.create_connection(("127.0.0.1", port), timeout=1)

    def close(self) -> None:
        self._filler.close()
        self._listener.close()


class TcpProxy:
    """A loopback TCP proxy to ``target`` (host, port) that a test can kill and restart on the same port:
    ``stop`` closes the listener and cuts every open connection, as a database host going away would."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            cut, self._open = self._open, set()
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


# A user's own contract, as an app team writes it: one exact question and its answer.
CAPITAL_CONTRACT = """
operation: chat_completion_v1_chat_completions_post
exchanges:
- name: capital of France
  match: {json: {messages: [{role: user, content: What is the capital of France?}]}}
  request: {method: POST, path: /v1/chat/completions,
            json: {model: mistral-small-latest, messages: [{role: user, content: What is the capital of France?}]}}
  response:
    status: 200
    json: {id: cmpl-1, object: chat.completion, created: 1764064800, model: mistral-small-latest,
           choices: [{index: 0, message: {role: assistant, content: Paris.}, finish_reason: stop}],
           usage: {prompt_tokens: 9, completion_tokens: 2, total_tokens: 11}}
"""
