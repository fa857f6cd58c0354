"""A fast fake Mistral for the benchmark: raw-socket HTTP/1.1 on gevent, pre-built answers.

``POST .../chat/completions`` answers a fixed chat completion, or (``"stream": true``) a chunked SSE
stream of chat chunks with usage on the last. It parses only the request line, Content-Length and
three knobs, so it stays far from being the bottleneck; ``--procs N`` forks N processes sharing the
port (SO_REUSEPORT). Defaults come from the command line; a request may override them with headers
(the sidecar and the floor proxy pass them on; LiteLLM does not, so it gets the defaults):

    x-fake-latency-ms   wait before answering (plain) or before the first event (stream)
    x-fake-events       events per stream (the last carries usage), then ``data: [DONE]``
    x-fake-interval-ms  spacing between events
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
MODEL = "mistral-small-latest"


def chat_body() -> bytes:
    return json.dumps({
        "id": "cmpl-bench", "object": "chat.completion", "created": 1732548656, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?",
                                             "tool_calls": None}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }, separators=(",", ":")).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_event(i: int, last: bool) -> bytes:
    """One chat chunk as Mistral frames it (about 200 bytes), as one HTTP chunk."""
    chunk = {"id": "cmpl-bench", "object": "chat.completion.chunk", "created": 1732548656, "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": "stop" if last else None}]}
    if last:
        chunk["usage"] = {"prompt_tokens": 12, "completion_tokens": i + 1, "total_tokens": i + 13}
    return _chunk(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")


PLAIN = chat_body()
PLAIN_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % len(PLAIN)) + PLAIN
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
SSE_TAIL = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
NOT_FOUND_BODY = b'{"detail":"Not Found"}'
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
             % len(NOT_FOUND_BODY)) + NOT_FOUND_BODY
EVENT_CACHE: dict[int, bytes] = {}


def event_bytes(i: int) -> bytes:
    found = EVENT_CACHE.get(i)
    if found is None:
        found = EVENT_CACHE[i] = sse_event(i, last=False)
    return found


class Defaults:
    latency = 0.0
    events = 100
    interval = 0.05


def handle(sock, _address) -> None:
    import gevent

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    recv, sendall, sleep = sock.recv, sock.sendall, gevent.sleep
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                data = recv(65536)
                if not data:
                    return
                buf += data
                end = buf.find(b"\r\n\r\n")
            head, buf = buf[:end].lower(), buf[end + 4:]
            length, latency, events, interval = 0, Defaults.latency, Defaults.events, Defaults.interval
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name.startswith(b"x-fake-"):
                    if name == b"x-fake-latency-ms":
                        latency = float(value) / 1000
                    elif name == b"x-fake-events":
                        events = int(value)
                    elif name == b"x-fake-interval-ms":
                        interval = float(value) / 1000
            while len(buf) < length:
                data = recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            if b"/chat/completions" not in head[:head.find(b"\r\n")]:
                sendall(NOT_FOUND)
                continue
            if latency:
                sleep(latency)
            if not STREAM_RE.search(body):
                sendall(PLAIN_RESPONSE)
                continue
            sendall(SSE_HEAD)
            for i in range(events - 1):
                sendall(event_bytes(i))
                if interval:
                    sleep(interval)
            sendall(sse_event(events - 1, last=True) + SSE_TAIL)
    except OSError:
        return
    finally:
        sock.close()


def serve(port: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent.server import StreamServer

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    StreamServer(listener, handle, spawn=10000).serve_forever()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--procs", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    Defaults.latency, Defaults.events, Defaults.interval = args.latency_ms / 1000, args.events, args.interval_ms / 1000
    children = []
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:
            serve(args.port)
            os._exit(0)
        children.append(pid)

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
