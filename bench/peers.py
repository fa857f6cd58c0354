"""The servers the benchmark compares, each started the way its users run it, and what /proc says of them.

A ``Side`` is one server under test: where to call it, the headers it needs and the pid whose
process tree is charged for its CPU and memory. Every server listens on 127.0.0.1 only and runs
in its own process group, which is ended (SIGTERM, then SIGKILL) when the benchmark leaves it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
MASTER = "sk-bench-master"
LITELLM_BIN = Path(os.environ.get("LITELLM_BIN", "/tmp/litellm-venv/bin/litellm"))
LITELLM_VERSION = "1.108.7"  # the only LiteLLM the benchmark runs (bench/litellm-requirements.txt)
PORTKEY_SERVER = BENCH / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    """One server under test; ``prefix`` goes before Mistral's path (LiteLLM's pass-through: /mistral)."""

    name: str
    url: str
    pid: int
    headers: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    startup_s: float | None = None  # wall seconds to ready: a loaded machine stretches it
    startup_cpu_s: float | None = None  # CPU seconds of its processes when first seen ready (or soon after)
    forwards_fake_headers: bool = True  # passes x-fake-* on to the upstream (streams and relay need it)

    def endpoint(self, path: str) -> str:
        return self.url + self.prefix + path


# -- processes ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60.0, path: str | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if path is None:
                with contextlib.closing(socket.create_connection(("127.0.0.1", port), 0.5)):
                    return
            elif requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500:
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


@contextlib.contextmanager
def process_group(argv, *, env=None, log=None, what="process", port=None, health=None, timeout=60.0, cwd=ROOT):
    """Run ``argv`` in its own session; on exit SIGTERM (then SIGKILL) that group, which we started.
    Yields the process and the seconds it took to come up (to answer ``health``, else to listen)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    argv = [str(a) for a in argv]
    started = time.monotonic()
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd, stdout=out,
                               stderr=subprocess.STDOUT if log else subprocess.DEVNULL, start_new_session=True)
    try:
        if port is not None:
            wait_port(port, process, what, timeout, health)
        yield process, round(time.monotonic() - started, 2)
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


def shared_kb(pids) -> dict[str, int]:
    """PSS (shared pages split among their sharers) and USS (private pages) summed over ``pids``:
    what forked workers cost together, which RSS (counting shared pages in full) overstates."""
    total = {"pss_kb": 0, "uss_kb": 0}
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name == "Pss":
                    total["pss_kb"] += int(rest.split()[0])
                elif name in ("Private_Clean", "Private_Dirty"):
                    total["uss_kb"] += int(rest.split()[0])
    return total


def cpu_seconds(pids) -> float:
    """User + system CPU time of ``pids`` so far (from /proc; a process that left counts nothing)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def workers(master: int) -> list[int]:
    """The processes that serve requests: the children of a pre-forking master, else the process itself."""
    below = [p for p in tree_pids(master) if p != master]
    return below or [master]


class RssSampler:
    """Samples the summed RSS of the worker processes under ``master`` every 20 ms."""

    def __init__(self, master: int):
        self.pids = workers(master)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kb(self.pids))

    def __enter__(self):
        self.idle = rss_kb(self.pids)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- the peers ---------------------------------------------------------------------------------------------
def floor(stack: contextlib.ExitStack, direct: str, tmp: Path) -> Side:
    port = free_port()
    proc, up = stack.enter_context(process_group(
        [PY, "-m", "gunicorn", "bench.floor:app", "-k", "gevent", "-w", "2", "--worker-connections", "4000",
         "--keep-alive", "75", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        env={"FLOOR_UPSTREAM": direct}, what="floor proxy", port=port, log=tmp / "floor.log"))
    return Side("floor", f"http://127.0.0.1:{port}", proc.pid, startup_s=up)


STACK_FLOORS = ("flask+requests", "flask+urllib3", "wsgi+requests")


def stack_floor(stack: contextlib.ExitStack, direct: str, tmp: Path, variant: str) -> Side:
    """``stack_floor.py`` as ``variant``: what Flask and requests cost a proxy before any feature."""
    port = free_port()
    proc, up = stack.enter_context(process_group(
        [PY, "-m", "gunicorn", "bench.stack_floor:app", "-k", "gevent", "-w", "2", "--worker-connections", "4000",
         "--keep-alive", "75", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        env={"FLOOR_UPSTREAM": direct, "STACK_FLOOR": variant}, what=variant, port=port,
        log=tmp / f"{variant.replace('+', '-')}.log"))
    return Side(variant, f"http://127.0.0.1:{port}", proc.pid, startup_s=up)


def portkey(stack: contextlib.ExitStack, direct: str, tmp: Path, notes: list[str]) -> Side | None:
    """Portkey's Node gateway (one process, as its start-server runs), calling the fake as Mistral."""
    if not PORTKEY_SERVER.exists():
        notes.append("portkey not run (cd bench/portkey && npm ci)")
        return None
    port = free_port()
    try:
        proc, up = stack.enter_context(process_group(
            ["node", "--require", BENCH / "portkey" / "loopback.cjs", PORTKEY_SERVER, f"--port={port}", "--headless"],
            env={"NODE_ENV": "production"}, what="portkey", port=port, log=tmp / "portkey.log",
            cwd=BENCH / "portkey"))
    except RuntimeError as exc:
        notes.append(f"portkey did not start: {exc} (log: {tmp / 'portkey.log'})")
        return None
    version = subprocess.run(["node", "-p", "require('@portkey-ai/gateway/package.json').version"],
                             cwd=BENCH / "portkey", capture_output=True, text=True).stdout.strip()
    notes.append(f"portkey {version}: one Node process (its start-server), provider mistral-ai, custom host "
                 "= the fake; Mistral's key passed by the client, as Portkey's open-source gateway is used")
    headers = {"x-portkey-provider": "mistral-ai", "x-portkey-custom-host": direct + "/v1",
               "Authorization": "Bearer sk-fake",
               "x-portkey-forward-headers": "x-fake-events,x-fake-interval-ms,x-fake-latency-ms"}
    return Side("portkey", f"http://127.0.0.1:{port}", proc.pid, headers, startup_s=up)


def litellm(stack: contextlib.ExitStack, direct: str, tmp: Path, notes: list[str]) -> Side | None:
    """LiteLLM's proxy (2 workers, no database) through its Mistral pass-through (/mistral/...)."""
    if not LITELLM_BIN.exists():
        notes.append("litellm not run (python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install "
                     "-r bench/litellm-requirements.txt, or set LITELLM_BIN)")
        return None
    version = subprocess.run([str(LITELLM_BIN.parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip()
    if version != LITELLM_VERSION:
        notes.append(f"litellm not run: {LITELLM_BIN} has {version or 'no litellm'}, the benchmark pins "
                     f"{LITELLM_VERSION}")
        return None
    port = free_port()
    (tmp / "litellm.yaml").write_text(f"litellm_settings:\n  telemetry: false\ngeneral_settings:\n  master_key: {MASTER}\n")
    try:
        proc, up = stack.enter_context(process_group(
            [LITELLM_BIN, "--config", tmp / "litellm.yaml", "--host", "127.0.0.1", "--port", port, "--num_workers", "2",
             # Under gunicorn: uvicorn's own supervisor kills a worker that misses its 5 s health ping, and
             # on a loaded 2-core machine every worker misses it while importing, over and over.
             "--run_gunicorn"],
            env={"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                 "DISABLE_SCHEMA_UPDATE": "True", "MISTRAL_API_BASE": direct, "MISTRAL_API_KEY": "sk-fake"},
            what="litellm", port=port, health="/health/liveliness", log=tmp / "litellm.log", timeout=300))
    except RuntimeError as exc:
        notes.append(f"litellm did not start: {exc} (log: {tmp / 'litellm.log'})")
        return None
    notes.append(f"litellm {version}: its Mistral pass-through (/mistral/...), master key, no database, 2 workers (--run_gunicorn)")
    return Side("litellm", f"http://127.0.0.1:{port}", proc.pid, {"Authorization": f"Bearer {MASTER}"},
                prefix="/mistral", startup_s=up, forwards_fake_headers=False)


@contextlib.contextmanager
def otlp_sink():
    """A loopback OTLP/HTTP endpoint that accepts and drops what it is sent (a collector that keeps up)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
