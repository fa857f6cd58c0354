"""The limits file: windows, admissions and worker heartbeats in SQLite, shared by the workers
of one machine.

Each operation is one short ``BEGIN IMMEDIATE`` transaction (tens of microseconds) whose cost does
not grow with the traffic in the window (running totals, not sums over entries). ``synchronous=OFF``:
a committed transaction survives the death of any process (SIGKILL, OOM), only a power cut loses it.
An admission reads the key's counters, calls ``admission.decide`` and writes, all in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from sidecar.access.admission import Ask, Counter, KeyState, Orphan, Refusal, decide, of_store
from sidecar.clock import SYSTEM, Clock


class LocalCounters:
    """Sliding windows and admissions in a SQLite file: atomic across the processes of one machine."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS window_log (name TEXT NOT NULL, ts REAL NOT NULL, weight INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ix_window_log ON window_log (name, ts)",
        "DROP TABLE IF EXISTS leases",  # parallel slots are admissions now; files from before had leases
        # The running sum of each window's weights, kept with every insert and expiry, so a check
        # reads one row instead of summing every entry of the last minute (O(requests per minute)).
        "CREATE TABLE IF NOT EXISTS window_totals (name TEXT PRIMARY KEY, used INTEGER NOT NULL)",
        # One row per admitted request of a virtual key until its spend record is committed: its
        # reservation (then its settled cost) counts toward the key's budget, and while in flight it
        # is the key's parallel lease. ``tpm_entry`` is the rowid of its tokens in window_log.
        "CREATE TABLE IF NOT EXISTS admissions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, key TEXT NOT NULL, "
        "amount REAL NOT NULL, tokens INTEGER NOT NULL, tpm_entry INTEGER, inflight INTEGER NOT NULL, "
        "settled INTEGER NOT NULL, record TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ix_admissions_key ON admissions (key)",
        "CREATE INDEX IF NOT EXISTS ix_admissions_owner ON admissions (owner)",
        # Each serving process beats here every few seconds; a silent owner's admissions hold no slot.
        "CREATE TABLE IF NOT EXISTS owners (id TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, "
        "expires REAL NOT NULL)",
        # Bumped when a key's committed spend moves (records written, an operator's change), so a
        # worker knows when the spend it read from the store is stale.
        "CREATE TABLE IF NOT EXISTS epochs (key TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    )

    def __init__(self, path: Path | str, clock: Clock = SYSTEM):
        self.path = str(path)
        self.clock = clock
        self.errors = (sqlite3.Error, OSError)  # what this store raises when it cannot answer
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

    # -- windows --------------------------------------------------------------------------------------
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
    def _hit(db, name: str, now: float, weight: int) -> int:
        cursor = db.execute("INSERT INTO window_log (name, ts, weight) VALUES (?, ?, ?)", (name, now, weight))
        db.execute("INSERT INTO window_totals (name, used) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET used = used + excluded.used", (name, weight))
        return cursor.lastrowid

    def total(self, name: str, window: float) -> tuple[int, float | None]:
        """A window's total and oldest entry (``rpm:<key>``, ``tpm:<key>``)."""
        return self._transaction(lambda db, now: self._window(db, name, now, window))

    # -- admissions -------------------------------------------------------------------------------------
    def admit(self, ask: Ask, *, window: float) -> Refusal | None:
        """Read the key's counters, ``decide``, and write the admission if admitted: one transaction, so
        no other worker reads or writes the key in between. A refused request writes nothing."""
        counted = {bound.counter for bound in ask.bounds()}

        def work(db, now):
            refusal = decide(ask, self._state(db, ask.key, counted, now, window), window)
            if refusal is None:
                self._write(db, ask, counted, now)
            return refusal
        return self._transaction(work)

    def _state(self, db, key: str, counted: set[Counter], now: float, window: float) -> KeyState:
        read: dict = {}
        if Counter.EPOCH in counted:
            found = db.execute("SELECT n FROM epochs WHERE key = ?", (key,)).fetchone()
            read["epoch"] = found[0] if found else 0
        if Counter.HELD in counted:
            (read["held"],) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM admissions WHERE key = ?",
                                         (key,)).fetchone()
        if Counter.TPM in counted:
            read["tpm"], read["tpm_oldest"] = self._window(db, f"tpm:{key}", now, window)
        if Counter.INFLIGHT in counted:
            (read["inflight"],) = db.execute(
                "SELECT COUNT(*) FROM admissions a JOIN owners o ON o.id = a.owner "
                "WHERE a.key = ? AND a.inflight = 1 AND o.expires > ?", (key, now)).fetchone()
        if Counter.RPM in counted:
            read["rpm"], read["rpm_oldest"] = self._window(db, f"rpm:{key}", now, window)
        return KeyState(now, **read)

    def _write(self, db, ask: Ask, counted: set[Counter], now: float) -> None:
        if Counter.RPM in counted:
            self._hit(db, f"rpm:{ask.key}", now, 1)
        entry = self._hit(db, f"tpm:{ask.key}", now, ask.tokens) if Counter.TPM in counted and ask.tokens else None
        db.execute("INSERT INTO admissions (id, owner, key, amount, tokens, tpm_entry, inflight, settled, record) "
                   "VALUES (?, ?, ?, ?, ?, ?, 1, 0, ?)",
                   (ask.id, ask.owner, ask.key, ask.cost, ask.tokens, entry, ask.record))

    def settle(self, admission: str, cost: float, tokens: int, tpm: bool, window: float) -> None:
        """The answer ended: its real cost replaces the reservation, its tokens the reserved ones."""
        def work(db, now):
            row = db.execute("SELECT key, tokens, tpm_entry FROM admissions WHERE id = ?", (admission,)).fetchone()
            if row is None:
                return
            key, reserved, entry = row
            db.execute("UPDATE admissions SET amount = ?, tokens = ?, inflight = 0, settled = 1 WHERE id = ?",
                       (cost, tokens, admission))
            if not tpm:
                return
            if entry is not None:
                found = db.execute("SELECT weight FROM window_log WHERE rowid = ?", (entry,)).fetchone()
                if found is not None:  # still in the window: correct it in place
                    db.execute("UPDATE window_log SET weight = ? WHERE rowid = ?", (tokens, entry))
                    db.execute("UPDATE window_totals SET used = used + ? WHERE name = ?",
                               (tokens - found[0], f"tpm:{key}"))
                return
            if tokens:
                self._hit(db, f"tpm:{key}", now, tokens)
        self._transaction(work)

    def free(self, admission: str) -> None:
        """Its answer is over: it no longer holds a parallel slot (its amount still counts)."""
        self._transaction(lambda db, now: db.execute("UPDATE admissions SET inflight = 0 WHERE id = ?", (admission,)))

    def recorded(self, admissions: list[str], keys: set[str]) -> None:
        """Their spend records are committed: the rows go, and the keys' epochs move in the same step."""
        def work(db, now):
            db.executemany("DELETE FROM admissions WHERE id = ?", [(a,) for a in admissions])
            db.executemany("INSERT INTO epochs (key, n) VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET n = n + 1",
                           [(k,) for k in keys])
        self._transaction(work)

    def bump(self, key: str) -> None:
        self.recorded([], {key})

    # -- owners and the sweep ---------------------------------------------------------------------------
    def beat(self, owner: str, pid: int, host: str, ttl: float) -> None:
        self._transaction(lambda db, now: db.execute(
            "INSERT INTO owners (id, pid, host, expires) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET expires = excluded.expires", (owner, pid, host, now + ttl)))

    def leave(self, owner: str) -> None:
        self._transaction(lambda db, now: db.execute("DELETE FROM owners WHERE id = ?", (owner,)))

    def sweep(self, *, host: str, grace: float, alive, mine: str = "", store: str = "") -> list[Orphan]:
        """Claim the admissions of dead owners: a process of this host that no longer runs, or an owner
        silent for ``grace`` seconds (a worker that slow was already killed by gunicorn's timeout)."""
        def work(db, now):
            rows = db.execute(
                "SELECT a.id, a.key, a.amount, a.tokens, a.settled, a.record, o.pid, o.host, o.expires "
                "FROM admissions a LEFT JOIN owners o ON o.id = a.owner "
                "WHERE a.owner != ? AND (o.id IS NULL OR o.expires <= ? OR o.host = ?)", (mine, now, host)).fetchall()
            living: dict[int, bool] = {}

            def dead(row) -> bool:
                if row[6] is None or row[8] <= now - grace:
                    return True
                if row[7] != host:
                    return False
                if row[6] not in living:
                    living[row[6]] = alive(row[6])
                return not living[row[6]]
            claimed = [Orphan(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows
                       if dead(r) and of_store(r[5], store)]
            db.executemany("DELETE FROM admissions WHERE id = ?", [(o.id,) for o in claimed])
            db.execute("DELETE FROM owners WHERE expires <= ? AND id NOT IN (SELECT owner FROM admissions)",
                       (now - grace,))
            return claimed
        return self._transaction(work)
