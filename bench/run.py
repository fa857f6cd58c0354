"""The benchmark: the sidecar beside a bare proxy floor and LiteLLM's proxy, against one fast fake Mistral.

    python bench/run.py [--quick] [--out bench/results/latest.json] [--soak SECONDS] [--no-litellm]

Starts the fake upstream (``fake_upstream.py``), the sidecar under its production gunicorn settings
(2 gevent workers, a virtual key when ``/key/generate`` exists, cost accounting on), the floor
(``floor.py`` on gunicorn+gevent, 2 workers) and, when installed, LiteLLM's proxy (2 workers), then
runs every scenario against each side by side and checks the targets. Plain-POST load comes from
``wrk`` when installed, else from ``loadgen.py``; streams and latency pairs always from ``loadgen.py``.
Everything listens on 127.0.0.1; every load loop is bounded in time or count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, gunicorn_sidecar  # noqa: E402

PY = sys.executable
MASTER = "sk-bench-master"
CHAT = "/v1/chat/completions"
PLAIN_BODY = json.dumps({"model": "mistral-small-latest",
                         "messages": [{"role": "user", "content": "Say hello in one short sentence."}]})
STREAM_BODY = json.dumps({"model": "mistral-small-latest", "stream": True,
                          "messages": [{"role": "user", "content": "Count slowly."}]})
LITELLM_BIN = Path(os.environ.get("LITELLM_BIN", "/tmp/litellm-venv/bin/litellm"))
TARGETS = {"rps_vs_litellm": 10.0, "added_p50_ms": 1.0, "added_p99_ms": 3.0, "stream_wall_ratio": 1.3,
           "ttfe_p99_ms": 500.0, "relay_events_per_s": 15000.0, "rss_kb_per_stream": 100.0}


# -- processes ---------------------------------------------------------------------------------------------
def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60.0, path: str | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if path is None:
                with contextlib.closing(__import__("socket").create_connection(("127.0.0.1", port), 0.5)):
                    return
            elif requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500:
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


@contextlib.contextmanager
def process_group(argv, *, env=None, log=None, what="process", port=None, health=None, timeout=60.0):
    """Run ``argv`` in its own session; on exit SIGTERM (then SIGKILL) that group, which we started."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    argv = [str(a) for a in argv]
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=out,
                               stderr=subprocess.STDOUT if log else subprocess.DEVNULL, start_new_session=True)
    try:
        if port is not None:
            wait_port(port, process, what, timeout, health)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if log:
            out.close()


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rss_kb(pids) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    """User + system CPU time of ``pids`` so far (from /proc; a process that left counts nothing)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


class RssSampler:
    """Samples the summed RSS of the worker processes under ``master`` every 50 ms."""

    def __init__(self, master: int):
        self.pids = [p for p in tree_pids(master) if p != master]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_kb(self.pids))

    def __enter__(self):
        self.idle = rss_kb(self.pids)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- load --------------------------------------------------------------------------------------------------
def loadgen(*args) -> dict:
    done = subprocess.run([PY, str(BENCH / "loadgen.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def throughput(url: str, auth: str | None, concurrency: int, seconds: float, server: int | None = None) -> dict:
    """Closed-loop POSTs; with ``server`` (a pid) also the server's CPU per request, which a busy
    machine disturbs far less than requests per second."""
    pids = tree_pids(server) if server else []
    before = cpu_seconds(pids)
    result = _throughput(url, auth, concurrency, seconds)
    if pids and result["requests"]:
        result["server_cpu_us_per_request"] = round((cpu_seconds(pids) - before) / result["requests"] * 1e6)
    return result


def _throughput(url: str, auth: str | None, concurrency: int, seconds: float) -> dict:
    if shutil.which("wrk"):
        env = {**os.environ, "BENCH_BODY": PLAIN_BODY, "BENCH_AUTH": auth or ""}
        done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
                               "-s", str(BENCH / "post.lua"), url + CHAT], capture_output=True, text=True,
                              env=env, timeout=seconds + 60)
        line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no summary: {done.stdout[-800:]} {done.stderr[-800:]}")
        data = json.loads(line[8:])
        return {"tool": "wrk", "rps": round(data["requests"] / data["seconds"], 1), "requests": data["requests"],
                "errors": data["errors"], "latency_ms": {k: data[k] for k in ("p50", "p90", "p99", "max")}}
    headers = ["--header", f"Authorization: Bearer {auth}"] if auth else []
    result = loadgen("closed", "--url", url + CHAT, "--body", PLAIN_BODY, "--concurrency", concurrency,
                     "--duration", seconds, *headers)
    return {"tool": "loadgen", **result}


def added_latency(direct: str, url: str, auth: str | None, count: int) -> dict:
    headers = ["--proxied-header", f"Authorization: Bearer {auth}"] if auth else []
    return loadgen("pairs", "--direct-url", direct + CHAT, "--url", url + CHAT, "--body", PLAIN_BODY,
                   "--count", count, "--warmup", max(100, count // 10), *headers)


def streams(url: str, auth: str | None, count: int, events: int, interval_ms: float, ramp: float,
            timeout: float = 120.0) -> dict:
    headers = ["--header", f"x-fake-events: {events}", "--header", f"x-fake-interval-ms: {interval_ms:g}"]
    if auth:
        headers += ["--header", f"Authorization: Bearer {auth}"]
    return loadgen("streams", "--url", url + CHAT, "--body", STREAM_BODY, "--count", count, "--ramp", ramp,
                   "--timeout", timeout, *headers)


# -- the run -----------------------------------------------------------------------------------------------
def virtual_key(url: str) -> tuple[str, str]:
    """A virtual key made with the master key, when the sidecar has /key/generate; else the master key."""
    try:
        answer = requests.post(url + "/key/generate", json={"key_alias": "bench"}, timeout=10,
                               headers={"Authorization": f"Bearer {MASTER}"})
        if answer.status_code == 200 and answer.json().get("key"):
            return answer.json()["key"], "virtual key"
        note = f"master key (/key/generate answered {answer.status_code})"
    except (requests.RequestException, ValueError) as exc:
        note = f"master key (/key/generate failed: {type(exc).__name__})"
    return MASTER, note


def litellm_config(path: Path, upstream: str) -> None:
    path.write_text(
        "model_list:\n"
        "  - model_name: mistral-small-latest\n"
        "    litellm_params:\n"
        "      model: mistral/mistral-small-latest\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-fake\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        f"general_settings:\n  master_key: {MASTER}\n")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(int(mem) / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_start": list(os.getloadavg())}


def run(args) -> dict:
    quick = args.quick
    plan = {
        "throughput_seconds": 5 if quick else 15,
        "pairs": 2000 if quick else 5000,
        "streams": 1000, "stream_events": 100, "stream_interval_ms": 50, "stream_ramp_s": 1.0,
        "relay_streams": 32, "relay_events": 1000 if quick else 3000,
    }
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    results: dict = {"machine": machine(), "plan": plan, "quick": quick, "scenarios": {}, "notes": []}
    log = print if not args.json_only else (lambda *a, **k: None)
    fake_port = free_port()
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(process_group(
            [PY, str(BENCH / "fake_upstream.py"), "--port", fake_port, "--procs", "2"],
            what="fake upstream", port=fake_port, log=tmp / "fake.log"))
        direct = f"http://127.0.0.1:{fake_port}"
        env = {"MISTRAL_API_BASE": direct, "MISTRAL_API_KEY": "sk-fake", "SIDECAR_MASTER_KEY": MASTER,
               "SIDECAR_DB_PATH": str(tmp / "sidecar.db"), "DATABASE_URL": "", "REDIS_URL": "",
               "SIDECAR_CONFIG": ""}
        sidecar_url, sidecar_proc = stack.enter_context(gunicorn_sidecar(env, workers=2, log_path=tmp / "sidecar.log"))
        key, key_note = virtual_key(sidecar_url)
        results["notes"].append(f"sidecar called with a {key_note}; cost accounting on")
        floor_port = free_port()
        floor_proc = stack.enter_context(process_group(
            [PY, "-m", "gunicorn", "bench.floor:app", "-k", "gevent", "-w", "2", "--worker-connections", "4000",
             "--keep-alive", "75", "--bind", f"127.0.0.1:{floor_port}", "--log-level", "warning"],
            env={"FLOOR_UPSTREAM": direct}, what="floor proxy", port=floor_port, log=tmp / "floor.log"))
        proxies = {"floor": (f"http://127.0.0.1:{floor_port}", None, floor_proc.pid),
                   "sidecar": (sidecar_url, key, sidecar_proc.pid)}
        if not args.no_litellm and LITELLM_BIN.exists():
            lite_port = free_port()
            litellm_config(tmp / "litellm.yaml", direct)
            try:
                lite = stack.enter_context(process_group(
                    [str(LITELLM_BIN), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port",
                     str(lite_port), "--num_workers", "2"],
                    env={"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                         "DISABLE_SCHEMA_UPDATE": "True"},
                    what="litellm", port=lite_port, health="/health/liveliness", log=tmp / "litellm.log",
                    timeout=240))
                proxies["litellm"] = (f"http://127.0.0.1:{lite_port}", MASTER, lite.pid)
                version = subprocess.run([str(LITELLM_BIN.parent / "python"), "-c",
                                          "import importlib.metadata as m; print(m.version('litellm'))"],
                                         capture_output=True, text=True).stdout.strip()
                results["notes"].append(f"litellm {version}: master key, no database, 2 workers")
            except RuntimeError as exc:
                results["notes"].append(f"litellm did not start: {exc} (log: {tmp / 'litellm.log'})")
        else:
            results["notes"].append("litellm not run (install litellm[proxy] into /tmp/litellm-venv or set LITELLM_BIN)")
        everyone = {"direct": (direct, None, fake.pid), **proxies}
        log(f"# upstream {direct}; " + ", ".join(f"{k} {v[0]}" for k, v in proxies.items()) + f"; logs in {tmp}")

        # Warm every side: connection pools, the key cache, LiteLLM's lazy imports.
        for url, auth, _ in everyone.values():
            throughput(url, auth, 16, 1)

        sc = results["scenarios"]
        for concurrency in (16, 64):
            sc[f"throughput_c{concurrency}"] = row = {}
            for name, (url, auth, pid) in everyone.items():
                row[name] = throughput(url, auth, concurrency, plan["throughput_seconds"], server=pid)
                log(f"throughput c={concurrency:<3} {name:8} {row[name]['rps']:>9.1f} req/s  "
                    f"p50 {row[name]['latency_ms']['p50']:.2f} ms  errors {row[name]['errors']}  "
                    f"server CPU {row[name].get('server_cpu_us_per_request')} us/request")

        sc["added_latency"] = row = {}
        for name, (url, auth, _) in proxies.items():
            row[name] = added_latency(direct, url, auth, plan["pairs"] if name != "litellm" else plan["pairs"] // 4)
            log(f"added latency {name:8} p50 {row[name]['added_ms']['p50']:.3f} ms  "
                f"p99 {row[name]['added_ms']['p99']:.3f} ms")

        sc["streams"] = row = {}
        for name, (url, auth, master) in everyone.items():
            if name == "litellm" and quick:
                continue
            sampler = RssSampler(master) if name != "direct" else contextlib.nullcontext()
            with sampler as rss:
                row[name] = streams(url, auth, plan["streams"], plan["stream_events"], plan["stream_interval_ms"],
                                    plan["stream_ramp_s"])
            if rss is not None:
                row[name]["rss_idle_kb"], row[name]["rss_peak_kb"] = rss.idle, rss.peak
                row[name]["rss_kb_per_stream"] = round((rss.peak - rss.idle) / plan["streams"], 1)
            log(f"streams {name:8} wall {row[name]['wall_s']:.2f} s  errors {row[name]['errors']}  "
                f"ttfe p99 {row[name]['ttfe_ms']['p99']:.1f} ms  "
                f"rss/stream {row[name].get('rss_kb_per_stream', '-')} KB")

        sc["relay"] = row = {}
        for name, (url, auth, _) in everyone.items():
            if name == "litellm":
                continue  # LiteLLM does not pass the x-fake-* headers on, so it cannot be given this load
            row[name] = streams(url, auth, plan["relay_streams"], plan["relay_events"], 0, 0.1)
            log(f"relay {name:8} {row[name]['events_per_s']:>9.1f} events/s  errors {row[name]['errors']}")

        if args.soak:
            sc["soak"] = soak(sidecar_url, key, sidecar_proc.pid, args.soak, log)
        results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["targets"] = check(results)
    return results


def soak(url: str, auth: str, master: int, seconds: float, log) -> dict:
    """Mixed traffic (plain bursts, stream batches) for ``seconds``; worker RSS after each round."""
    workers = [p for p in tree_pids(master) if p != master]
    samples = [(0.0, rss_kb(workers))]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        throughput(url, auth, 32, 10)
        streams(url, auth, 200, 20, 20, 0.5)
        samples.append((round(time.monotonic() - started, 1), rss_kb(workers)))
        log(f"soak t={samples[-1][0]:>6.0f} s  worker RSS {samples[-1][1]} KB")
    half = samples[len(samples) // 2:]
    growth = half[-1][1] - half[0][1] if len(half) > 1 else 0
    return {"seconds": seconds, "rss_kb": samples, "growth_second_half_kb": growth}


def check(results: dict) -> dict:
    sc = results["scenarios"]
    out: dict = {}

    def ok(name, value, limit, higher_is_better=False):
        passed = None if value is None else (value >= limit if higher_is_better else value <= limit)
        out[name] = {"value": value, "target": limit, "pass": passed}

    lite = sc["throughput_c16"].get("litellm")
    for c in (16, 64):
        row = sc[f"throughput_c{c}"]
        ratio = round(row["sidecar"]["rps"] / row["litellm"]["rps"], 1) if lite and row["litellm"]["rps"] else None
        ok(f"rps_c{c}_vs_litellm", ratio, TARGETS["rps_vs_litellm"], True)
        cpu = (row["litellm"].get("server_cpu_us_per_request"), row["sidecar"].get("server_cpu_us_per_request")) \
            if lite else (None, None)
        ok(f"cpu_c{c}_litellm_over_sidecar", round(cpu[0] / cpu[1], 1) if all(cpu) else None,
           TARGETS["rps_vs_litellm"], True)
    added = sc["added_latency"]["sidecar"]["added_ms"]
    ok("added_p50_ms", added["p50"], TARGETS["added_p50_ms"])
    ok("added_p99_ms", added["p99"], TARGETS["added_p99_ms"])
    st = sc["streams"]
    ok("stream_errors", st["sidecar"]["errors"], 0)
    ok("stream_wall_ratio", round(st["sidecar"]["wall_s"] / st["direct"]["wall_s"], 3), TARGETS["stream_wall_ratio"])
    ok("ttfe_p99_ms", st["sidecar"]["ttfe_ms"]["p99"], TARGETS["ttfe_p99_ms"])
    ok("rss_kb_per_stream", st["sidecar"].get("rss_kb_per_stream"), TARGETS["rss_kb_per_stream"])
    ok("relay_events_per_s", sc["relay"]["sidecar"]["events_per_s"], TARGETS["relay_events_per_s"], True)
    if "soak" in sc:
        ok("soak_growth_kb", sc["soak"]["growth_second_half_kb"], 10_000)
    return out


def table(results: dict) -> str:
    sc = results["scenarios"]
    names = [n for n in ("direct", "floor", "sidecar", "litellm") if n in sc["throughput_c16"]]
    lines = ["| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def cell(row, name, fmt):
        return fmt(row[name]) if name in row else "-"

    for c in (16, 64):
        lines.append(f"| chat req/s, c={c} | " + " | ".join(
            cell(sc[f"throughput_c{c}"], n, lambda r: f"{r['rps']:,.0f}") for n in names) + " |")
        lines.append(f"| server CPU us/request, c={c} | " + " | ".join(
            cell(sc[f"throughput_c{c}"], n, lambda r: f"{r.get('server_cpu_us_per_request', '-')}") for n in names) + " |")
        lines.append(f"| chat p50 / p99 ms, c={c} | " + " | ".join(
            cell(sc[f"throughput_c{c}"], n, lambda r: f"{r['latency_ms']['p50']:.2f} / {r['latency_ms']['p99']:.2f}")
            for n in names) + " |")
    lines.append("| added latency p50 / p99 ms, c=1 | " + " | ".join(
        cell(sc["added_latency"], n, lambda r: f"{r['added_ms']['p50']:.3f} / {r['added_ms']['p99']:.3f}")
        for n in names) + " |")
    lines.append("| 1000 streams: wall s (errors) | " + " | ".join(
        cell(sc["streams"], n, lambda r: f"{r['wall_s']:.2f} ({r['errors']})") for n in names) + " |")
    lines.append("| 1000 streams: first event p99 ms | " + " | ".join(
        cell(sc["streams"], n, lambda r: f"{r['ttfe_ms']['p99']:.0f}") for n in names) + " |")
    lines.append("| 1000 streams: worker RSS KB per stream | " + " | ".join(
        cell(sc["streams"], n, lambda r: f"{r.get('rss_kb_per_stream', '-')}") for n in names) + " |")
    lines.append("| relay events/s | " + " | ".join(
        cell(sc["relay"], n, lambda r: f"{r['events_per_s']:,.0f}") for n in names) + " |")
    lines.append("")
    lines.append("| target | value | goal | pass |")
    lines.append("|---|---|---|---|")
    for name, t in results["targets"].items():
        mark = {True: "yes", False: "NO", None: "n/a"}[t["pass"]]
        lines.append(f"| {name} | {t['value']} | {t['target']} | {mark} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, no LiteLLM streams (under ~3 min)")
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS", help="add a mixed-traffic soak")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--json-only", action="store_true", help="print only the final table")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run(args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; load average "
          f"{results['machine']['loadavg_start']} -> {results['machine']['loadavg_end']}; {results['elapsed_s']} s")
    for note in results["notes"]:
        print(f"note: {note}")
    print(table(results))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
