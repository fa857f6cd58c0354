"""The admission journal: each process's append-only file of the requests it forwarded and has not yet recorded.

A request whose key has no limits needs nothing shared to be admitted, only to be remembered: if its
worker dies (SIGKILL, the OOM killer) between forwarding and committing its spend record, someone
must write that record. The shared counters could remember it, at the price of a cross-process
write transaction per request (and the lock every worker waits on); this file costs one ``write``
per request instead, and survives the death of its process like a committed SQLite row does (the
kernel holds the page; only a power cut loses it).

Lines: ``+id record`` when admitted, ``=id cost tokens`` when its answer ended, ``-id`` once its
spend record is committed. Each process holds an exclusive ``flock`` on its own files for as long as
it lives, so liveness needs no pid check: a file whose lock can be taken belongs to a dead process,
and the sweeper that took it records what it left (settled cost, else the reservation, flagged
estimated), then deletes it. A file is replaced by a new one when it grows past ``ROTATE_BYTES``
and deleted when its last admission is recorded.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from pathlib import Path

from sidecar.access.admission import Orphan, of_store

ROTATE_BYTES = 4 * 1024 * 1024
SUFFIX = ".journal"
log = logging.getLogger("sidecar.access.journal")


class Journal:
    """``admit``/``settle``/``recorded`` for this process's admissions; ``sweep`` for dead processes' files."""

    def __init__(self, folder: Path | str, rotate_bytes: int = ROTATE_BYTES):
        self.folder = Path(folder)
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._pid = 0
        self._fd = -1
        self._file: Path | None = None
        self._size = 0
        self._pending: dict[str, Path] = {}  # admission id -> the file it was written to
        self._held: dict[Path, list] = {}  # file -> [fd, pending count] for files still open

    def holds(self, admission: str) -> bool:
        return admission in self._pending

    def admit(self, admission: str, record: str) -> None:
        line = f"+{admission} {record}\n".encode()
        with self._lock:
            self._ready(len(line))
            os.write(self._fd, line)
            self._size += len(line)
            self._pending[admission] = self._file
            self._held[self._file][1] += 1

    def settle(self, admission: str, cost: float, tokens: int) -> None:
        """The answer ended: a sweep records this cost, not the reservation, if the record never lands."""
        with self._lock:
            file = self._pending.get(admission)
            if file is not None:
                os.write(self._held[file][0], f"={admission} {cost!r} {int(tokens)}\n".encode())

    def recorded(self, admissions: list[str]) -> list[str]:
        """Mark these committed; returns the ids that are not this journal's."""
        others, done = [], {}
        with self._lock:
            for admission in admissions:
                file = self._pending.pop(admission, None)
                if file is None:
                    others.append(admission)
                else:
                    done.setdefault(file, []).append(admission)
            for file, ids in done.items():
                fd, count = self._held[file]
                if file is self._file or count > len(ids):
                    os.write(fd, "".join(f"-{a}\n" for a in ids).encode())
                self._held[file][1] -= len(ids)
                if self._held[file][1] == 0 and file is not self._file:
                    self._drop(file)
        return others

    def _ready(self, size: int) -> None:
        if self._pid != os.getpid():  # a forked child never writes to its parent's file
            self._pending.clear()
            self._held.clear()
            self._file, self._pid = None, os.getpid()
        if self._file is not None and self._size + size <= self.rotate_bytes:
            return
        old = self._file
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # Created under a name no sweep looks at, locked, then renamed into view: a sweeper never finds
        # a journal before its owner holds the lock (it would take it for a dead one's and delete it).
        hidden = self.folder / f".{name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.folder / f"{name}{SUFFIX}"
        os.rename(hidden, path)
        self._held[path] = [fd, 0]
        self._file, self._fd, self._size = path, fd, 0
        if old is not None and self._held[old][1] == 0:
            self._drop(old)

    def _drop(self, file: Path) -> None:
        fd, _count = self._held.pop(file)
        try:
            file.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)

    def close(self) -> None:
        """At a clean exit: files with nothing pending go; a file with admissions whose records never
        landed (the store was down) stays for the next sweep, the only way they will be recorded."""
        with self._lock:
            if self._pid != os.getpid():
                return
            for file in list(self._held):
                if self._held[file][1] == 0:
                    self._drop(file)
                else:
                    os.close(self._held.pop(file)[0])
            self._file = None

    # -- the sweep --------------------------------------------------------------------------------------
    def sweep(self, on_orphans, store: str = "") -> list[Orphan]:
        """Record what dead processes left in their files (``on_orphans`` queues the records), then delete them;
        a file of another database's sidecar (``admission.of_store``) is left to that sidecar's sweep."""
        if not self.folder.is_dir():
            return []
        found: list[Orphan] = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            if path in self._held:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # another sweeper took it
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its process lives
                    continue
                if not os.path.exists(path):  # swept between our open and our lock
                    continue
                with open(fd, "rb", closefd=False) as file:
                    orphans = parse(file.read())
                if not all(of_store(orphan.record, store) for orphan in orphans):
                    continue
                if orphans:
                    on_orphans(orphans)
                    found.extend(orphans)
                path.unlink()
            finally:
                os.close(fd)
        return found


def parse(data: bytes) -> list[Orphan]:
    """The admissions of one journal that were never marked recorded, with their settled cost if known."""
    admitted: dict[str, str] = {}
    settled: dict[str, tuple[float, int]] = {}
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "replace")
        mark, _, rest = line[:1], None, line[1:]
        ident, _, tail = rest.partition(" ")
        if mark == "+" and tail:
            admitted[ident] = tail
        elif mark == "=":
            try:
                cost, tokens = tail.split(" ")
                settled[ident] = (float(cost), int(tokens))
            except ValueError:
                continue
        elif mark == "-":
            admitted.pop(ident, None)
    orphans = []
    for ident, record in admitted.items():
        try:
            saved = json.loads(record)
        except ValueError:
            log.warning("journal line for admission %s is unreadable; it is skipped", ident)
            continue
        cost, tokens = settled.get(ident, (float(saved.get("cost") or 0.0), int(saved.get("tokens") or 0)))
        orphans.append(Orphan(ident, saved.get("key_hash") or "", cost, tokens, ident in settled, record))
    return orphans
