"""Load generators for the benchmark, on raw sockets (gevent where concurrency is needed).

Each mode prints one JSON object on stdout, so ``run.py`` can run it as a subprocess:

    closed   fixed-concurrency keep-alive POSTs for a duration (fallback when wrk is absent)
    pairs    concurrency 1, direct and proxied calls alternated: the latency a proxy adds
    streams  many concurrent SSE streams opened over a ramp: errors, wall time, time to first event
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from urllib.parse import urlsplit

TERMINAL_CHUNK = b"\r\n0\r\n\r\n"


def request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[tuple[str, int], bytes]:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return (parts.hostname, parts.port), ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection; ``call`` sends a request and reads the whole answer."""

    def __init__(self, address):
        self.address = address
        self.sock = None
        self.buf = b""

    def _connect(self):
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def call(self, raw: bytes) -> int:
        """Send, read the answer (Content-Length or chunked); returns the status."""
        if self.sock is None:
            self._connect()
        sock = self.sock
        sock.sendall(raw)
        buf = bytearray(self.buf)  # appended in place: a multi-megabyte answer is not copied per read
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the headers")
            buf += data
        head, buf = bytes(buf[:end]), buf[end + 4:]
        status = int(head[9:12])
        low = head.lower()
        at = low.find(b"content-length:")
        if at >= 0:
            length = int(low[at + 15:low.find(b"\r\n", at) if low.find(b"\r\n", at) > 0 else None])
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed in the body")
                buf += data
            self.buf = bytes(buf[length:])
        else:
            start = 0
            while (at := buf.find(TERMINAL_CHUNK, start)) < 0 and not buf.startswith(b"0\r\n\r\n"):
                start = max(0, len(buf) - len(TERMINAL_CHUNK))
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed in a chunked body")
                buf += data
            self.buf = b"" if at < 0 else bytes(buf[at + len(TERMINAL_CHUNK):])
        if b"connection: close" in low:
            self.close()
        return status


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary_ms(values: list[float]) -> dict:
    return {"p50": round(percentile(values, 50) * 1000, 3), "p90": round(percentile(values, 90) * 1000, 3),
            "p99": round(percentile(values, 99) * 1000, 3), "max": round(max(values) * 1000, 3) if values else None,
            "n": len(values)}


# -- closed loop ------------------------------------------------------------------------------------
def closed(url, body, headers, concurrency, duration) -> dict:
    import gevent
    from gevent import monkey

    monkey.patch_all()
    address, raw = request_bytes(url, body, headers)
    latencies: list[float] = []
    errors = {"count": 0}
    stop_at = time.perf_counter() + duration

    def worker():
        conn = Connection(address)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                status = conn.call(raw)
            except OSError:
                errors["count"] += 1
                conn.close()
                continue
            if status != 200:
                errors["count"] += 1
            latencies.append(time.perf_counter() - started)
        conn.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": errors["count"], "seconds": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 1), "latency_ms": summary_ms(latencies)}


# -- alternating pairs at concurrency 1 --------------------------------------------------------------
def pairs(direct_url, proxied_url, body, headers, proxied_headers, count, warmup) -> dict:
    d_addr, d_raw = request_bytes(direct_url, body, headers)
    p_addr, p_raw = request_bytes(proxied_url, body, {**headers, **proxied_headers})
    direct, proxied = Connection(d_addr), Connection(p_addr)
    d_times, p_times, errors = [], [], 0
    clock = time.perf_counter
    for i in range(warmup + count):
        t0 = clock()
        d_status = direct.call(d_raw)
        t1 = clock()
        p_status = proxied.call(p_raw)
        t2 = clock()
        errors += (d_status != 200) + (p_status != 200)
        if i >= warmup:
            d_times.append(t1 - t0)
            p_times.append(t2 - t1)
    diffs = [p - d for p, d in zip(p_times, d_times, strict=True)]
    d, p = summary_ms(d_times), summary_ms(p_times)
    return {"errors": errors, "direct_ms": d, "proxied_ms": p,
            "added_ms": {"p50": round(p["p50"] - d["p50"], 3), "p99": round(p["p99"] - d["p99"], 3)},
            "pairwise_added_ms": summary_ms(diffs)}


# -- concurrent streams -------------------------------------------------------------------------------
def streams(url, body, headers, count, ramp, timeout) -> dict:
    import gevent
    from gevent import monkey

    monkey.patch_all()
    address, raw = request_bytes(url, body, headers)
    ttfe: list[float] = []
    durations: list[float] = []
    events_seen = [0]
    errors: list[str] = []

    def one(delay: float):
        gevent.sleep(delay)
        started = time.perf_counter()
        first = None
        events = 0
        tail = b""
        try:
            with gevent.Timeout(timeout), socket.create_connection(address) as sock:
                sock.sendall(raw)
                while True:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("closed before the terminal chunk")
                    if not tail and not data.startswith(b"HTTP/1.1 200"):
                        raise ConnectionError(data[:80].decode("latin-1"))
                    window = tail + data
                    n = window.count(b"data: ")
                    if n and first is None:
                        first = time.perf_counter() - started
                    events += n
                    if window.endswith(TERMINAL_CHUNK):
                        break
                    tail = window[-8:]
        except (OSError, gevent.Timeout) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        ttfe.append(first if first is not None else float("nan"))
        durations.append(time.perf_counter() - started)
        events_seen[0] += events

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(one, ramp * i / count) for i in range(count)])
    wall = time.perf_counter() - started
    return {"streams": count, "completed": len(durations), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": round(wall, 3), "events": events_seen[0], "events_per_s": round(events_seen[0] / wall, 1),
            "ttfe_ms": summary_ms(ttfe), "stream_ms": summary_ms(durations)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["closed", "pairs", "streams"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--direct-url", help="pairs: the upstream called directly")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--body")
    source.add_argument("--body-file", help="the body, read from this file (large-body scenarios)")
    parser.add_argument("--header", action="append", default=[], help="Name: value (both legs)")
    parser.add_argument("--proxied-header", action="append", default=[], help="pairs: only on the proxied leg")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    def headers(items):
        return dict(h.split(": ", 1) for h in items)

    body = args.body.encode() if args.body is not None else open(args.body_file, "rb").read()
    if args.mode == "closed":
        result = closed(args.url, body, headers(args.header), args.concurrency, args.duration)
    elif args.mode == "pairs":
        result = pairs(args.direct_url, args.url, body, headers(args.header), headers(args.proxied_header),
                       args.count, args.warmup)
    else:
        result = streams(args.url, body, headers(args.header), args.count, args.ramp, args.timeout)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
