"""gunicorn settings for the sidecar, every production choice in one readable place.

Used by the Procfile (``-c python:sidecar.gunicorn_conf``) and by ``mistral-sidecar serve``.
"""

from __future__ import annotations

import gc
import os
import resource
import sys

from sidecar import heap, startup
from sidecar.accounting import metrics
from sidecar.core.config import ConfigError
from sidecar.core.validation import load_compiled
from sidecar.settings import Settings, SettingsError

try:  # a bad setting is one clear line, not gunicorn's traceback around it
    _settings = Settings.from_env()
except (SettingsError, ConfigError) as error:
    startup.refuse(error)

# Metrics are written per worker into this directory and merged on scrape; it must exist in the
# environment before any worker starts (prometheus_client reads it at import). A directory the
# sidecar made for itself is removed at exit; an operator's own is emptied of stale files.
_metrics_dir = metrics.prepare_multiproc_dir(os.environ)

# Where to listen: loopback by default; the Procfile serves with --host 0.0.0.0 (and PORT).
bind = [f"{_settings.host}:{_settings.port}"]

# gevent: each open stream is a greenlet, not a thread or a process, so one worker holds
# thousands of concurrent SSE relays; sync workers would hold one request each and be killed
# by the 30 s worker timeout in the middle of a long stream.
# The sidecar's worker is gunicorn's gevent worker plus deadlines on slow clients (sidecar/worker.py).
worker_class = "sidecar.worker.SidecarWorker"
workers = _settings.workers  # one per core: the sidecar is CPU-bound only in JSON and framing


def _connection_cap(wanted: int) -> tuple[int, str]:
    """Connections one worker may hold (``SIDECAR_WORKER_CONNECTIONS``), within its file-descriptor limit,
    and how the start-up summary says it.

    Each connection is one descriptor, and each may open one upstream connection: the soft limit is
    raised to the hard one, and if that is still short the cap is lowered; the summary says so (once,
    from the master), so a refusal to start stays the one line it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * wanted + 256  # a client socket and an upstream socket each, plus the store and logs
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        capped = max(100, (soft - 256) // 2)
        return capped, (f"{capped} connections per worker, not SIDECAR_WORKER_CONNECTIONS={wanted}: the open-file limit "
                        f"is {soft} (ulimit -n); raise it to {needed} to allow them")
    return wanted, f"{wanted} connections per worker"


# A waiting connection costs a greenlet and a socket (about 12 KB, see README), so the cap is far above any
# real load; a worker that reaches it sheds the connection waiting longest on its client (sidecar/worker.py),
# so a flood of slow clients cannot take every slot.
worker_connections, _connections_said = _connection_cap(_settings.worker_connections)
# Connections the kernel holds before a worker accepts them (capped by net.core.somaxconn): under a flood
# of reconnecting clients a short queue drops a real client's SYN, which then waits 1-3 s to retry.
backlog = 16384

# The heartbeat runs in its own greenlet, so this only catches a worker that is truly stuck.
timeout = 60
# SIGTERM: stop accepting, let in-flight requests and streams finish for this long.
graceful_timeout = int(_settings.graceful_timeout)
# Idle kept-alive connections: longer than typical client pools keep them, so reuse wins.
keepalive = max(1, int(_settings.keepalive_timeout))  # the worker applies the exact value
max_requests = _settings.max_requests  # 0: never recycle; set to bound slow leaks
max_requests_jitter = max(1, _settings.max_requests // 10) if _settings.max_requests else 0

# The sidecar writes its own JSON line per request; gunicorn's access log would double it.
accesslog = None
errorlog = "-"
loglevel = "info"
proc_name = "mistral-sidecar"
# Never import the app in the master: gevent must patch sockets before requests is imported.
preload_app = False


def on_starting(server) -> None:
    """In the master, once: refuse settings that cannot work (an open proxy beyond loopback spends your
    money), migrate the store before any worker opens it, then say what is running."""
    try:
        startup.check(_settings, server.cfg.bind)
        with startup.migrating():
            # The spec table and validators (pure core: nothing gevent must patch first), built here while
            # the store migrates and inherited by every worker fork; frozen below so the workers' collector
            # never writes to, and so copies, those pages.
            load_compiled(_settings.spec_path)
    except startup.StartupError as error:
        metrics.remove_multiproc_dir(_metrics_dir)
        startup.refuse(error)
    heap.trim()  # what compiling left free goes back to the kernel, not into every worker's memory
    gc.freeze()
    print(startup.summary(_settings, server.cfg.bind, server.cfg.workers, connections=_connections_said),
          file=sys.stderr, flush=True)


# OpenTelemetry's exporters (accounting/telemetry.py) start in each worker when it builds its app: after
# the fork, like a post_fork hook, but also after gevent has patched the worker (post_fork runs before the
# patch, and an exporter thread started there would hold unpatched locks and sockets).


def post_worker_init(worker) -> None:
    """The worker's app is built: freeze it out of the collector, and on SIGTERM cut the streams still
    open just before the grace period ends.

    Freezing: the app a worker builds (Flask, routes, prices, pools: ~140,000 objects) lives as long
    as the worker, yet every full collection walked it again, about 50-100 ms with the whole worker
    stopped, the p99 tail of a loaded worker. Frozen, a full collection walks only what came after
    (0.1 ms). Cutting streams: each ends with an SSE ``error`` event and gets its (estimated) record,
    instead of its greenlet being killed mid-write."""
    import signal

    import gevent

    from sidecar.web.relay import cut_open_streams

    previous = signal.getsignal(signal.SIGTERM)
    grace = worker.cfg.graceful_timeout
    cut_after = max(grace - 2.0, grace * 0.5)

    def on_term(signum, frame) -> None:
        gevent.spawn_later(cut_after, cut_open_streams)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    gc.freeze()


def worker_exit(server, worker) -> None:
    """Flush what accounting still holds before the worker goes (recycling or SIGTERM)."""
    from sidecar import shutdown_hooks

    for hook in shutdown_hooks():
        hook()


def child_exit(server, worker) -> None:
    """A worker died or was recycled: its live gauges (open streams) stop counting."""
    metrics.mark_process_dead(worker.pid, _settings.metrics_dir)


def on_exit(server) -> None:
    metrics.remove_multiproc_dir(_metrics_dir)
