"""The admission journal: what a worker forwarded and never recorded outlives it, and is recorded once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from sidecar.access import journal as journal_mod
from sidecar.access.journal import Journal


def _record(request_id: str, cost: float = 0.002, tokens: int = 300) -> str:
    return json.dumps({"request_id": request_id, "key_hash": "k" * 64, "cost": cost, "tokens": tokens})


def test_a_recorded_admission_is_not_swept_and_the_file_goes_at_a_clean_exit(tmp_path):
    journal = Journal(tmp_path)
    journal.admit("a1", _record("r1"))
    journal.admit("a2", _record("r2"))
    assert journal.holds("a1") and journal.recorded(["a1", "other"]) == ["other"]
    assert not journal.holds("a1") and journal.holds("a2")
    journal.recorded(["a2"])
    journal.close()
    assert list(tmp_path.iterdir()) == []


def test_a_live_journal_is_never_swept(tmp_path):
    mine = Journal(tmp_path)
    mine.admit("a1", _record("r1"))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from sidecar.access.journal import Journal
        j = Journal({str(tmp_path)!r}); j.admit("b1", '{{"cost": 1}}'); print("ready", flush=True); time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert child.stdout.readline().strip() == "ready"
        assert Journal(tmp_path).sweep(lambda found: None) == []  # both processes live: nothing taken
        assert len(list(tmp_path.glob("*.journal"))) == 2
    finally:
        child.kill()
        child.wait()


def test_a_killed_process_leaves_its_unrecorded_admissions_to_one_sweep(tmp_path):
    """SIGKILL: settled ones at their real cost, the one still in flight at its reservation (estimated)."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import json, time
        from sidecar.access.journal import Journal
        j = Journal({str(tmp_path)!r})
        for i in range(3):
            j.admit(f"a{{i}}", json.dumps({{"request_id": f"r{{i}}", "key_hash": "k", "cost": 0.5, "tokens": 900}}))
        j.recorded(["a0"])                     # committed: never swept
        j.settle("a1", 0.0125, 42)             # answered, record not yet committed
        print("ready", flush=True); time.sleep(60)  # a2: still in flight
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait()
    taken = []
    sweeper = Journal(tmp_path)
    orphans = sweeper.sweep(taken.extend)
    assert sorted((o.id, o.amount, o.tokens, o.settled) for o in orphans) == [
        ("a1", 0.0125, 42, True), ("a2", 0.5, 900, False)]
    assert taken == orphans and list(tmp_path.glob("*.journal")) == []
    assert Journal(tmp_path).sweep(taken.extend) == []  # once


def test_a_journal_of_another_database_s_sidecar_is_left_to_it(tmp_path):
    dead = tmp_path / "1-dead.journal"
    dead.write_text(f"+a1 {json.dumps({'request_id': 'r1', 'cost': 0.1, 'tokens': 1, 'store': 'theirs'})}\n")
    assert Journal(tmp_path).sweep(lambda found: None, store="ours") == [] and dead.exists()
    assert [o.id for o in Journal(tmp_path).sweep(lambda found: None, store="theirs")] == ["a1"]
    assert not dead.exists()


def test_a_sweep_whose_records_cannot_be_written_keeps_the_file(tmp_path):
    dead = tmp_path / "1-dead.journal"
    dead.write_text(f"+a1 {_record('r1')}\n")

    def store_down(found):
        raise OSError("store down")
    try:
        Journal(tmp_path).sweep(store_down)
    except OSError:
        pass
    assert dead.exists()
    assert [o.id for o in Journal(tmp_path).sweep(lambda found: None)] == ["a1"] and not dead.exists()


def test_the_journal_rotates_and_drops_a_file_once_its_last_admission_is_recorded(tmp_path):
    journal = Journal(tmp_path, rotate_bytes=400)
    ids = [f"a{i}" for i in range(12)]
    for ident in ids:
        journal.admit(ident, _record(ident))
    assert len(list(tmp_path.glob("*.journal"))) > 2
    journal.recorded(ids[:-1])
    assert len(list(tmp_path.glob("*.journal"))) == 1  # only the current file, holding the last one
    journal.recorded(ids[-1:])
    journal.close()
    assert list(tmp_path.glob("*.journal")) == []


def test_unreadable_lines_are_skipped_not_fatal():
    data = b"+a1 {not json\n=a2 x y\n+a3 " + _record("r3").encode() + b"\n-zz\n\xff\xfe\n+a4"
    assert [o.id for o in journal_mod.parse(data)] == ["a3"]


def test_a_sweep_never_takes_a_journal_its_owner_is_creating(tmp_path):
    """Many journals rotating while another one sweeps the folder in a loop: no journal is taken for a
    dead one's (a sweep that found a file before its owner locked it deleted it, and the owner's lock
    then failed: a 500)."""
    import threading
    stop, swept, failures = threading.Event(), [], []

    def sweep() -> None:
        sweeper = Journal(tmp_path)
        while not stop.is_set():
            swept.extend(sweeper.sweep(lambda found: None))

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        journals = [Journal(tmp_path, rotate_bytes=200) for _ in range(4)]
        for i in range(300):
            try:
                journals[i % 4].admit(f"a{i}", _record(f"r{i}"))
            except OSError as exc:
                failures.append(exc)
    finally:
        stop.set()
        thread.join()
    assert failures == [] and swept == []
    assert sum(len(j._pending) for j in journals) == 300
