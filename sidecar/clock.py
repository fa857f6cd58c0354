"""The one clock: wall time (timestamps, expiries, windows) and monotonic time (latencies, caches),
built by ``create_app`` and handed to everything that reads time, so a test moves time for all at once.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch: what is stored, compared with stored times, or shown."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never jump: durations and cache ages."""

    def sleep(self, seconds: float) -> None:
        """Wait (upstream retries): gevent's cooperative sleep when gevent patched ``time``."""


class SystemClock:
    """The machine's clocks. Looked up at each call, so gevent's patched ``time.sleep`` is the one used."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM = SystemClock()


class FakeClock:
    """A clock that stands still until a test ``advance``s it (both readings together); ``sleep``
    advances it too and is remembered in ``slept``. Starts at the real wall time so stored times look real."""

    def __init__(self, wall: float | None = None, monotonic: float = 1000.0):
        self._wall = time.time() if wall is None else wall
        self._monotonic = monotonic
        self.slept: list[float] = []

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
