"""The durable spend log: one ``spend_logs`` row per request, written off the hot path, and its reports.

``SpendLog.record`` (an Accountant sink) only appends the row to an in-process queue; a background
writer (a greenlet under gevent, a thread otherwise) drains it in batches, inserting the rows and
adding their cost to each key's ``spend`` in the same transaction, so a key's spend always equals
the sum of its records for the period. ``close`` drains what is left; it runs from gunicorn's
``worker_exit`` hook (recycling, SIGTERM), from ``atexit`` and on graceful shutdown, after the
worker has finished its in-flight requests. A record is queued before a plain answer's body is
returned, and before a stream's ``close`` returns, so every answered request is in the log.

Budgets read ``key_spend``: the committed spend plus what this process has queued but not written.
The committed part is cached per process for ``SPEND_TTL`` seconds (see ``key_spend`` for why that is safe).
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import logging
import math
import operator
import threading
from datetime import datetime, timezone

import sqlalchemy as sa

from sidecar.access.keys import CACHE_MAX, CHARGE, charge_params
from sidecar.clock import SYSTEM, Clock
from sidecar.core.errors import BadRequest
from sidecar.core.usage import counts as usage_counts
from sidecar.store.health import STORE_ERRORS
from sidecar.store.tables import keys as keys_table
from sidecar.store.tables import spend_logs

log = logging.getLogger("sidecar.accounting.spend")
FLUSH_INTERVAL = 0.05  # seconds a record may wait in memory before the writer wakes
MAX_BATCH = 2000  # rows per transaction
# Seconds a worker trusts the committed spend it read for a key; the same bound as the key cache
# (keys.CACHE_TTL), within which every worker already sees a key's other changes.
SPEND_TTL = 0.5
# Probes and scrapes are not spend: a liveness check every few seconds would bury the real records.
UNRECORDED = frozenset({"sidecar_health_liveliness", "sidecar_health_readiness", "sidecar_metrics"})
GROUPS = ("key", "model", "deployment", "end_user", "day", "day_model")


def spend_record(ex) -> dict:
    """The ``spend_logs`` row of a finished exchange (no secret: the key appears only as its hash)."""
    return {
        "ts": ex.wall_time, "request_id": ex.request_id, "key_hash": ex.key_hash, "key_alias": ex.key_alias,
        "end_user": ex.end_user, "model": _short(ex.model), "deployment": _short(ex.deployment),
        "operation": ex.operation_id, "route": _short(ex.route, 512),
        "status": ex.status or 0,
        **usage_counts(ex.usage),
        "cost": ex.cost, "latency_ms": round(ex.latency * 1000, 3),
        "upstream_ms": round(ex.upstream_latency * 1000, 3) if ex.upstream_latency is not None else None,
        "streamed": bool(ex.stream), "error": _short(ex.error), "estimated": ex.usage is not None and ex.usage.estimated,
    }


def _short(value, size: int = 255):
    return value[:size] if isinstance(value, str) else value


class SpendLog:
    """Queue, background writer and queries over ``spend_logs``; one per app (and engine)."""

    def __init__(self, engine: sa.Engine, *, clock: Clock = SYSTEM, flush_interval: float = FLUSH_INTERVAL,
                 spend_ttl: float = SPEND_TTL, watch=None):
        self.engine = engine
        self.watch = watch  # store.health.StoreWatch: an outage is logged once, when it starts and ends
        self.clock = clock
        self.flush_interval = flush_interval
        self.spend_ttl = spend_ttl
        self._queue: collections.deque = collections.deque()
        self._pending_cost: dict[str, float] = {}  # key hash -> queued, unwritten cost
        # key hash -> (monotonic time read, committed spend, budget_reset_at)
        self._committed: dict[str, tuple[float, float, float | None]] = {}
        self._cost_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time; readers of key spend see no half-flush
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        # callable(admission ids, key hashes) run after each committed batch (limits.Limits.recorded)
        self.on_committed = None
        atexit.register(self.close)

    # -- the sink (hot path) --------------------------------------------------------------------------
    def record(self, ex) -> None:
        if ex.operation_id in UNRECORDED:
            return
        row = spend_record(ex)
        caller = ex.caller
        charge = None
        if ex.cost and caller is not None and caller.is_virtual:
            charge = (caller.key_hash, ex.cost, (caller.limits or {}).get("budget_duration"))
            with self._cost_lock:
                self._pending_cost[caller.key_hash] = self._pending_cost.get(caller.key_hash, 0.0) + ex.cost
        self._queue.append((row, charge, ex.admission))
        if self._writer is None and not self._closed:
            self._start_writer()

    def recover(self, orphans) -> None:
        """Records for admissions a dead worker left (``limits.Orphan``), at their settled cost, or at
        their reservation (``estimated``) when the worker died before the answer ended. Skips any whose
        record was committed before the worker died (it died between the commit and the cleanup)."""
        for orphan in orphans:
            saved = json.loads(orphan.record)
            with self.engine.connect() as connection:
                if connection.execute(sa.select(spend_logs.c.id).where(
                        spend_logs.c.ts == saved["ts"], spend_logs.c.request_id == saved["request_id"])).first():
                    self._queue.append((None, None, orphan.id))
                    continue
            row = {name: None for name in ROW_COLUMNS}
            row.update({name: saved.get(name) for name in ("ts", "request_id", "key_hash", "key_alias", "end_user",
                                                           "model", "operation", "route", "streamed")})
            row.update(status=0, streamed=bool(saved.get("streamed")), cost=orphan.amount,
                       total_tokens=orphan.tokens or None, estimated=not orphan.settled,
                       error="worker died before its record was written")
            row["model"], row["route"] = _short(row["model"]), _short(row["route"], 512)
            charge = (orphan.key, orphan.amount, saved.get("budget_duration")) if orphan.amount else None
            if charge is not None:
                with self._cost_lock:
                    self._pending_cost[orphan.key] = self._pending_cost.get(orphan.key, 0.0) + orphan.amount
            self._queue.append((row, charge, orphan.id))
        if self._writer is None and not self._closed:
            self._start_writer()

    def _start_writer(self) -> None:
        with self._cost_lock:
            if self._writer is not None:
                return
            self._writer = threading.Thread(target=self._run, name="spend-writer", daemon=True)
        self._writer.start()

    def _run(self) -> None:
        failures = 0
        while not self._closed:
            self._wake.wait(min(self.flush_interval * (2 ** failures), 5.0))
            self._wake.clear()
            try:
                written = self.flush()
                failures = 0
            except STORE_ERRORS as exc:  # the rows went back to the queue; back off and retry
                failures = min(failures + 1, 7)
                if self.watch is None:
                    log.warning("spend log write failed (%s); %d records kept in memory for retry",
                                type(exc).__name__, len(self._queue))
                else:
                    self.watch.down(exc)
                continue
            except Exception:  # not an outage: a bug or a bad row, loudly; the rows are kept and retried
                failures = min(failures + 1, 7)
                log.exception("spend log write failed; %d records kept in memory for retry", len(self._queue))
                continue
            if written and self.watch is not None:
                self.watch.up()

    # -- writing --------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write every queued record now; returns how many were written. Raises if the database fails."""
        written = 0
        with self._flush_lock:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                try:
                    self._write(batch)
                except BaseException:
                    self._queue.extendleft(reversed(batch))
                    raise
                self._forget_pending(batch)
                written += len(batch)
        return written

    def _write(self, batch: list) -> None:
        now = self.clock.wall()
        charges: dict[str, list] = {}
        for _row, charge, _admission in batch:
            if charge is not None:
                entry = charges.setdefault(charge[0], [0.0, charge[2]])
                entry[0] += charge[1]
        rows = [row for row, _charge, _admission in batch if row is not None]
        with self.engine.begin() as connection:
            if rows:
                _insert_rows(connection, rows)
            if charges:
                connection.execute(CHARGE, [charge_params(key_hash, cost, duration, now)
                                            for key_hash, (cost, duration) in charges.items()])
        if self.on_committed is not None:
            admissions = [admission for _row, _charge, admission in batch if admission is not None]
            keys = {row["key_hash"] for row, _charge, admission in batch if admission is not None and row}
            try:
                self.on_committed(admissions, keys | set(charges))
            except Exception:  # the rows stay in the limits a little longer: counted twice, never lost
                log.exception("could not clear %d admissions of committed spend records", len(admissions))

    def _forget_pending(self, batch: list) -> None:
        """The batch is committed: its cost moves from the pending sums to the cached committed spend
        of its keys in the same step, so no reader counts it twice or not at all, and none has to read
        the store again for it (a key whose budget period ended is dropped: the store says what is left)."""
        wall = self.clock.wall()
        with self._cost_lock:
            for _row, charge, _admission in batch:
                if charge is not None:
                    hit = self._committed.get(charge[0])
                    if hit is not None and (hit[2] is None or hit[2] > wall):
                        self._committed[charge[0]] = (hit[0], hit[1] + charge[1], hit[2])
                    else:
                        self._committed.pop(charge[0], None)
                    left = self._pending_cost.get(charge[0], 0.0) - charge[1]
                    if left > 1e-12:
                        self._pending_cost[charge[0]] = left
                    else:
                        self._pending_cost.pop(charge[0], None)

    def close(self) -> None:
        """Stop the writer and write what is queued (worker exit, atexit); safe to call repeatedly."""
        self._closed = True
        self._wake.set()
        try:
            count = self.flush()
        except Exception:
            log.exception("could not write %d spend records at shutdown", len(self._queue))
            return
        if count:
            log.info("wrote %d spend records at shutdown", count)

    # -- reading --------------------------------------------------------------------------------------
    def key_spend(self, key_hash: str) -> float:
        """The key's spend this budget period: written records plus this process's queued ones.

        Budgets check this on every request of a key with a ``max_budget``, and every priced answer
        shows it (``x-sidecar-key-spend``), so the committed part is cached for ``spend_ttl``: this
        process's own spend is always exact (its pending sum is read fresh, and a flush drops the
        cached value of the keys it charged), while other workers' spend shows within ``spend_ttl``
        plus their flush interval, about as stale as their unflushed queues already make it. A
        budget is a soft limit either way: requests in flight when it is reached still finish.
        """
        now = self.clock.monotonic()
        with self._cost_lock:
            hit = self._committed.get(key_hash)
            pending = self._pending_cost.get(key_hash, 0.0)
        if hit is None or now - hit[0] >= self.spend_ttl:
            with self._flush_lock:  # no half-written batch: the DB and the pending sums agree
                with self.engine.connect() as connection:
                    row = connection.execute(sa.select(keys_table.c.spend, keys_table.c.budget_reset_at)
                                             .where(keys_table.c.token == key_hash)).first()
                with self._cost_lock:
                    pending = self._pending_cost.get(key_hash, 0.0)
                    if row is None:
                        return pending
                    hit = (now, row.spend or 0.0, row.budget_reset_at)
                    if len(self._committed) >= CACHE_MAX:
                        self._committed.clear()
                    self._committed[key_hash] = hit
        _read, spend, reset_at = hit
        ended = reset_at is not None and reset_at <= self.clock.wall()
        return (0.0 if ended else spend) + pending

    def committed_spend(self, key_hash: str) -> float:
        """The key's committed spend this budget period, read from the store now (admission's view;
        requests not yet written are counted by their admissions in the shared limits)."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(keys_table.c.spend, keys_table.c.budget_reset_at)
                                     .where(keys_table.c.token == key_hash)).first()
        if row is None:
            return 0.0
        ended = row.budget_reset_at is not None and row.budget_reset_at <= self.clock.wall()
        return 0.0 if ended else (row.spend or 0.0)

    def forget(self, key_hash: str) -> None:
        """Drop this process's cached spend of a key (after an operator sets it)."""
        with self._cost_lock:
            self._committed.pop(key_hash, None)

    def logs(self, filters: dict, page: int = 1, size: int = 100) -> dict:
        where = _where(filters)
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(spend_logs).where(*where)).scalar_one()
            rows = connection.execute(sa.select(spend_logs).where(*where)
                                      .order_by(spend_logs.c.ts.desc(), spend_logs.c.id.desc())
                                      .limit(size).offset((page - 1) * size)).mappings().all()
        return {"logs": [_shown(row) for row in rows], "total_count": total, "current_page": page,
                "page_size": size, "total_pages": math.ceil(total / size)}

    def report(self, group_by: str, filters: dict) -> dict:
        columns = _group_columns(group_by, self.engine.dialect.name)
        measures = [
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(spend_logs.c.cost), 0.0).label("cost"),
            sa.func.coalesce(sa.func.sum(spend_logs.c.prompt_tokens), 0).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(spend_logs.c.completion_tokens), 0).label("completion_tokens"),
            sa.func.coalesce(sa.func.sum(spend_logs.c.pages), 0).label("pages"),
            sa.func.coalesce(sa.func.sum(spend_logs.c.audio_seconds), 0.0).label("audio_seconds"),
            sa.func.sum(sa.case((spend_logs.c.cost.is_(None), 1), else_=0)).label("unpriced_requests"),
        ]
        query = (sa.select(*columns, *measures).where(*_where(filters)).group_by(*columns)
                 .order_by(sa.desc("cost")))
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        for row in rows:
            if group_by in ("day", "day_model"):
                row["day"] = datetime.fromtimestamp(row["day"] * 86400, timezone.utc).date().isoformat()
            row["cost"] = round(row["cost"], 10)
        return {"group_by": group_by, "groups": rows, "total_cost": round(sum(r["cost"] for r in rows), 10),
                "total_requests": sum(r["requests"] for r in rows)}


ROW_COLUMNS = (  # the keys of spend_record, in the order the SQLite insert binds them
    "ts", "request_id", "key_hash", "key_alias", "end_user", "model", "deployment", "operation", "route", "status",
    "prompt_tokens", "completion_tokens", "total_tokens", "pages", "audio_seconds", "characters", "cost",
    "latency_ms", "upstream_ms", "streamed", "error", "estimated")
_ROW_VALUES = operator.itemgetter(*ROW_COLUMNS)  # a row's values in that order, picked in C


@functools.lru_cache(maxsize=8)
def _sqlite_insert(dialect) -> str:
    return str(spend_logs.insert().compile(dialect=dialect, column_keys=list(ROW_COLUMNS)))


def _insert_rows(connection, rows: list[dict]) -> None:
    """Insert spend rows. On SQLite straight through the driver's ``executemany``: the rows hold only
    numbers, strings, None and a bool (which sqlite3 stores as 1/0, as SQLAlchemy would), and
    SQLAlchemy's per-row parameter processing was about 4% of a proxied request's CPU. Other
    databases keep SQLAlchemy's batched insert (insertmanyvalues), which is the fast way there."""
    if connection.dialect.name != "sqlite":
        connection.execute(spend_logs.insert(), rows)
        return
    connection.exec_driver_sql(_sqlite_insert(connection.dialect), list(map(_ROW_VALUES, rows)))


def _group_columns(group_by: str, dialect: str) -> list:
    if group_by == "key":
        return [spend_logs.c.key_hash, spend_logs.c.key_alias]
    if group_by == "model":
        return [spend_logs.c.model]
    if group_by == "deployment":
        return [spend_logs.c.deployment]
    if group_by == "end_user":
        return [spend_logs.c.end_user]
    days = spend_logs.c.ts / 86400
    # ts is positive, so truncation is floor; PostgreSQL's integer cast rounds, hence floor() there.
    day = sa.func.floor(days) if dialect == "postgresql" else sa.cast(days, sa.Integer)
    by_day = [sa.cast(day, sa.Integer).label("day")]
    return by_day + [spend_logs.c.model] if group_by == "day_model" else by_day


def _where(filters: dict) -> list:
    where = []
    if filters.get("key_hash"):
        where.append(spend_logs.c.key_hash == filters["key_hash"])
    if filters.get("key_alias"):
        where.append(spend_logs.c.key_alias == filters["key_alias"])
    for name in ("end_user", "model", "deployment", "operation"):
        if filters.get(name):
            where.append(getattr(spend_logs.c, name) == filters[name])
    if filters.get("proxied"):  # Mistral's operations only, not the sidecar's own routes (key admin, reports)
        where.append(sa.not_(spend_logs.c.operation.startswith("sidecar_", autoescape=True)))
    if filters.get("start") is not None:
        where.append(spend_logs.c.ts >= filters["start"])
    if filters.get("end") is not None:
        where.append(spend_logs.c.ts < filters["end"])
    return where


def _shown(row) -> dict:
    shown = dict(row)
    shown["time"] = datetime.fromtimestamp(row["ts"], timezone.utc).isoformat()
    return shown


def parse_time(value: str | None, name: str) -> float | None:
    """``start``/``end`` query values: epoch seconds or an ISO 8601 date or time (UTC if no zone)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be epoch seconds or an ISO 8601 date/time, got {value!r}.", param=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
