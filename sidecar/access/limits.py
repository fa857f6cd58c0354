"""Admission for virtual keys: budget, rpm, tpm and parallel limits, shared by every worker.

Counters live outside the worker so that N workers enforce one limit, not N: ``LocalCounters`` is a
SQLite file shared by the workers of one machine, ``RedisCounters`` (``REDIS_URL``) is shared by every
instance. Each request of a virtual key is admitted there in one step that reserves its worst-case
cost and tokens, settled to the real ones when it ends, and kept until its spend record is committed;
``admission.py`` decides, the counters only read and write, and a refusal becomes an error here.
Each process beats every ``BEAT_SECONDS``; the in-flight requests of a process silent for
``OWNER_TTL`` stop holding their key's parallel slots, and the admissions of a dead one are swept
into spend records at their estimated cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import uuid
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from sidecar.access.admission import (
    Ask,
    Counters,
    Orphan,
    OverBudget,
    OverParallel,
    OverRpm,
    OverTpm,
    Refusal,
    Stale,
)
from sidecar.access.journal import Journal
from sidecar.access.keys import current_spend, iso
from sidecar.access.local_counters import LocalCounters
from sidecar.access.redis_counters import RedisCounters
from sidecar.clock import SYSTEM, Clock
from sidecar.core.errors import BudgetExceeded, RateLimited, ServiceUnavailable
from sidecar.core.exchange import new_id
from sidecar.store import database_url

__all__ = ["Limits", "LocalCounters", "RedisCounters", "Orphan", "counters_for", "local_counters_path"]

WINDOW = 60.0  # seconds: rpm and tpm are per sliding minute
BEAT_SECONDS = 2.0
# A process that has not beaten for this long holds no parallel slot: a SIGKILLed worker's slots are
# free within OWNER_TTL + one admission, well inside 10 s. Three missed beats, so a worker busy for
# a moment is not taken for dead.
OWNER_TTL = 6.0
# A silent owner on another host is swept only after this long: beyond gunicorn's worker timeout
# (60 s), by which a stuck worker has been killed, so a slow one never sees its admissions swept.
SWEEP_GRACE = 75.0
# Seconds a worker trusts the committed spend it read for a key without re-reading it (an operator's
# change, a new budget period); written records move a key's epoch and are seen at once.
SPEND_TTL = 0.5
HOST = socket.gethostname()
log = logging.getLogger("sidecar.access.limits")


def _no_release() -> None:
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Limits:
    """``admit(ex, cost, tokens)`` refuses or admits an exchange and returns the callable that gives its
    admission back if the exchange will never be recorded; ``record`` (an accountant sink) settles it."""

    def __init__(self, counters: Counters, *, clock: Clock = SYSTEM, exempt=frozenset(), spend=None, journal=None,
                 store: str = ""):
        self.counters = counters
        # ``store_tag`` of the database spend records go to: written into each admission's record, so a
        # sweep claims only its own database's admissions ("": any, for tests of the counters alone).
        self.store = store
        # journal.Journal: where the admissions of callers without limits are remembered (one write
        # each, nothing shared); None: in the counters like the rest (tests of the counters alone).
        self.journal = journal
        # key hash -> committed spend this period, read fresh (spend.SpendLog.committed_spend); None:
        # the cached key row's spend (tests without a store).
        self.spend = spend
        self.clock = clock
        # Operation ids never limited: the sidecar's own routes, so a key over budget can still read its info.
        self.exempt = exempt
        self.owner = uuid.uuid4().hex
        self.on_orphans = None  # callable(list[Orphan]): writes a dead worker's admissions as records
        self._committed: dict[str, tuple[int, float, float]] = {}  # key -> (epoch, spend, monotonic read)
        self._beating = 0  # pid whose heartbeat runs
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- admission --------------------------------------------------------------------------------------
    def admit(self, ex, cost: float = 0.0, tokens: int = 0):
        caller = ex.caller
        if caller is None or ex.operation_id in self.exempt:
            return _no_release
        limits = (caller.limits or {}) if caller.is_virtual else {}
        self.start()
        budget = limits.get("max_budget")
        ask = Ask(id=new_id(), key=caller.key_hash, owner=self.owner, cost=float(cost), tokens=int(tokens),
                  record=_admission_record(ex, cost, tokens, self.store), budget=budget, tpm=limits.get("tpm_limit"),
                  parallel=limits.get("max_parallel_requests"), rpm=limits.get("rpm_limit"))
        if self.journal is not None and not ask.limited:
            try:
                self.journal.admit(ask.id, ask.record)  # nothing to share: remembered, not counted
            except OSError as exc:  # not forwarded unless it would be recorded even if this worker died
                log.error("admission journal %s cannot be written (%s): requests are refused with 503",
                          self.journal.folder, exc)
                raise ServiceUnavailable(f"The admission journal cannot be written: {type(exc).__name__}.",
                                         code="journal_unavailable") from None
            ex.admission, ex.settles = ask.id, False
            return _no_release
        if not caller.is_virtual:
            return _no_release
        for attempt in range(4):
            if budget is not None:
                ask.epoch, ask.committed = self._committed_spend(caller)
                if attempt == 3:  # the key's records keep landing: take the spend just read as it is
                    ask.epoch = None
            refusal = self.counters.admit(ask, window=WINDOW)
            if not isinstance(refusal, Stale):
                break
            self._committed[caller.key_hash] = (refusal.epoch, self._read_spend(caller), self.clock.monotonic())
        if refusal is not None:
            self._refuse(refusal, ask, limits)
        ex.admission = ask.id
        ex.settles = budget is not None or ask.tpm is not None or ask.parallel is not None
        released = []

        def release() -> None:
            """The exchange's answer is over: its parallel slot is free. Its reservation stays until
            ``record`` settles it to the real cost (or, for an exchange that crashed and is never
            recorded, until its worker exits and the sweep records it at the reservation)."""
            if not released and not ex.finished:
                released.append(True)
                self.counters.free(ask.id)
        return release

    def _committed_spend(self, caller) -> tuple[int | None, float]:
        if self.spend is None:  # no store: the key row the caller carries is the whole truth
            return None, current_spend(caller.limits or {}, self.clock.wall())
        hit = self._committed.get(caller.key_hash)
        if hit is None or self.clock.monotonic() - hit[2] >= SPEND_TTL:
            return -1, 0.0  # no epoch is -1: the counters answer "stale" with the current one
        return hit[0], hit[1]

    def _read_spend(self, caller) -> float:
        if self.spend is not None:
            return self.spend(caller.key_hash)
        return current_spend(caller.limits or {}, self.clock.wall())

    @staticmethod
    def _refuse(refusal: Refusal, ask: Ask, limits: dict):
        match refusal:
            case OverTpm(used, wait):
                raise RateLimited(f"Rate limit: this key used {used} of its {ask.tpm} tokens per minute "
                                  f"(this request reserves {ask.tokens}).",
                                  code="tpm_limit_exceeded", retry_after=_ceil(wait))
            case OverParallel():
                raise RateLimited(f"Parallel limit: this key may have {ask.parallel} requests in flight.",
                                  code="parallel_limit_exceeded", retry_after=1)
            case OverRpm(wait):
                raise RateLimited(f"Rate limit: this key may send {ask.rpm} requests per minute.",
                                  code="rpm_limit_exceeded", retry_after=_ceil(wait))
        # OverBudget, or Stale (never after the last attempt, which takes the spend as it is)
        spend = refusal.spend if isinstance(refusal, OverBudget) else ask.committed
        period = f" for the period ending {iso(limits['budget_reset_at'])}" if limits.get("budget_duration") else ""
        reserve = f" This request reserves up to ${ask.cost:.6f}." if ask.cost else ""
        raise BudgetExceeded(f"Budget exceeded: this key has spent ${spend:.6f} of its max_budget "
                             f"${ask.budget:.6f}{period}, counting requests in flight.{reserve}")

    def record(self, ex) -> None:
        """Accountant sink: the exchange ended, its real cost and tokens replace its reservation."""
        if ex.admission is None:
            return
        usage = ex.usage
        tokens = getattr(usage, "total_tokens", 0) or (
            (getattr(usage, "prompt_tokens", 0) or 0) + (getattr(usage, "completion_tokens", 0) or 0))
        if not ex.settles:
            if self.journal is not None:
                self.journal.settle(ex.admission, float(ex.cost or 0.0), int(tokens))
            return
        tpm = (ex.caller.limits or {}).get("tpm_limit") is not None
        self.counters.settle(ex.admission, float(ex.cost or 0.0), int(tokens), tpm, WINDOW)

    def recorded(self, admissions: list[str], keys: set[str]) -> None:
        """Spend-log hook: these records are committed, so their admissions stop counting on their own.

        The keys' epochs move only with admissions the counters hold: a key with a budget is always
        admitted there, and only such keys cache their committed spend."""
        if self.journal is not None:
            admissions = self.journal.recorded(admissions)
            if not admissions:
                return
        if admissions or keys:
            self.counters.recorded(admissions, keys)

    def spend_changed(self, key_hash: str) -> None:
        """An operator set a key's spend: every worker re-reads it at its next admission."""
        self._committed.pop(key_hash, None)
        self.counters.bump(key_hash)

    def state(self, key_hash: str, limits: dict) -> dict:
        """What the key used of its rpm and tpm in the current minute (for ``/key/info``), read, not taken."""
        shown = {}
        for kind in ("rpm", "tpm"):
            limit = limits.get(f"{kind}_limit")
            used = self.counters.total(f"{kind}:{key_hash}", WINDOW)[0] if limit is not None else None
            shown[kind] = {"used": used, "limit": limit, "window_seconds": WINDOW}
        return shown

    # -- heartbeat and sweep ----------------------------------------------------------------------------
    def start(self) -> None:
        """Beat now and keep beating (once per process: a forked worker starts its own)."""
        if self._beating == os.getpid():
            return
        with self._lock:
            if self._beating == os.getpid():
                return
            self.counters.beat(self.owner, os.getpid(), HOST, OWNER_TTL)
            self._beating = os.getpid()
            self._stop.clear()
            threading.Thread(target=self._run, name="limits-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.counters.beat(self.owner, os.getpid(), HOST, OWNER_TTL)
                self.sweep()
            except Exception:  # the limiter may be down for a while; admissions then fail loudly themselves
                log.exception("limits heartbeat failed")
            self._stop.wait(BEAT_SECONDS)

    def sweep(self) -> list[Orphan]:
        """Claim dead workers' admissions and hand them to ``on_orphans`` (the spend log): those in the
        counters, then those in the journals (a journal is deleted only once ``on_orphans`` took it)."""
        if self.on_orphans is None:
            return []
        return self._sweep(self.counters, self.journal)

    def _sweep(self, counters: Counters | None, journal: Journal | None) -> list[Orphan]:
        orphans = [] if counters is None else counters.sweep(
            host=HOST, grace=SWEEP_GRACE, alive=_alive, mine=self.owner, store=self.store)
        if orphans:
            self._recover(orphans)
        if journal is not None:
            orphans += journal.sweep(self._recover, self.store)
        return orphans

    def _recover(self, orphans: list[Orphan]) -> None:
        log.warning("recording %d requests left unsettled by a dead worker at their estimated cost", len(orphans))
        self.on_orphans(orphans)

    def sweep_at_start(self) -> list[Orphan]:
        """``sweep`` when a worker starts; a limiter that is down then must not stop the worker (readiness
        says it is down, limited keys get 503), and the heartbeat sweeps once it answers again."""
        try:
            return self.sweep()
        except (*self.counters.errors, OSError) as exc:
            log.warning("limiter unavailable at start (%s): dead workers' admissions are swept once it answers",
                        type(exc).__name__)
            return []

    def sweep_moved(self, counters_path: Path, journal_folder: Path) -> list[Orphan]:
        """Once at start: what dead workers left in local files this store no longer uses (``moved_paths``),
        so moving them loses no record. A live process's admissions there are left to its own siblings."""
        if self.on_orphans is None:
            return []
        try:
            return self._sweep(LocalCounters(counters_path, self.clock) if counters_path.is_file() else None,
                               Journal(journal_folder))
        except (sqlite3.Error, OSError) as exc:
            log.warning("cannot sweep the local files of before %s (%s): what dead workers left there stays",
                        counters_path, type(exc).__name__)
            return []

    def close(self) -> None:
        """Stop beating and leave: what this process still holds is swept by the others."""
        self._stop.set()
        if self._beating == os.getpid():
            self._beating = 0
            try:
                self.counters.leave(self.owner)
            except Exception:
                log.exception("could not leave the limits owners at exit")
        if self.journal is not None:
            self.journal.close()


def _admission_record(ex, cost: float, tokens: int, store: str) -> str:
    """What a sweep needs to write this request's spend record if its worker dies (no secret: the key's hash)."""
    caller = ex.caller
    return json.dumps({
        "ts": ex.wall_time, "request_id": ex.request_id, "key_hash": caller.key_hash,
        "key_alias": getattr(caller, "alias", None), "end_user": ex.end_user, "model": ex.model,
        "operation": ex.operation_id, "route": ex.route, "streamed": bool(ex.stream),
        "budget_duration": (caller.limits or {}).get("budget_duration"), "cost": cost, "tokens": tokens, "store": store or None,
    }, separators=(",", ":"))


def _ceil(seconds: float) -> int:
    return max(1, int(-(-seconds // 1)))


def journal_path(settings) -> Path:
    """The folder of the admission journals, beside the limits file (one per machine, like it); not
    ``-journal``, which is SQLite's own rollback journal beside a database file."""
    return Path(str(local_counters_path(settings))[: -len("-limits")] + "-admissions")


def moved_paths(settings) -> tuple[Path, Path] | None:
    """Where a PostgreSQL store's limits file and journals were before they were named after its database
    (``<SIDECAR_DB_PATH>-limits``, ``-admissions``): swept once at start (``Limits.sweep_moved``)."""
    if _on_sqlite(settings):
        return None
    return Path(f"{settings.db_path}-limits"), Path(f"{settings.db_path}-admissions")


def _on_sqlite(settings) -> bool:
    url = settings.database_url or ""
    return not url or url.startswith("sqlite:")


def local_counters_path(settings) -> Path:
    """Next to the SQLite store; for a PostgreSQL store, next to ``SIDECAR_DB_PATH`` and named after the
    database, so that two sidecars of one machine on different databases never sweep each other's
    admissions into their own spend log."""
    if _on_sqlite(settings):
        url = settings.database_url or ""
        return Path((url[len("sqlite:///"):] or str(settings.db_path)) + "-limits")
    return Path(f"{settings.db_path}-{store_tag(settings)}-limits")


_PICKS_DATABASE = frozenset({"host", "hostaddr", "port", "dbname", "service", "options"})  # libpq's


def store_tag(settings) -> str:
    """12 hex digits naming the database of the spend records: a hash of what in its URL picks it (a SQLite
    file's resolved path; PostgreSQL's user, host, port, database and the query options that pick a host,
    database or schema), so a new password, driver, ``sslmode`` or spelling of the default port is the
    same database, and no secret goes into the hash."""
    p = make_url(database_url(settings))
    backend, name = p.get_backend_name(), p.database
    if backend == "sqlite":
        if name and name != ":memory:" and not name.startswith("file:"):
            name = str(Path(name).expanduser().resolve())
        plain = URL.create(backend, database=name)
    else:
        query = {k: p.query[k] for k in sorted(p.query) if k in _PICKS_DATABASE}
        port = p.port or (5432 if backend == "postgresql" else None)
        plain = URL.create(backend, p.username, None, (p.host or "").lower() or None, port, name, query)
    return hashlib.sha256(plain.render_as_string(hide_password=False).encode()).hexdigest()[:12]


def counters_for(settings, clock: Clock = SYSTEM):
    """Redis's counters read Redis's own clock; the local ones read ``clock``."""
    if settings.redis_url:
        return RedisCounters(settings.redis_url)
    return LocalCounters(local_counters_path(settings), clock)
