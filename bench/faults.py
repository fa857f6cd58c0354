"""The fault matrix as a tool: hostile clients, misbehaving upstreams and a store outage against the sidecar.

    python bench/faults.py [--slow-connections 8200] [--slow-seconds 40] [--outage-seconds 10]
                           [--workers 2] [--out bench/results/faults.json]

Starts a fake Mistral on loopback that misbehaves on command (the ``X-Fault`` header, which the sidecar
forwards), and the sidecar under its production gunicorn settings in open mode, its store in PostgreSQL
behind a TCP proxy this script can kill (when PostgreSQL answers at 127.0.0.1:5432; else SQLite, and
the outage row says why it was skipped). Then it runs each attack, bounded in count and time, and
prints a table: attack, expected, observed. Everything listens on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import resource
import selectors
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from werkzeug.wrappers import Response

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.run import rss_kb, tree_pids  # noqa: E402
from tests.fakes import FakeMistral, TcpProxy, chat_body  # noqa: E402
from tests.servers import gunicorn_sidecar  # noqa: E402

KEY = "sk-faults-real-mistral-key-0123456789"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
CHAT_BYTES = json.dumps(CHAT).encode()
TOTAL_TIMEOUT, IDLE_TIMEOUT = 3.0, 2.0
ROWS: list[dict] = []


def row(attack: str, expected: str, observed: str, ok: bool) -> None:
    ROWS.append({"attack": attack, "expected": expected, "observed": observed, "ok": ok})
    print(f"{'ok ' if ok else 'BAD'} {attack:<44} {expected:<40} {observed}", flush=True)


# -- the misbehaving upstream --------------------------------------------------------------------------
def fake_mistral() -> FakeMistral:
    fake = FakeMistral()
    plain = json.dumps(chat_body()).encode()

    def chat(request):
        fault = request.headers.get("X-Fault", "")
        if fault == "drip":  # a JSON answer one byte every 0.1 s: only a total deadline ends it
            def drip():
                for byte in plain * 3:
                    yield bytes([byte])
                    time.sleep(0.1)
            return Response(drip(), 200, {"Content-Type": "application/json"})
        if fault == "trickle":  # one event, then bytes that never complete the next one
            def trickle():
                yield b'data: {"id":"s","object":"chat.completion.chunk","choices":[]}\n\n'
                for _ in range(300):
                    yield b"x"
                    time.sleep(0.1)
            return Response(trickle(), 200, {"Content-Type": "text/event-stream"})
        if fault == "echo":  # an upstream that hands the credential back
            key = request.headers.get("Authorization", "").split()[-1]
            return Response(json.dumps({"object": "error", "message": f"key {key}"}), 401,
                            {"Content-Type": "application/json", "X-Echo-Key": key})
        return Response(plain, 200, {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", chat)
    fake.on("GET", "/v1/models", json_body={"object": "list", "data": []})
    fake.on("GET", f"/v1/models/{KEY}", json_body={"id": "x", "object": "model"})
    return fake


# -- raw requests ----------------------------------------------------------------------------------------
def raw(url: str, data: bytes, *, half_close: bool = False, timeout: float = 30) -> tuple[int, bytes, float]:
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer, time.monotonic() - started


def chunked(body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)


def input_attacks(url: str) -> None:
    for path in ("/health/readiness", "/health/liveliness", "/metrics", "/v1/models", "/key/list"):
        response = requests.head(url + path, timeout=10)
        row(f"HEAD {path}", "like GET, no body", f"{response.status_code}, {len(response.content)} bytes",
            response.status_code < 500 and not response.content)
    response = requests.head(url + "/v1/chat/completions", timeout=10)
    row("HEAD /v1/chat/completions (POST only)", "405", str(response.status_code), response.status_code == 405)
    n = len(CHAT_BYTES)
    framings = {
        "chunk size -1": (b"-1\r\n" + CHAT_BYTES + b"\r\n0\r\n\r\n", False),
        "chunk size 0x10": (b"0x10\r\n" + CHAT_BYTES[:16] + b"\r\n0\r\n\r\n", False),
        "chunk size shorter than its data": (b"2\r\n" + CHAT_BYTES + b"\r\n0\r\n\r\n", False),
        "chunk size line of 10,000 bytes": (b"1" * 10_000, False),
        "body cut inside a chunk": (b"%x\r\n" % n + CHAT_BYTES[:10], True),
        "no last chunk": (b"%x\r\n" % n + CHAT_BYTES + b"\r\n", True),
        "no final CRLF": (b"%x\r\n" % n + CHAT_BYTES + b"\r\n0\r\n", True),
    }
    for name, (body, half_close) in framings.items():
        status, answer, elapsed = raw(url, chunked(body), half_close=half_close)
        row(name, "400 invalid_body_framing", f"{status} in {elapsed:.2f} s",
            status == 400 and b"invalid_body_framing" in answer and elapsed < 5)
    status, answer, elapsed = raw(url, chunked(b"ffffffff\r\n" + CHAT_BYTES))
    row("chunk size ffffffff, then silence", "408 within SIDECAR_HEADER_TIMEOUT (10 s)",
        f"{status} in {elapsed:.2f} s", status == 408 and elapsed < 12)


def browser_attacks(url: str) -> None:
    cases = [
        ("POST /key/generate, Host: attacker.example", "/key/generate", {"Host": "attacker.example"}, 421),
        ("chat, Host: attacker.example (DNS rebinding)", "/v1/chat/completions", {"Host": "attacker.example"}, 421),
        ("chat, Origin: http://attacker.example", "/v1/chat/completions", {"Origin": "http://attacker.example"}, 403),
        ("POST /key/generate, Content-Type: text/plain", "/key/generate", {"Content-Type": "text/plain"}, 415),
        ("chat, Content-Type: text/plain", "/v1/chat/completions", {"Content-Type": "text/plain"}, 415),
    ]
    for name, path, headers, expected in cases:
        response = requests.post(url + path, data=CHAT_BYTES,
                                 headers={"Content-Type": "application/json", **headers}, timeout=10)
        row(name, str(expected), str(response.status_code), response.status_code == expected)


def upstream_attacks(url: str, log_path: Path) -> None:
    started = time.monotonic()
    response = requests.post(url + "/v1/chat/completions", json=CHAT, headers={"X-Fault": "drip"}, timeout=30)
    elapsed = time.monotonic() - started
    row("upstream drips its JSON answer (0.1 s/byte)", f"504 after SIDECAR_TOTAL_TIMEOUT ({TOTAL_TIMEOUT:g} s)",
        f"{response.status_code} in {elapsed:.2f} s", response.status_code == 504 and elapsed < TOTAL_TIMEOUT + 1.5)
    started = time.monotonic()
    response = requests.post(url + "/v1/chat/completions", json={**CHAT, "stream": True},
                             headers={"X-Fault": "trickle"}, timeout=30)
    elapsed = time.monotonic() - started
    row("upstream stream trickles, no event completes", f"SSE error after {IDLE_TIMEOUT:g} s idle",
        f"{response.status_code}, stream_idle_timeout={'stream_idle_timeout' in response.text}, {elapsed:.2f} s",
        "stream_idle_timeout" in response.text and elapsed < IDLE_TIMEOUT + 1.5)
    response = requests.post(url + "/v1/chat/completions", json=CHAT, headers={"X-Fault": "echo"}, timeout=10)
    leaked = KEY in response.text or KEY in json.dumps(dict(response.headers))
    row("upstream echoes its key (header, JSON)", "scrubbed", f"{response.status_code}, key relayed: {leaked}",
        not leaked)
    requests.get(url + f"/v1/models/{KEY}", headers={"x-request-id": KEY.replace("_", "-"),
                                                      "x-end-user": KEY}, timeout=10)
    time.sleep(0.5)
    logged = KEY in log_path.read_text()
    row("client puts a key in a path, request id, user", "not in logs", f"in the log: {logged}", not logged)


# -- slow clients ------------------------------------------------------------------------------------------
def _raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def attack(url: str, count: int, seconds: float, results) -> None:
    """``count`` connections that send their headers one byte every 5 s, each reopened at once when the
    sidecar closes it; runs in its own process (its busy loop must not slow the probe or the fake upstream)."""
    limit = _raise_fd_limit(count + 200)
    if limit < count + 200:
        count = limit - 200
        print(f"faults: open-file limit {limit}: {count} slow connections (raise ulimit -n for more)", flush=True)
    host, port = url.removeprefix("http://").split(":")
    selector = selectors.DefaultSelector()
    opened = closed = 0

    def open_one() -> None:
        nonlocal opened
        sock = socket.socket()
        sock.settimeout(3)
        try:
            sock.connect((host, int(port)))
            sock.sendall(b"GET /health/liveliness HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        opened += 1

    end = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > end:
            break
        open_one()
    held_peak = len(selector.get_map())
    next_drip = time.monotonic() + 5
    while time.monotonic() < end:
        for key, _events in selector.select(timeout=0.5):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:  # the sidecar closed it: the attacker opens another at once
                selector.unregister(sock)
                sock.close()
                closed += 1
                open_one()
        if time.monotonic() >= next_drip:
            next_drip += 5
            for key in list(selector.get_map().values()):
                try:
                    key.fileobj.send(b"a")
                except OSError:
                    pass
            held_peak = max(held_peak, len(selector.get_map()))
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    results.put({"connections": count, "held_peak": held_peak, "closed_by_sidecar": closed, "opened": opened})


def slow_headers(url: str, workers: list[int], count: int, seconds: float) -> dict:
    """The flood (another process) while a probe here sends one chat call a second on a fresh connection."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    rss_before = rss_kb(workers)
    attacker = context.Process(target=attack, args=(url, count, seconds, results), daemon=True)
    attacker.start()
    kept: list[float | None] = []  # a normal client: one pooled, kept-alive connection (an SDK, requests.Session)
    fresh: list[float | None] = []  # a new connection per call: it must also get through the accept queue
    session = requests.Session()
    rss_peak = rss_before
    end = time.monotonic() + seconds
    time.sleep(1.0)
    while time.monotonic() < end:
        started = time.monotonic()
        for found, call in ((kept, session.post), (fresh, requests.post)):
            began = time.monotonic()
            try:
                ok = call(url + "/v1/chat/completions", json=CHAT, timeout=5,
                          headers={} if found is kept else {"Connection": "close"}).status_code == 200
            except requests.RequestException:
                ok = False
            found.append(time.monotonic() - began if ok else None)
        rss_peak = max(rss_peak, rss_kb(workers))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    stats = results.get(timeout=60)
    attacker.join(10)
    return {**stats, "kept_alive": _latencies(kept), "fresh_connection": _latencies(fresh),
            "kb_per_connection": round((rss_peak - rss_before) / max(stats["held_peak"], 1), 1),
            "rss_before_kb": rss_before, "rss_peak_kb": rss_peak}


def _latencies(found: list[float | None]) -> dict:
    answered = sorted(p for p in found if p is not None)
    return {"calls": len(found), "failed": len(found) - len(answered),
            "p50_s": round(answered[len(answered) // 2], 3) if answered else None,
            "max_s": round(answered[-1], 3) if answered else None,
            "over_1s": sum(p > 1.0 for p in answered)}


# -- the store outage ----------------------------------------------------------------------------------------
def postgres_url() -> tuple[str | None, str]:
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", connect_timeout=2,
                             autocommit=True) as connection:
            schema = f"sidecar_faults_{uuid.uuid4().hex[:10]}"
            connection.execute(f'CREATE SCHEMA "{schema}"')
        return schema, ""
    except Exception as exc:  # any reason PostgreSQL is not usable here is a reason to skip, printed
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _records(schema: str) -> int:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True) as connection:
        return connection.execute(f'SELECT count(*) FROM "{schema}".spend_logs').fetchone()[0]


def store_outage(url: str, proxy: TcpProxy, schema: str, seconds: float) -> None:
    key = requests.post(url + "/key/generate", json={"key_alias": "faults"}, timeout=10).json()["key"]
    time.sleep(1)  # the writers flush every 50 ms: what came before the outage is written
    before = _records(schema)
    statuses: dict[int, int] = {}
    sent = 0
    ready_during = None
    proxy.stop()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for headers in ({"Authorization": f"Bearer {key}"}, {}):
            status = requests.post(url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10).status_code
            statuses[status] = statuses.get(status, 0) + 1
            sent += 1
        ready_during = requests.get(url + "/health/readiness", timeout=10).status_code
        time.sleep(0.05)
    proxy.start()
    back_at = time.monotonic()
    while requests.get(url + "/health/readiness", timeout=10).status_code != 200 and time.monotonic() - back_at < 30:
        time.sleep(0.2)
    recovered = time.monotonic() - back_at
    time.sleep(8)  # the writers' backoff is at most 5 s
    records = _records(schema) - before
    row(f"store down {seconds:g} s: readiness", "503 naming the store", str(ready_during), ready_during == 503)
    row(f"store down {seconds:g} s: requests", "503 store_unavailable when needed, no 500",
        json.dumps(statuses), 500 not in statuses and statuses.get(503, 0) > 0)
    row("store back: readiness, spend records", f"200, {sent} records",
        f"200 after {recovered:.1f} s, {records} records", records == sent)


def run(args) -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake upstream's access log
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-faults-"))
    fake = fake_mistral()
    schema, why = postgres_url()
    proxy = TcpProxy(("127.0.0.1", 5432)).start() if schema else None
    env = {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": KEY, "SIDECAR_DB_PATH": str(tmp / "sidecar.sqlite3"),
           "SIDECAR_TOTAL_TIMEOUT": str(TOTAL_TIMEOUT), "SIDECAR_STREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
    if schema:
        env["DATABASE_URL"] = (f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
                               f"?options=-csearch_path%3D{schema}")
        from sidecar.store import make_engine, migrate

        migrate(make_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")))
    log_path = tmp / "sidecar.log"
    try:
        with gunicorn_sidecar(env, workers=args.workers, log_path=log_path) as (url, process):
            print(f"{'':3} {'attack':<44} {'expected':<40} observed", flush=True)
            input_attacks(url)
            browser_attacks(url)
            upstream_attacks(url, log_path)
            workers = tree_pids(process.pid)  # the RSS delta is the workers': the master's does not move
            slow = slow_headers(url, workers, args.slow_connections, args.slow_seconds)
            kept, fresh = slow["kept_alive"], slow["fresh_connection"]
            row(f"{slow['connections']:,} slow-header connections, {args.slow_seconds:g} s",
                "a client's calls answered in < 1 s",
                f"{kept['calls'] - kept['failed']}/{kept['calls']} answered, p50 {kept['p50_s']} s, max {kept['max_s']} s; "
                f"{slow['held_peak']:,} held, {slow['closed_by_sidecar']:,} closed by the sidecar, "
                f"{slow['kb_per_connection']} KB each",
                kept["failed"] == 0 and kept["max_s"] is not None and kept["max_s"] < 1.0)
            row("  the same, a new connection per call", "answered (after the accept queue)",
                f"{fresh['calls'] - fresh['failed']}/{fresh['calls']} answered, p50 {fresh['p50_s']} s, "
                f"max {fresh['max_s']} s, {fresh['over_1s']} over 1 s", fresh["failed"] == 0)
            if schema:
                store_outage(url, proxy, schema, args.outage_seconds)
            else:
                row("store outage", "503 store_unavailable", f"skipped: PostgreSQL not reachable ({why})", True)
            text = log_path.read_text()
            row("the sidecar's log after all of it", "no traceback", f"{text.count('Traceback')} tracebacks",
                "Traceback" not in text)
    finally:
        if proxy is not None:
            proxy.stop()
        fake.close()
    result = {"rows": ROWS, "slow_headers": slow, "workers": args.workers, "time": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    bad = [r for r in ROWS if not r["ok"]]
    print(f"\n{len(ROWS) - len(bad)}/{len(ROWS)} as expected; written to {args.out}", flush=True)
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-connections", type=int, default=8200)
    parser.add_argument("--slow-seconds", type=float, default=40.0)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "faults.json")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
