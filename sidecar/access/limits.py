"""Admission for virtual keys: budget, rpm, tpm and parallel limits, shared by every worker.

Counters live outside the worker so that N workers enforce one limit, not N: ``LocalCounters`` is a
SQLite file shared by the workers of one machine, ``RedisCounters`` (``REDIS_URL``) is shared by every
instance. Both keep exact sliding windows (at most ``limit`` entries per key and minute) and leases
for in-flight requests that expire on their own if a worker dies holding them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from pathlib import Path

from sidecar.access.keys import current_spend, iso
from sidecar.clock import SYSTEM, Clock
from sidecar.core.errors import BudgetExceeded, RateLimited, ServiceUnavailable

WINDOW = 60.0  # seconds: rpm and tpm are per sliding minute
log = logging.getLogger("sidecar.access.limits")


def _no_release() -> None:
    return None


class Limits:
    """``admit(ex)`` refuses or admits an exchange and returns the callable that releases it."""

    def __init__(self, counters, *, clock: Clock = SYSTEM, exempt=frozenset(), lease_seconds: float = 1200.0,
                 spend=None):
        self.counters = counters
        # key hash -> spend this period, fresh (spend.SpendLog.key_spend); None: the cached key row's spend.
        self.spend = spend
        self.clock = clock
        # Operation ids never limited: the sidecar's own routes, so a key over budget can still read its info.
        self.exempt = exempt
        # A lease outlives any sane request; it only matters when a worker dies holding one.
        self.lease_seconds = lease_seconds

    def admit(self, ex):
        caller = ex.caller
        limits = caller.limits if caller is not None else None
        if not limits or ex.operation_id in self.exempt:
            return _no_release
        self._check_budget(limits, caller.key_hash)
        tpm, parallel, rpm = limits.get("tpm_limit"), limits.get("max_parallel_requests"), limits.get("rpm_limit")
        if tpm is None and parallel is None and rpm is None:
            return _no_release
        name = caller.key_hash
        refused, detail = self.counters.admit(name, tpm=tpm, parallel=parallel, rpm=rpm, window=WINDOW,
                                              lease_seconds=self.lease_seconds)
        if refused == "tpm":
            used, oldest = detail
            raise RateLimited(f"Rate limit: this key used {used} of its {tpm} tokens per minute.",
                              code="tpm_limit_exceeded", retry_after=self._wait(oldest))
        if refused == "parallel":
            raise RateLimited(f"Parallel limit: this key may have {parallel} requests in flight.",
                              code="parallel_limit_exceeded", retry_after=1)
        if refused == "rpm":
            raise RateLimited(f"Rate limit: this key may send {rpm} requests per minute.",
                              code="rpm_limit_exceeded", retry_after=_ceil(detail))
        return self._releaser(f"parallel:{name}", detail) if detail is not None else _no_release

    def state(self, key_hash: str, limits: dict) -> dict:
        """What the key used of its rpm and tpm in the current minute (for ``/key/info``), read, not taken."""
        shown = {}
        for kind in ("rpm", "tpm"):
            limit = limits.get(f"{kind}_limit")
            used = self.counters.total(f"{kind}:{key_hash}", WINDOW)[0] if limit is not None else None
            shown[kind] = {"used": used, "limit": limit, "window_seconds": WINDOW}
        return shown

    def record(self, ex) -> None:
        """Accountant sink: count a finished exchange's tokens toward its key's tpm window."""
        caller, usage = ex.caller, ex.usage
        if caller is None or usage is None or not caller.limits or caller.limits.get("tpm_limit") is None:
            return
        tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        if tokens:
            self.counters.add(f"tpm:{caller.key_hash}", int(tokens), WINDOW)

    def _check_budget(self, limits: dict, key_hash: str) -> None:
        budget = limits.get("max_budget")
        if budget is None:
            return
        spend = self.spend(key_hash) if self.spend is not None else current_spend(limits, self.clock.wall())
        if spend >= budget:
            period = f" for the period ending {iso(limits['budget_reset_at'])}" if limits.get("budget_duration") else ""
            raise BudgetExceeded(f"Budget exceeded: this key has spent ${spend:.6f} of its max_budget "
                                 f"${budget:.6f}{period}.")

    def _releaser(self, name: str, lease: str):
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                self.counters.release(name, lease)
        return release

    def _wait(self, oldest: float | None) -> int:
        return _ceil((oldest + WINDOW - self.clock.wall()) if oldest is not None else WINDOW)


def _ceil(seconds: float) -> int:
    return max(1, int(-(-seconds // 1)))


class LocalCounters:
    """Sliding windows and leases in a SQLite file: atomic across the processes of one machine.

    Each operation is one short ``BEGIN IMMEDIATE`` transaction (tens of microseconds) whose cost does
    not grow with the traffic in the window (running totals, not sums over entries); the file holds
    only what the current minute needs, so losing it (``synchronous=OFF``) loses nothing that matters.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS window_log (name TEXT NOT NULL, ts REAL NOT NULL, weight INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ix_window_log ON window_log (name, ts)",
        "CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, name TEXT NOT NULL, expires REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ix_leases ON leases (name, expires)",
        # The running sum of each window's weights, kept with every insert and expiry, so a check
        # reads one row instead of summing every entry of the last minute (O(requests per minute)).
        "CREATE TABLE IF NOT EXISTS window_totals (name TEXT PRIMARY KEY, used INTEGER NOT NULL)",
    )

    def __init__(self, path: Path | str, clock: Clock = SYSTEM):
        self.path = str(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    def _db(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():  # never share a connection across fork
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("BEGIN IMMEDIATE")
            for statement in self.SCHEMA:
                connection.execute(statement)
            # A file from before window_totals: sum what its windows hold once (totals rows are never
            # deleted, so no rows beside a non-empty log means they were never kept).
            if connection.execute("SELECT NOT EXISTS (SELECT 1 FROM window_totals)").fetchone()[0]:
                connection.execute("INSERT INTO window_totals (name, used) "
                                   "SELECT name, SUM(weight) FROM window_log GROUP BY name")
            connection.execute("COMMIT")
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def _transaction(self, work):
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db, self.clock.wall())
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    @staticmethod
    def _window(db, name: str, now: float, window: float) -> tuple[int, float | None]:
        """Drop the entries that left the window (usually none or a few) and read its total and oldest entry."""
        cutoff = now - window
        (expired,) = db.execute("SELECT SUM(weight) FROM window_log WHERE name = ? AND ts <= ?",
                                (name, cutoff)).fetchone()
        if expired is not None:
            db.execute("DELETE FROM window_log WHERE name = ? AND ts <= ?", (name, cutoff))
            db.execute("UPDATE window_totals SET used = used - ? WHERE name = ?", (expired, name))
        found = db.execute("SELECT used FROM window_totals WHERE name = ?", (name,)).fetchone()
        (oldest,) = db.execute("SELECT MIN(ts) FROM window_log WHERE name = ?", (name,)).fetchone()
        return (int(found[0]) if found else 0), oldest

    @staticmethod
    def _hit(db, name: str, now: float, weight: int) -> None:
        db.execute("INSERT INTO window_log (name, ts, weight) VALUES (?, ?, ?)", (name, now, weight))
        db.execute("INSERT INTO window_totals (name, used) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET used = used + excluded.used", (name, weight))

    @classmethod
    def _take(cls, db, name: str, limit: int, now: float, window: float) -> float | None:
        """Record one hit if fewer than ``limit`` are in the window; else seconds until one leaves it."""
        used, oldest = cls._window(db, name, now, window)
        if used < limit:
            cls._hit(db, name, now, 1)
            return None
        return (oldest + window - now) if oldest is not None else window

    @staticmethod
    def _lease(db, name: str, limit: int, now: float, lease_seconds: float) -> str | None:
        """A new lease if fewer than ``limit`` live ones are held (expired ones are dropped first)."""
        db.execute("DELETE FROM leases WHERE name = ? AND expires <= ?", (name, now))
        (held,) = db.execute("SELECT COUNT(*) FROM leases WHERE name = ?", (name,)).fetchone()
        if held >= limit:
            return None
        lease = uuid.uuid4().hex
        db.execute("INSERT INTO leases (id, name, expires) VALUES (?, ?, ?)", (lease, name, now + lease_seconds))
        return lease

    def take(self, name: str, limit: int, window: float) -> float | None:
        return self._transaction(lambda db, now: self._take(db, name, limit, now, window))

    def total(self, name: str, window: float) -> tuple[int, float | None]:
        return self._transaction(lambda db, now: self._window(db, name, now, window))

    def add(self, name: str, weight: int, window: float) -> None:
        self._transaction(lambda db, now: self._hit(db, name, now, weight))

    def acquire(self, name: str, limit: int, lease_seconds: float) -> str | None:
        return self._transaction(lambda db, now: self._lease(db, name, limit, now, lease_seconds))

    def release(self, name: str, lease: str) -> None:
        self._transaction(lambda db, now: db.execute("DELETE FROM leases WHERE id = ?", (lease,)))

    def admit(self, name: str, *, tpm=None, parallel=None, rpm=None, window: float, lease_seconds: float):
        """The tpm check, parallel lease and rpm hit of one request in one transaction, in that order.

        Returns ``(None, lease or None)`` when admitted, else ``("tpm", (used, oldest))``,
        ``("parallel", None)`` or ``("rpm", seconds to wait)``; a refused request holds nothing.
        """
        def work(db, now):
            if tpm is not None:
                used, oldest = self._window(db, f"tpm:{name}", now, window)
                if used >= tpm:
                    return "tpm", (used, oldest)
            lease = None
            if parallel is not None:
                lease = self._lease(db, f"parallel:{name}", parallel, now, lease_seconds)
                if lease is None:
                    return "parallel", None
            if rpm is not None:
                wait = self._take(db, f"rpm:{name}", rpm, now, window)
                if wait is not None:
                    if lease is not None:
                        db.execute("DELETE FROM leases WHERE id = ?", (lease,))
                    return "rpm", wait
            return None, lease
        return self._transaction(work)


# Lua runs atomically in Redis and reads Redis's own clock, so instances with skewed clocks agree.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"
_TAKE = _NOW + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  return false
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""
_TOTAL = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local used, oldest = 0, false
for i = 1, #entries, 2 do
  used = used + tonumber(string.match(entries[i], ':(%d+)$'))
  if not oldest then oldest = entries[i + 1] end
end
return {used, oldest}
"""
_ADD = _NOW + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
"""
_ACQUIRE = _NOW + """
local limit, lease_seconds = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + lease_seconds, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(lease_seconds * 1000))
return 1
"""


class RedisCounters:
    """The same windows and leases in Redis, shared by every instance; one round trip per operation."""

    def __init__(self, url: str, prefix: str = "mistral-sidecar:"):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.errors = (redis.exceptions.RedisError,)
        self.prefix = prefix
        self._take, self._total, self._add, self._acquire = (
            self.redis.register_script(s) for s in (_TAKE, _TOTAL, _ADD, _ACQUIRE))

    def probe(self) -> str | None:
        """The readiness probe: None when Redis answers a PING, else why not."""
        try:
            self.redis.ping()
        except self.errors as exc:
            return f"Redis does not answer: {type(exc).__name__}"
        return None

    def _call(self, script, name: str, args):
        try:
            return script(keys=[self.prefix + name], args=args)
        except self.errors as exc:
            raise ServiceUnavailable(f"The shared rate limiter (Redis) is unavailable: {type(exc).__name__}.",
                                     code="limiter_unavailable") from None

    def take(self, name: str, limit: int, window: float) -> float | None:
        wait = self._call(self._take, name, [limit, window, uuid.uuid4().hex])
        return None if wait is None else float(wait)

    def total(self, name: str, window: float) -> tuple[int, float | None]:
        used, oldest = self._call(self._total, name, [window])
        return int(used), (float(oldest) if oldest else None)

    def add(self, name: str, weight: int, window: float) -> None:
        self._call(self._add, name, [f"{uuid.uuid4().hex}:{int(weight)}", window])

    def acquire(self, name: str, limit: int, lease_seconds: float) -> str | None:
        lease = uuid.uuid4().hex
        return lease if self._call(self._acquire, name, [limit, lease_seconds, lease]) else None

    def admit(self, name: str, *, tpm=None, parallel=None, rpm=None, window: float, lease_seconds: float):
        """``LocalCounters.admit`` in up to three round trips (the keys may live on different cluster slots)."""
        if tpm is not None:
            used, oldest = self.total(f"tpm:{name}", window)
            if used >= tpm:
                return "tpm", (used, oldest)
        lease = None
        if parallel is not None:
            lease = self.acquire(f"parallel:{name}", parallel, lease_seconds)
            if lease is None:
                return "parallel", None
        if rpm is not None:
            wait = self.take(f"rpm:{name}", rpm, window)
            if wait is not None:
                if lease is not None:
                    self.release(f"parallel:{name}", lease)
                return "rpm", wait
        return None, lease

    def release(self, name: str, lease: str) -> None:
        try:
            self.redis.zrem(self.prefix + name, lease)
        except self.errors as exc:  # the lease expires by itself; failing the finished response would help no one
            log.warning("could not release parallel lease %s: %s", name, type(exc).__name__)


def local_counters_path(settings) -> Path:
    """Next to the SQLite store (or ``SIDECAR_DB_PATH`` when the store is PostgreSQL)."""
    url = settings.database_url or ""
    base = url[len("sqlite:///"):] if url.startswith("sqlite:///") else str(settings.db_path)
    return Path(base + "-limits")


def counters_for(settings, clock: Clock = SYSTEM):
    """Redis's counters read Redis's own clock (see ``_NOW``); the local ones read ``clock``."""
    if settings.redis_url:
        return RedisCounters(settings.redis_url)
    return LocalCounters(local_counters_path(settings), clock)
