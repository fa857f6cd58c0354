"""The fault matrix as a tool: hostile clients, misbehaving upstreams and a store outage against the sidecar.

    python bench/faults.py [--slow-connections 8200] [--slow-seconds 40] [--outage-seconds 10]
                           [--workers 2] [--worker-connections N] [--only flood,outage]
                           [--out bench/results/faults.json]

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
import re
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

from bench.flood import CHAT, slow_headers  # noqa: E402
from tests.fakes import FakeMistral, TcpProxy, chat_body  # noqa: E402
from tests.servers import gunicorn_sidecar  # noqa: E402

KEY = "sk-faults-real-mistral-key-0123456789"
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


SCENARIOS = ("input", "browser", "upstream", "flood", "outage")


def flood_rows(url: str, process, args, log_path: Path) -> dict:
    slow = slow_headers(url, process.pid, args.slow_connections, args.slow_seconds)
    kept, fresh = slow["kept_alive"], slow["fresh_connection"]
    cap = re.search(r"(\d+) connections per worker", log_path.read_text())
    slow["cap_per_worker"] = int(cap.group(1)) if cap else None
    row(f"{slow['connections']:,} slow-header connections, {args.slow_seconds:g} s",
        "a kept-alive client's calls answered in < 1 s",
        f"{kept['calls'] - kept['failed']}/{kept['calls']} answered, p50 {kept['p50_s']} s, max {kept['max_s']} s; "
        f"held {' + '.join(f'{n:,}' for n in slow['held_per_worker'])} (cap {slow['cap_per_worker']} a worker), "
        f"{slow['kb_per_held_connection']} KB each; {slow['closed_by_sidecar']:,} closed by the sidecar",
        kept["failed"] == 0 and kept["max_s"] is not None and kept["max_s"] < 1.0)
    row("  the same, a new connection per call", "answered in < 1 s (through the listen queue)",
        f"{fresh['calls'] - fresh['failed']}/{fresh['calls']} answered, p50 {fresh['p50_s']} s, "
        f"max {fresh['max_s']} s, {fresh['over_1s']} over 1 s; load average {slow['load_average_1m'][-1]}, "
        f"workers ran {'/'.join(map(str, slow['worker_cpu_s']))} s and waited for a CPU "
        f"{'/'.join(map(str, slow['worker_waited_for_cpu_s']))} s",
        fresh["failed"] == 0 and fresh["max_s"] is not None and fresh["max_s"] < 1.0)
    return slow


def run(args) -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake upstream's access log
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if only - set(SCENARIOS):
        raise SystemExit(f"--only takes {', '.join(SCENARIOS)}; got {', '.join(sorted(only - set(SCENARIOS)))}")
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-faults-"))
    fake = fake_mistral()
    schema, why = postgres_url() if "outage" in only else (None, "not asked for")
    proxy = TcpProxy(("127.0.0.1", 5432)).start() if schema else None
    env = {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": KEY, "SIDECAR_DB_PATH": str(tmp / "sidecar.sqlite3"),
           "SIDECAR_TOTAL_TIMEOUT": str(TOTAL_TIMEOUT), "SIDECAR_STREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
    if args.worker_connections:
        env["SIDECAR_WORKER_CONNECTIONS"] = str(args.worker_connections)
    if schema:
        env["DATABASE_URL"] = (f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
                               f"?options=-csearch_path%3D{schema}")
        from sidecar.store import make_engine, migrate

        migrate(make_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")))
    log_path = tmp / "sidecar.log"
    slow = None
    try:
        with gunicorn_sidecar(env, workers=args.workers, log_path=log_path) as (url, process):
            print(f"{'':3} {'attack':<44} {'expected':<40} observed", flush=True)
            if "input" in only:
                input_attacks(url)
            if "browser" in only:
                browser_attacks(url)
            if "upstream" in only:
                upstream_attacks(url, log_path)
            if "flood" in only:
                slow = flood_rows(url, process, args, log_path)
            if schema:
                store_outage(url, proxy, schema, args.outage_seconds)
            elif "outage" in only:
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
    parser.add_argument("--worker-connections", type=int, default=0,
                        help="SIDECAR_WORKER_CONNECTIONS for the sidecar (default: its own); below the flood's "
                             "share of a worker, the flood runs into the cap and the workers shed")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "faults.json")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
