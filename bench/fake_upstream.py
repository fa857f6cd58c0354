"""A fast fake Mistral for the benchmark: raw-socket HTTP/1.1 on gevent, pre-built answers.

``POST .../chat/completions`` answers a fixed chat completion, or (``"stream": true``) a chunked SSE
stream of chat chunks with usage on the last; ``.../embeddings`` a realistic answer for 512 inputs
(512 vectors of 1024 floats, ~4.9 MB, usage last as Mistral sends it); ``.../ocr`` a one-page OCR
answer. Bodies are read into one buffer (large-body scenarios send 10 MB). It parses only the request line, Content-Length and
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


def embeddings_body(rows: int = 512, dims: int = 1024) -> bytes:
    """Mistral's embeddings answer for ``rows`` inputs; floats written as Mistral writes them."""
    row = ",".join(f"{((i * 7919) % 2001 - 1000) / 9871.0:.6f}" for i in range(dims))
    data = ",".join(f'{{"object":"embedding","embedding":[{row}],"index":{i}}}' for i in range(rows))
    return (f'{{"id":"embd-bench","object":"list","data":[{data}],"model":"mistral-embed",'
            f'"usage":{{"prompt_tokens":{rows * 256},"total_tokens":{rows * 256},"completion_tokens":0}}}}').encode()


def ocr_body() -> bytes:
    return json.dumps({
        "pages": [{"index": 0, "markdown": "# Bench\n\nOne page of text.", "images": [],
                   "dimensions": {"dpi": 200, "height": 2200, "width": 1700}}],
        "model": "mistral-ocr-2505-completion", "document_annotation": None,
        "usage_info": {"pages_processed": 1, "doc_size_bytes": 10_000_000},
    }, separators=(",", ":")).encode()


def _json_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


PLAIN = chat_body()
PLAIN_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % len(PLAIN)) + PLAIN
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
SSE_TAIL = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
EMBEDDINGS_RESPONSE = _json_response(embeddings_body())
OCR_RESPONSE = _json_response(ocr_body())
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
            if len(buf) < length:
                buf = _read_rest(sock, buf, length)
                if buf is None:
                    return
            body, buf = buf[:length], buf[length:]
            target = head[:head.find(b"\r\n")]
            if b"/chat/completions" not in target:
                sendall(EMBEDDINGS_RESPONSE if b"/embeddings" in target else OCR_RESPONSE if b"/ocr" in target
                        else NOT_FOUND)
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


def _read_rest(sock, buf: bytes, length: int) -> bytes | None:
    """Read until ``length`` bytes are buffered, into one preallocated buffer (no quadratic copies)."""
    whole = bytearray(length)
    whole[:len(buf)] = buf
    view, got = memoryview(whole), len(buf)
    while got < length:
        n = sock.recv_into(view[got:])
        if not n:
            return None
        got += n
    return bytes(whole)


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
