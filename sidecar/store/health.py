"""Whether the store answers: the readiness check, and one state shared by everything that touches the store.

While the database is unreachable every request that needs it would fail the same way; the sidecar
answers those with 503 ``store_unavailable`` and logs the outage twice, when it starts and when it
ends, instead of once per request with a traceback. The spend writer keeps its records in memory
and retries meanwhile (``accounting/spend.py``), so none is lost.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from sidecar.clock import SYSTEM, Clock
from sidecar.core.errors import ServiceUnavailable

log = logging.getLogger("sidecar.store")
# What the driver or the pool raise when the database cannot be reached or stops answering.
STORE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class StoreWatch:
    """The store's state as this process last saw it; ``down`` and ``up`` log only when it changes."""

    def __init__(self, engine: sa.Engine, clock: Clock = SYSTEM):
        self.engine, self.clock = engine, clock
        self.name = engine.url.render_as_string(hide_password=True)
        self.down_since: float | None = None
        self._lock = threading.Lock()

    def down(self, exc: BaseException) -> StoreUnavailable:
        """Note a failure; returns the error to answer the request with."""
        with self._lock:
            first = self.down_since is None
            if first:
                self.down_since = self.clock.monotonic()
        if first:
            log.error("store unavailable (%s): %s; requests that need it get 503 store_unavailable, "
                      "spend records are kept in memory until it is back", self.name, _reason(exc))
        return StoreUnavailable("The sidecar's database is unavailable; retry shortly.")

    def up(self) -> None:
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            log.info("store available again (%s) after %.1f s", self.name, self.clock.monotonic() - since)

    def check(self) -> str | None:
        """``SELECT 1``: None when the store answers, else why not (for the readiness answer)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except STORE_ERRORS as exc:
            self.down(exc)
            return _reason(exc)
        self.up()
        return None


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message: what failed, without a traceback or a password."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0][:200]}" if text else type(orig).__name__
