"""Real servers for end-to-end tests: the sidecar under gunicorn (its production settings)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log_path: Path | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text()[-3000:] if log_path else process.stderr.read().decode()[-3000:]
            raise RuntimeError(f"sidecar exited with {process.returncode}: {output}")
        try:
            if requests.get(url + "/health/liveliness", timeout=0.5).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("sidecar did not come up in time")


@contextlib.contextmanager
def gunicorn_sidecar(env: dict[str, str], workers: int = 1, log_path: Path | None = None, start_timeout: float = 120.0):
    """Run ``mistral-sidecar serve`` (gunicorn + gevent) on a free loopback port; yields its URL and process.

    ``start_timeout`` is generous: a loaded CI machine starts workers slowly."""
    port = free_port()
    full_env = {**os.environ, **env, "PORT": str(port), "SIDECAR_HOST": "127.0.0.1", "WEB_CONCURRENCY": str(workers)}
    stderr = open(log_path, "wb") if log_path else subprocess.PIPE
    process = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve"], cwd=ROOT, env=full_env,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log_path, timeout=start_timeout)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log_path:
            stderr.close()


def children(pid: int) -> list[int]:
    """The pids of the processes whose parent is ``pid`` (gunicorn's workers), read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)
