"""The benchmark: the sidecar beside a bare proxy floor, Portkey's gateway and LiteLLM's proxy, against one fast fake Mistral.

    python bench/run.py [--quick] [--rounds 2] [--out bench/results/latest.json] [--soak SECONDS]
                        [--no-litellm] [--no-portkey] [--loadgen-cpu 0]

Starts the fake upstream (``fake_upstream.py``), the sidecar under its production gunicorn settings
(2 gevent workers, a virtual key, cost accounting on), the floor (``floor.py``: gunicorn+gevent, 2
workers) and, when installed, Portkey's gateway (``bench/portkey``, one Node process) and LiteLLM's
proxy (2 workers, its Mistral pass-through). Every scenario runs against every side, in rounds whose
order alternates (forward, then backward), and each figure of each round is shown: on a shared
machine the order and the moment matter, so the load average is recorded at the start and end of
every measurement. Load comes from ``wrk`` when installed, else ``loadgen.py``, pinned to one core
with taskset. Everything listens on 127.0.0.1; every load loop is bounded in time or count.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402
from bench.peers import MASTER, PY, RssSampler, Side, free_port, process_group, rss_kb, tree_pids  # noqa: E402, F401
from bench.report import check, table  # noqa: E402
from tests.servers import gunicorn_sidecar  # noqa: E402

CHAT, EMBEDDINGS, OCR = "/v1/chat/completions", "/v1/embeddings", "/v1/ocr"
PLAIN_BODY = json.dumps({"model": "mistral-small-latest",
                         "messages": [{"role": "user", "content": "Say hello in one short sentence."}]})
STREAM_BODY = json.dumps({"model": "mistral-small-latest", "stream": True,
                          "messages": [{"role": "user", "content": "Count slowly."}]})
LOADGEN_CPU = 0  # set from --loadgen-cpu


def large_bodies(folder: Path) -> dict[str, tuple[str, Path]]:
    """The large-body requests, written once: (path, file) by scenario name."""
    rng = random.Random(18)
    words = [f"w{rng.randrange(10**6)}" for _ in range(4096)]

    def text(size: int) -> str:
        out, n = [], 0
        while n < size:
            word = words[rng.randrange(len(words))]
            out.append(word)
            n += len(word) + 1
        return " ".join(out)[:size]

    pdf = rng.randbytes(7_500_000)
    bodies = {
        "chat_400kb": (CHAT, {"model": "mistral-small-latest", "messages": [{"role": "user", "content": text(400_000)}]}),
        "ocr_10mb": (OCR, {"model": "mistral-ocr-latest", "document": {
            "type": "document_url", "document_url": "data:application/pdf;base64," + base64.b64encode(pdf).decode()}}),
        "embeddings_512x1kb": (EMBEDDINGS, {"model": "mistral-embed", "input": [text(1024) for _ in range(512)]}),
    }
    out = {}
    for name, (path, body) in bodies.items():
        file = folder / f"{name}.json"
        file.write_bytes(json.dumps(body).encode())
        out[name] = (path, file)
    return out


# -- load --------------------------------------------------------------------------------------------------
def pinned(argv: list) -> list[str]:
    """The load generator on one core, so it never runs on the core a server is using at that instant."""
    argv = [str(a) for a in argv]
    return ["taskset", "-c", str(LOADGEN_CPU), *argv] if shutil.which("taskset") else argv


def loadgen(*args) -> dict:
    done = subprocess.run(pinned([PY, BENCH / "loadgen.py", *args]), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def header_args(headers: dict[str, str], flag: str = "--header") -> list[str]:
    return [x for k, v in headers.items() for x in (flag, f"{k}: {v}")]


def throughput(side: Side, concurrency: int, seconds: float, path: str = CHAT, body_file: Path | None = None) -> dict:
    """Closed-loop POSTs, and the server's CPU per request (from /proc), which a busy machine disturbs
    far less than requests per second."""
    pids = tree_pids(side.pid)
    before = peers.cpu_seconds(pids)
    if shutil.which("wrk") and body_file is None:
        env = {**os.environ, "BENCH_BODY": PLAIN_BODY,
               "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in side.headers.items())}
        done = subprocess.run(pinned(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
                                      "-s", BENCH / "post.lua", side.endpoint(path)]),
                              capture_output=True, text=True, env=env, timeout=seconds + 60)
        line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no summary: {done.stdout[-800:]} {done.stderr[-800:]}")
        data = json.loads(line[8:])
        result = {"tool": "wrk", "rps": round(data["requests"] / data["seconds"], 1), "requests": data["requests"],
                  "errors": data["errors"], "latency_ms": {k: data[k] for k in ("p50", "p90", "p99", "max")}}
    else:
        body = ["--body-file", body_file] if body_file else ["--body", PLAIN_BODY]
        result = {"tool": "loadgen", **loadgen("closed", "--url", side.endpoint(path), *body, "--concurrency",
                                               concurrency, "--duration", seconds, *header_args(side.headers))}
    if result["requests"]:
        result["server_cpu_us_per_request"] = round((peers.cpu_seconds(pids) - before) / result["requests"] * 1e6)
    return result


def added_latency(direct: str, side: Side, count: int, path: str = CHAT, body_file: Path | None = None,
                  warmup: int | None = None) -> dict:
    """Direct and proxied calls alternated at concurrency 1; also the proxy's CPU per call (from /proc)."""
    body = ["--body-file", body_file] if body_file else ["--body", PLAIN_BODY]
    warmup = max(100, count // 10) if warmup is None else warmup
    pids = tree_pids(side.pid)
    before = peers.cpu_seconds(pids)
    result = loadgen("pairs", "--direct-url", direct + path, "--url", side.endpoint(path), *body, "--count", count,
                     "--warmup", warmup, *header_args(side.headers, "--proxied-header"))
    result["server_cpu_us_per_request"] = round((peers.cpu_seconds(pids) - before) / (count + warmup) * 1e6)
    return result


def streams(side: Side, count: int, events: int, interval_ms: float, ramp: float, timeout: float = 120.0) -> dict:
    """Concurrent SSE streams; for a proxy also its worker memory per open stream."""
    fake = {"x-fake-events": str(events), "x-fake-interval-ms": f"{interval_ms:g}"}
    if side.name != "direct":
        with RssSampler(side.pid) as rss:
            result = _streams(side, count, fake, ramp, timeout)
        return {**result, "rss_idle_kb": rss.idle, "rss_peak_kb": rss.peak,
                "rss_kb_per_stream": round((rss.peak - rss.idle) / count, 1)}
    return _streams(side, count, fake, ramp, timeout)


def _streams(side: Side, count: int, fake: dict, ramp: float, timeout: float) -> dict:
    return loadgen("streams", "--url", side.endpoint(CHAT), "--body", STREAM_BODY, "--count", count, "--ramp", ramp,
                   "--timeout", timeout, *header_args({**fake, **side.headers}))


def held_bodies(side: Side, path: str, body_file: Path, concurrency: int, seconds: float) -> dict:
    """Worker memory while ``concurrency`` large bodies are in flight at once: peak RSS above idle,
    against the bytes of the bodies held."""
    with RssSampler(side.pid) as rss:
        result = throughput(side, concurrency, seconds, path, body_file)
    held = concurrency * body_file.stat().st_size / 1024
    return {**result, "rss_idle_kb": rss.idle, "rss_peak_kb": rss.peak,
            "peak_over_bodies": round((rss.peak - rss.idle) / held, 2)}


def idle(side: Side) -> dict:
    """Memory per worker (RSS; PSS and USS, which count what forked workers share once) and in all."""
    pids, everything = peers.workers(side.pid), tree_pids(side.pid)
    shared = peers.shared_kb(pids)
    return {"workers": len(pids), "rss_kb_per_worker": round(rss_kb(pids) / len(pids)),
            "pss_kb_per_worker": round(shared["pss_kb"] / len(pids)),
            "uss_kb_per_worker": round(shared["uss_kb"] / len(pids)),
            "startup_s": side.startup_s, "startup_cpu_s": side.startup_cpu_s,
            "rss_kb_all": rss_kb(everything), "pss_kb_all": peers.shared_kb(everything)["pss_kb"]}


# -- the run -----------------------------------------------------------------------------------------------
def virtual_key(url: str) -> str:
    answer = requests.post(url + "/key/generate", json={"key_alias": "bench"}, timeout=30,
                           headers={"Authorization": f"Bearer {MASTER}"})
    answer.raise_for_status()
    return answer.json()["key"]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(int(mem) / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_start": list(os.getloadavg())}


def scenarios(plan: dict, direct: str, bodies: dict, quick: bool) -> list[tuple[str, object, set | None]]:
    """(name, measure(side) -> dict, the sides it runs on: None for every side but direct)."""
    everyone = {"direct", "floor", "sidecar", "sidecar+otel", "portkey", "litellm"}
    proxies = None  # every side but direct and the stack floors, which only measure plain chat
    plain = everyone | set(peers.STACK_FLOORS)
    out = [(f"throughput_c{c}", lambda s, c=c: throughput(s, c, plan["throughput_seconds"]), plain)
           for c in (16, 64)]
    out.append(("added_latency", lambda s: added_latency(direct, s, plan["pairs"] // (4 if s.name == "litellm" else 1)),
                plain - {"direct"}))
    for name, (path, file) in bodies.items():
        count = plan["large_pairs"] * (10 if name == "chat_400kb" else 1)
        out.append((name, lambda s, p=path, f=file, n=count: added_latency(direct, s, n, p, f, warmup=3), proxies))
    ocr_path, ocr_file = bodies["ocr_10mb"]
    out.append(("held_8x10mb", lambda s: held_bodies(s, ocr_path, ocr_file, 8, plan["held_seconds"]), proxies))
    out.append(("streams", lambda s: streams(s, plan["streams"], plan["stream_events"], plan["stream_interval_ms"],
                                             plan["stream_ramp_s"]),
                everyone - ({"litellm"} if quick else set())))
    out.append(("relay", lambda s: streams(s, plan["relay_streams"], plan["relay_events"], 0, 0.1),
                everyone - {"litellm"}))  # LiteLLM passes no x-fake-* header on, so it cannot be given this load
    return out


def settle(roots: list[int], limit: float = 30.0, quiet: float = 0.05) -> float:
    """Wait until every server of the run (the trees of ``roots``) uses under ``quiet`` of a core over half a
    second, at most ``limit`` seconds; returns the seconds waited. A side still busy with the scenario it
    was just measured in (Portkey goes on relaying 1000 streams after its own run) would otherwise slow
    the next side's measurement: seen here, a sidecar's 1000 streams took 10.9 s right after Portkey's
    and 6.4 s otherwise."""
    started, window = time.monotonic(), 0.5

    def busy() -> float:  # CPU seconds the servers used over one window
        pids = [p for root in roots for p in tree_pids(root)]
        before = peers.cpu_seconds(pids)
        time.sleep(window)
        return peers.cpu_seconds(pids) - before

    while time.monotonic() - started < limit and busy() >= quiet * window:
        pass
    return round(time.monotonic() - started, 1)


def measure(fn, side: Side, roots: list[int]) -> dict:
    settled = settle(roots)
    start = os.getloadavg()[0]
    try:
        result = fn(side)
    except RuntimeError as exc:  # one side failing one scenario is a result, not the end of the run
        result = {"failed": str(exc)[-500:]}
    return {**result, "loadavg": [round(start, 2), round(os.getloadavg()[0], 2)], "settled_s": settled}


def run(args) -> dict:
    quick = args.quick
    plan = {
        "rounds": args.rounds,
        "throughput_seconds": 5 if quick else 10,
        "pairs": 1000 if quick else 3000, "large_pairs": 10 if quick else 30, "held_seconds": 3,
        "streams": 1000, "stream_events": 100, "stream_interval_ms": 50, "stream_ramp_s": 1.0,
        "relay_streams": 32, "relay_events": 1000 if quick else 3000,
    }
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    results: dict = {"machine": machine(), "plan": plan, "quick": quick, "loadgen_cpu": LOADGEN_CPU,
                     "scenarios": {}, "idle": {}, "notes": []}
    notes = results["notes"]
    log = print if not args.json_only else (lambda *a, **k: None)
    bodies = large_bodies(tmp)
    fake_port = free_port()
    with contextlib.ExitStack() as stack:
        fake, _ = stack.enter_context(process_group(
            [PY, BENCH / "fake_upstream.py", "--port", fake_port, "--procs", "2"],
            what="fake upstream", port=fake_port, log=tmp / "fake.log"))
        direct = f"http://127.0.0.1:{fake_port}"
        env = {"MISTRAL_API_BASE": direct, "MISTRAL_API_KEY": "sk-fake", "SIDECAR_MASTER_KEY": MASTER,
               "SIDECAR_DB_PATH": str(tmp / "sidecar.db"), "DATABASE_URL": "", "REDIS_URL": "", "SIDECAR_CONFIG": ""}
        started = time.monotonic()
        sidecar_url, sidecar_proc = stack.enter_context(gunicorn_sidecar(env, workers=2, log_path=tmp / "sidecar.log"))
        sidecar = Side("sidecar", sidecar_url, sidecar_proc.pid, startup_s=round(time.monotonic() - started, 2),
                       startup_cpu_s=round(peers.cpu_seconds(tree_pids(sidecar_proc.pid)), 2))
        sidecar.headers["Authorization"] = f"Bearer {virtual_key(sidecar_url)}"
        notes.append("sidecar: a virtual key, cost accounting on, 2 gevent workers")
        if importlib.util.find_spec("pytest") is not None:  # the sidecar runs on this interpreter
            notes.append(f"sidecar run from {sys.prefix}, which has the test packages too: its start-up and "
                         "RSS are not a production install's (make bench uses a venv of the run lock only)")
        sides = [Side("direct", direct, fake.pid), peers.floor(stack, direct, tmp), sidecar]
        if args.otel:  # the same sidecar with OpenTelemetry on: its cost per request is the difference
            sink = stack.enter_context(peers.otlp_sink())
            otel_env = {**env, "SIDECAR_DB_PATH": str(tmp / "sidecar-otel.db"), "OTEL_EXPORTER_OTLP_ENDPOINT": sink}
            otel_url, otel_proc = stack.enter_context(gunicorn_sidecar(otel_env, workers=2, log_path=tmp / "otel.log"))
            traced = Side("sidecar+otel", otel_url, otel_proc.pid)
            traced.headers["Authorization"] = f"Bearer {virtual_key(otel_url)}"
            sides.append(traced)
            notes.append(f"sidecar+otel: the sidecar with spans and GenAI metrics exported over OTLP/HTTP to {sink}")
        if args.stack_floors:
            sides += [peers.stack_floor(stack, direct, tmp, variant) for variant in peers.STACK_FLOORS]
        wanted = args.sides or {"direct", "floor", "sidecar", "sidecar+otel", "portkey", "litellm", *peers.STACK_FLOORS}
        if not args.no_portkey and "portkey" in wanted:
            sides.append(peers.portkey(stack, direct, tmp, notes))
        if not args.no_litellm and "litellm" in wanted:
            sides.append(peers.litellm(stack, direct, tmp, notes))
        sides = [s for s in sides if s is not None and s.name in wanted]
        proxies = [s for s in sides if s.name != "direct"]
        log(f"# upstream {direct}; " + ", ".join(f"{s.name} {s.url}" for s in proxies) + f"; logs in {tmp}")
        for side in proxies:
            if side.startup_cpu_s is None:
                side.startup_cpu_s = round(peers.cpu_seconds(tree_pids(side.pid)), 2)
            results["idle"][side.name] = {"cold": idle(side)}
        for side in sides:  # warm every side: connection pools, the key cache, lazy imports
            throughput(side, 16, 1)
        for side in proxies:
            results["idle"][side.name]["warm"] = idle(side)

        sc = results["scenarios"]
        for round_no in range(plan["rounds"]):
            order = sides if round_no % 2 == 0 else sides[::-1]
            log(f"## round {round_no + 1}: " + " -> ".join(s.name for s in order))
            for name, fn, who in scenarios(plan, direct, bodies, quick):
                if args.only and name not in args.only:
                    continue
                for side in order:
                    if (side.name != "direct" and side.name not in peers.STACK_FLOORS if who is None
                            else side.name in who):
                        result = sc.setdefault(name, {}).setdefault(side.name, [])
                        result.append(measure(fn, side, [s.pid for s in sides]))
                        log(f"{name:20} {side.name:8} {summary(name, result[-1])}")
        if args.soak:
            sc["soak"] = soak(sidecar, args.soak, log)
        results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["targets"] = check(results)
    return results


def summary(name: str, r: dict) -> str:
    if "failed" in r:
        return f"FAILED {r['failed'][-200:]}"
    if "added_ms" in r:
        text = f"added p50 {r['added_ms']['p50']:.3f} ms  p99 {r['added_ms']['p99']:.3f} ms"
    elif "ttfe_ms" in r:
        text = f"wall {r['wall_s']:.2f} s  ttfe p99 {r['ttfe_ms']['p99']:.1f} ms  {r['events_per_s']:,.0f} events/s"
    else:
        text = (f"{r['rps']:>9.1f} req/s  p50 {r['latency_ms']['p50']:.2f}  p99 {r['latency_ms']['p99']:.2f} ms  "
                f"CPU {r.get('server_cpu_us_per_request')} us/request")
        if "peak_over_bodies" in r:
            text += f"  peak {r['peak_over_bodies']}x the bodies"
    return f"{text}  errors {r.get('errors')}  load {r['loadavg'][0]}->{r['loadavg'][1]}"


def soak(side: Side, seconds: float, log) -> dict:
    """Mixed traffic (plain bursts, stream batches) for ``seconds``; worker RSS after each round."""
    pids = peers.workers(side.pid)
    samples = [(0.0, rss_kb(pids))]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        throughput(side, 32, 10)
        streams(side, 200, 20, 20, 0.5)
        samples.append((round(time.monotonic() - started, 1), rss_kb(pids)))
        log(f"soak t={samples[-1][0]:>6.0f} s  worker RSS {samples[-1][1]} KB")
    half = samples[len(samples) // 2:]
    growth = half[-1][1] - half[0][1] if len(half) > 1 else 0
    return {"seconds": seconds, "rss_kb": samples, "growth_second_half_kb": growth}


def main(argv=None) -> int:
    global LOADGEN_CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, no LiteLLM streams")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order of the sides")
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS", help="add a mixed-traffic soak")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--otel", action="store_true", help="add the sidecar with OpenTelemetry on (a local OTLP sink)")
    parser.add_argument("--no-portkey", action="store_true")
    parser.add_argument("--stack-floors", action="store_true",
                        help="add stack_floor.py's Flask/requests floors to the plain-chat scenarios")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=None,
                        help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--sides", type=lambda v: set(v.split(",")), default=None,
                        help="comma-separated sides to run (default: all installed)")
    parser.add_argument("--loadgen-cpu", type=int, default=0, help="the core the load generator is pinned to")
    parser.add_argument("--json-only", action="store_true", help="print only the final table")
    args = parser.parse_args(argv)
    LOADGEN_CPU = args.loadgen_cpu
    started = time.monotonic()
    results = run(args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; load average {m['loadavg_start']} -> {m['loadavg_end']}; "
          f"{results['elapsed_s']} s; load generator on core {LOADGEN_CPU}")
    for note in results["notes"]:
        print(f"note: {note}")
    print(table(results))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
