"""Hard time bounds on blocking work, where the process can interrupt it.

Under gunicorn's gevent worker (the production server) every socket wait is a greenlet switch, so a
``gevent.Timeout`` interrupts a call however its bytes trickle in. In other servers (tests' threaded
servers) nothing can interrupt a blocking read, so ``bounded`` does nothing and callers also check
``Deadline.passed`` between the reads they make themselves.
"""

from __future__ import annotations

import contextlib

from sidecar.clock import SYSTEM, Clock


class DeadlineExceeded(Exception):
    """Raised inside a ``bounded`` block when its time is up."""


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("socket")


class Deadline:
    """A moment ``seconds`` from now on the app's monotonic clock."""

    __slots__ = ("seconds", "at", "clock")

    def __init__(self, seconds: float, clock: Clock = SYSTEM):
        self.seconds, self.clock = seconds, clock
        self.at = clock.monotonic() + seconds

    def passed(self) -> bool:
        return self.clock.monotonic() >= self.at

    def bounded(self):
        """A context raising ``DeadlineExceeded`` where it blocks past the deadline (under gevent)."""
        if not _gevent_patched():
            return contextlib.nullcontext()
        import gevent

        return gevent.Timeout(max(self.at - self.clock.monotonic(), 0.001), DeadlineExceeded())
