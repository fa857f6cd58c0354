"""The slow-header flood of the fault matrix (``bench/faults.py``), and what it costs the workers.

Thousands of connections trickle their headers and are reopened as soon as the sidecar closes them,
while two probes send a chat call a second: a kept-alive client (an SDK's pool) and one that opens a new
connection per call, which must also get through the listen queue. Measured alongside: worker memory per
held connection (before the first deadline closes any), how the connections spread over the workers, and
the workers' CPU time and the time they waited for a CPU (``/proc/<pid>/schedstat``: a busy machine shows
there, not in the flood).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import selectors
import socket
import time
from pathlib import Path

import requests

from bench.peers import rss_kb, tree_pids
from tests.servers import children

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}


def _raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def attack(url: str, count: int, seconds: float, ramped, results) -> None:
    """``count`` connections that send their headers one byte every 5 s, each reopened at once when the
    sidecar closes it; ``ramped`` is set once all are open. Runs in its own process (its busy loop must not
    slow the probes or the fake upstream)."""
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
    ramped.set()
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


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _sched(pid: int) -> tuple[float, float]:
    """Seconds ``pid`` has run on a CPU, and waited runnable for one."""
    try:
        ran, waited, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


def slow_headers(url: str, server_pid: int, count: int, seconds: float) -> dict:
    """The flood (another process) while the probes here send one chat call a second each."""
    workers = [pid for pid in tree_pids(server_pid) if not children(pid)]  # gunicorn's workers are the leaves
    load_before = os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")
    results, ramped = context.Queue(), context.Event()
    rss_before, fds_before, sched_before = rss_kb(workers), [_fds(p) for p in workers], [_sched(p) for p in workers]
    attacker = context.Process(target=attack, args=(url, count, seconds, ramped, results), daemon=True)
    attacker.start()
    ramped.wait(seconds)
    settle = time.monotonic() + 3  # until the workers accepted what the kernel queued for them
    while sum(_fds(p) for p in workers) - sum(fds_before) < 0.98 * count and time.monotonic() < settle:
        time.sleep(0.1)
    held = [_fds(p) - before for p, before in zip(workers, fds_before, strict=True)]
    rss_held = rss_kb(workers)
    kept: list[float | None] = []  # a normal client: one pooled, kept-alive connection (an SDK, requests.Session)
    fresh: list[float | None] = []  # a new connection per call: it must also get through the listen queue
    session = requests.Session()
    rss_peak = rss_held
    end = time.monotonic() + seconds - 1
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
    sched = [_sched(p) for p in workers]
    return {**stats, "kept_alive": _latencies(kept), "fresh_connection": _latencies(fresh),
            "held_per_worker": held, "kb_per_held_connection": round((rss_held - rss_before) / max(sum(held), 1), 1),
            "rss_before_kb": rss_before, "rss_held_kb": rss_held, "rss_peak_kb": rss_peak,
            "worker_cpu_s": [round(now[0] - then[0], 1) for now, then in zip(sched, sched_before, strict=True)],
            "worker_waited_for_cpu_s": [round(now[1] - then[1], 1) for now, then in zip(sched, sched_before, strict=True)],
            "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def _latencies(found: list[float | None]) -> dict:
    answered = sorted(p for p in found if p is not None)
    return {"calls": len(found), "failed": len(found) - len(answered),
            "p50_s": round(answered[len(answered) // 2], 3) if answered else None,
            "max_s": round(answered[-1], 3) if answered else None,
            "over_1s": sum(p > 1.0 for p in answered)}
