"""Limits shared across processes: the SQLite counters of one machine and the Redis counters of many
instances hold one limit between them, and admission turns them into Mistral-shaped refusals."""

from __future__ import annotations

import json
import multiprocessing
import time
import uuid

import pytest

from sidecar.access import admission
from sidecar.access.admission import Ask, OverBudget, OverParallel, OverRpm, OverTpm, Stale
from sidecar.access.auth import Caller
from sidecar.access.limits import (
    Limits,
    LocalCounters,
    RedisCounters,
    local_counters_path,
    moved_paths,
    store_tag,
)
from sidecar.clock import FakeClock
from sidecar.core.errors import BudgetExceeded, RateLimited, ServiceUnavailable
from sidecar.core.exchange import Exchange
from sidecar.settings import Settings

from ..databases import redis_url


class RedisTime:
    """Redis's counters read Redis's own clock (so skewed instances agree): time there is real, and moves
    by waiting. The local counters get a ``FakeClock`` instead; tests move either with ``advance``."""

    def wall(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, tmp_path):
    """Two independent counter objects over one shared backend (two workers, or two instances), and its clock."""
    if request.param == "local":
        path, clock = tmp_path / "limits.sqlite3", FakeClock()
        yield LocalCounters(path, clock), LocalCounters(path, clock), clock
        return
    prefix = f"sidecar-test-{uuid.uuid4().hex[:12]}:"
    first, second = RedisCounters(redis_url(), prefix), RedisCounters(redis_url(), prefix)
    yield first, second, RedisTime()
    for name in first.redis.scan_iter(prefix + "*"):
        first.redis.delete(name)


@pytest.fixture
def two_counters(backend):
    return backend[:2]


def _ask(key="k", **fields) -> Ask:
    return Ask(id=uuid.uuid4().hex, key=key, owner=fields.pop("owner", "o1"), cost=fields.pop("cost", 0.0),
               tokens=fields.pop("tokens", 0), record="{}", **fields)


def test_a_window_admits_exactly_its_limit_between_two_processes(two_counters):
    results = [two_counters[i % 2].admit(_ask(rpm=5), window=60) for i in range(12)]
    assert results[:5] == [None] * 5
    assert all(isinstance(refused, OverRpm) and 0 < refused.wait <= 60 for refused in results[5:])


def test_the_window_slides(backend):
    a, b, clock = backend
    assert a.admit(_ask(rpm=2), window=0.3) is None and b.admit(_ask(rpm=2), window=0.3) is None
    assert a.admit(_ask(rpm=2), window=0.3) is not None
    clock.advance(0.35)
    assert b.admit(_ask(rpm=2), window=0.3) is None


def test_windows_add_up_across_processes_and_read_back_for_key_info(backend):
    """``/key/info`` reads the rpm and tpm windows the admissions wrote (Redis's rpm window used to fail)."""
    a, b, clock = backend
    assert a.total("tpm:k", 60) == (0, None)
    assert a.admit(_ask(rpm=5, tpm=100, tokens=10), window=60) is None
    assert b.admit(_ask(rpm=5, tpm=100, tokens=5), window=60) is None
    used, oldest = b.total("tpm:k", 60)
    assert used == 15 and clock.wall() - 5 < oldest <= clock.wall() and a.total("rpm:k", 60)[0] == 2


def test_parallel_slots_count_requests_in_flight_and_a_silent_owner_holds_none(backend):
    a, b, clock = backend
    a.beat("o1", 1, "here", 60)
    first = _ask(parallel=2)
    assert a.admit(first, window=60) is None and b.admit(_ask(parallel=2), window=60) is None
    assert a.admit(_ask(parallel=2), window=60) == OverParallel()
    b.free(first.id)
    assert a.admit(_ask(parallel=2), window=60) is None
    b.beat("o2", 2, "there", 0.5)
    assert b.admit(_ask("other", parallel=1, owner="o2"), window=60) is None
    assert a.admit(_ask("other", parallel=1), window=60) == OverParallel()
    clock.advance(0.55)  # a worker that died holding the slot stops beating: it does not block the key forever
    assert a.admit(_ask("other", parallel=1), window=60) is None


def test_a_sweep_claims_only_its_own_database_s_admissions(backend, caplog, monkeypatch):
    """Two sidecars on two databases sharing one Redis: each records a dead worker's admissions into its
    own spend log, so neither may claim the other's (a record naming no store is anyone's)."""
    a, b, _clock = backend
    monkeypatch.setattr(admission, "_foreign_said", set())
    a.beat("dead", 1, "here", 60)
    asks = {name: _ask(owner="dead") for name in ("a", "b", "old")}
    for name, ask in asks.items():
        ask.record = json.dumps({"request_id": name, "store": name}) if name != "old" else "{}"
        assert a.admit(ask, window=60) is None

    def swept(counters, store):
        orphans = counters.sweep(host="here", grace=75, alive=lambda pid: False, store=store)
        return sorted(json.loads(o.record).get("request_id", "old") for o in orphans)
    assert swept(b, "b") == ["b", "old"]
    assert swept(b, "b") == []  # the other database's stays, for its own sidecar
    said = [r.getMessage() for r in caplog.records if "another database's sidecar" in r.getMessage()]
    assert len(said) == 1 and "(store a; this one is b)" in said[0]  # said, once: a sweep runs every 2 s
    assert swept(a, "a") == ["a"]


def test_each_admission_names_its_store_and_a_sweep_of_another_leaves_it(tmp_path):
    counters = LocalCounters(tmp_path / "l")
    tag = store_tag(Settings(database_url="postgresql://db/ours"))
    worker = Limits(counters, store=tag)
    worker.admit(_exchange(rpm_limit=100))
    counters.leave(worker.owner)  # the worker is gone: its admission is for a sweep to record
    ours, theirs = Limits(counters, store=tag), Limits(counters, store=store_tag(Settings(database_url="postgresql://db/x")))
    taken = []
    theirs.on_orphans = ours.on_orphans = taken.extend
    assert theirs.sweep() == [] and taken == []
    (orphan,) = ours.sweep()
    assert json.loads(orphan.record)["store"] == ours.store and taken == [orphan]


def _hammer(path: str, results) -> None:
    counters = LocalCounters(path)
    results.put(sum(counters.admit(_ask("shared", rpm=7), window=60) is None for _ in range(10)))


def test_sqlite_counters_are_atomic_across_real_processes(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_hammer, args=(str(tmp_path / "limits"), results)) for _ in range(4)]
    for process in processes:
        process.start()
    admitted = sum(results.get(timeout=30) for _ in processes)
    for process in processes:
        process.join(10)
    assert admitted == 7


def test_an_unreachable_redis_refuses_with_503_instead_of_dropping_limits():
    counters = RedisCounters("redis://127.0.0.1:9/0")
    with pytest.raises(ServiceUnavailable) as refused:
        counters.admit(_ask(rpm=1), window=60)
    assert refused.value.status == 503 and "127.0.0.1" not in refused.value.message


def _exchange(**limits) -> Exchange:
    ex = Exchange("req", "chat_completion_v1_chat_completions_post", "POST", "/v1/chat/completions")
    ex.caller = Caller("virtual", key_hash="h" * 64, alias="svc", limits={
        "rpm_limit": None, "tpm_limit": None, "max_parallel_requests": None, "max_budget": None, "spend": 0.0,
        "budget_reset_at": None, "budget_duration": None, **limits})
    return ex


def test_admission_messages_name_the_limit(tmp_path):
    clock = FakeClock()
    limits = Limits(LocalCounters(tmp_path / "l", clock), clock=clock)
    with pytest.raises(BudgetExceeded) as budget:
        limits.admit(_exchange(max_budget=1.0, spend=1.25, budget_duration="30d", budget_reset_at=clock.wall() + 99))
    assert budget.value.status == 400
    assert "spent $1.250000 of its max_budget $1.000000 for the period ending" in budget.value.message
    limits.admit(_exchange(max_budget=1.0, spend=5.0, budget_duration="1h", budget_reset_at=clock.wall() - 1))()

    release = limits.admit(_exchange(max_parallel_requests=1, rpm_limit=1))
    with pytest.raises(RateLimited) as parallel:
        limits.admit(_exchange(max_parallel_requests=1))
    assert parallel.value.headers["Retry-After"] == "1" and parallel.value.code == "parallel_limit_exceeded"
    release()
    release()  # idempotent: a stream's close() and an error path may both release
    with pytest.raises(RateLimited) as rpm:  # a refused request takes no slot: the next one is refused by rpm
        limits.admit(_exchange(max_parallel_requests=1, rpm_limit=1))
    assert rpm.value.code == "rpm_limit_exceeded" and 58 <= int(rpm.value.headers["Retry-After"]) <= 60
    limits.admit(_exchange(max_parallel_requests=1))
    limits.close()


def test_reservations_count_until_settled_then_the_real_cost_counts(tmp_path):
    limits = Limits(LocalCounters(tmp_path / "l"))
    first = _exchange(max_budget=1.0, tpm_limit=100)
    limits.admit(first, cost=0.6, tokens=60)
    with pytest.raises(BudgetExceeded, match="reserves up to \\$0.500000"):
        limits.admit(_exchange(max_budget=1.0, tpm_limit=100), cost=0.5, tokens=10)  # 0.6 + 0.5 > 1
    with pytest.raises(RateLimited, match="used 60 of its 100 tokens"):
        limits.admit(_exchange(max_budget=1.0, tpm_limit=100), cost=0.1, tokens=50)  # 60 + 50 > 100
    first.cost, first.usage = 0.2, type("U", (), {"total_tokens": 20})()
    limits.record(first)  # settled: 0.2 and 20 tokens replace 0.6 and 60
    second = _exchange(max_budget=1.0, tpm_limit=100)
    limits.admit(second, cost=0.8, tokens=80)  # 0.2 + 0.8 fits exactly; 20 + 80 tokens too
    with pytest.raises(BudgetExceeded):
        limits.admit(_exchange(max_budget=1.0), cost=0.0)  # nothing left, even for a free request
    limits.close()


def test_master_and_own_routes_are_never_limited(tmp_path):
    limits = Limits(LocalCounters(tmp_path / "l"), exempt=frozenset({"sidecar_key_info"}))
    ex = _exchange(max_budget=0.0)
    ex.operation_id = "sidecar_key_info"
    limits.admit(ex)  # a key over budget may still read its own info
    master = Exchange("r", "chat_completion_v1_chat_completions_post", "POST", "/v1/chat/completions")
    master.caller = Caller("master")
    limits.admit(master)


def test_the_local_counters_file_sits_next_to_the_store(tmp_path):
    assert local_counters_path(Settings(database_url=f"sqlite:///{tmp_path}/s.db")) == tmp_path / "s.db-limits"
    on_pg = Settings(database_url="postgresql://db/x", db_path=tmp_path / "local.sqlite3")
    beside = local_counters_path(on_pg)
    assert beside.parent == tmp_path and beside.name.startswith("local.sqlite3-") and beside.name.endswith("-limits")


def test_two_postgresql_databases_keep_their_admissions_apart_on_one_machine(tmp_path):
    """A sweep records a dead worker's admissions into its own store: sidecars of one machine on two
    databases must not share the files, or one's orphans land in the other's spend log."""
    def path(url):
        return local_counters_path(Settings(database_url=url, db_path=tmp_path / "local.sqlite3"))

    same = path("postgresql://app:pw@db:5432/x")
    for spelling in ("postgres://app:new-pw@db:5432/x", "postgresql+psycopg://app@db:5432/x", "postgresql://app@DB/x",
                     "postgresql://app@db/x?sslmode=require&application_name=w&password=secret-pw"):
        assert path(spelling) == same, spelling  # another password, driver, case, default port or option
    for other in ("postgresql://app@db:5432/y", "postgresql://app@db2:5432/x", "postgresql://app@db:5433/x",
                  "postgresql://app@db:5432/x?options=-csearch_path%3Dother"):
        assert path(other) != same, other
    assert "pw" not in str(same)


def test_an_upgrade_records_what_dead_workers_left_where_the_files_were_before(tmp_path):
    """PostgreSQL's local files moved to names with the store's tag: a worker's start sweeps the old ones
    once, so an admission a SIGKILLed worker of the previous version left there is still recorded."""
    on_pg = Settings(database_url="postgresql://db/x", db_path=tmp_path / "local.sqlite3")
    assert moved_paths(Settings(database_url=f"sqlite:///{tmp_path}/s.db")) is None
    counters_path, journal_folder = moved_paths(on_pg)
    old = _ask(owner="killed", rpm=10)
    old.record = json.dumps({"request_id": "limited"})  # records named no store then
    assert LocalCounters(counters_path).admit(old, window=60) is None
    journal_folder.mkdir()
    (journal_folder / "1-killed.journal").write_text('+a1 {"request_id": "unlimited", "cost": 0.1, "tokens": 1}\n')
    limits, taken = Limits(LocalCounters(local_counters_path(on_pg)), store=store_tag(on_pg)), []
    limits.on_orphans = taken.extend
    limits.sweep_moved(counters_path, journal_folder)
    assert sorted(json.loads(o.record)["request_id"] for o in taken) == ["limited", "unlimited"]
    assert limits.sweep_moved(counters_path, journal_folder) == []  # once


def test_a_sqlite_store_is_one_store_however_its_path_is_spelt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spellings = ["sqlite:///s.db", f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/./s.db"]
    assert len({store_tag(Settings(database_url=url)) for url in spellings}) == 1
    assert store_tag(Settings(database_url=None, db_path=tmp_path / "s.db")) == store_tag(Settings(database_url=spellings[0]))
    assert store_tag(Settings(database_url="sqlite:///other.db")) != store_tag(Settings(database_url=spellings[0]))


def test_one_admission_takes_the_slot_and_the_hit_together_or_neither(two_counters):
    a, b = two_counters
    a.beat("o1", 1, "here", 60)
    assert a.admit(_ask(parallel=5, rpm=1), window=60) is None
    assert b.admit(_ask(parallel=5, rpm=1), window=60) == OverRpm(wait=pytest.approx(60, abs=2))
    assert b.admit(_ask(parallel=2), window=60) is None  # one slot held by the first, none by the refused
    assert a.admit(_ask(parallel=2), window=60) == OverParallel()
    assert a.admit(_ask(tpm=100, tokens=50), window=60) is None
    assert isinstance(b.admit(_ask(tpm=50), window=60), OverTpm)


def test_budget_admission_asks_again_when_the_keys_records_moved(two_counters):
    a, b = two_counters
    a.beat("o1", 1, "here", 60)
    stale = a.admit(_ask(budget=1.0, epoch=-1), window=60)
    assert isinstance(stale, Stale)
    assert a.admit(_ask(budget=1.0, epoch=stale.epoch, cost=0.5), window=60) is None
    assert b.admit(_ask(budget=1.0, epoch=stale.epoch, cost=0.6), window=60) == OverBudget(pytest.approx(0.5))
    b.recorded([], {"k"})  # another worker wrote the key's records: its committed spend moved
    assert a.admit(_ask(budget=1.0, epoch=stale.epoch, cost=0.1), window=60) == Stale(stale.epoch + 1)


def test_a_limit_of_nothing_refuses_everything_with_a_minute_to_wait(two_counters):
    a, _ = two_counters
    assert a.admit(_ask(rpm=0), window=60) == OverRpm(60)  # Redis's script used to fail here: a 503
    assert a.admit(_ask(tpm=0, tokens=5), window=60) == OverTpm(0, 60)


def _admit_and_hang(counters_factory, ready) -> None:
    limits = Limits(counters_factory())
    limits.admit(_exchange(max_parallel_requests=1, max_budget=1.0), cost=0.25, tokens=100)
    ready.set()
    time.sleep(120)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def counters_factory(request, tmp_path):
    if request.param == "local":
        path = tmp_path / "limits.sqlite3"
        yield lambda: LocalCounters(path)
        return
    prefix = f"sidecar-test-{uuid.uuid4().hex[:12]}:"
    yield lambda: RedisCounters(redis_url(), prefix)
    cleanup = RedisCounters(redis_url(), prefix)
    for name in cleanup.redis.scan_iter(prefix + "*"):
        cleanup.redis.delete(name)


def test_a_killed_worker_frees_its_slot_within_10_s_and_its_admission_is_recorded(counters_factory):
    """A worker SIGKILLed mid-request: its parallel slot is free once it misses its heartbeats, and the
    request it admitted is handed to the spend log at its reservation, flagged estimated."""
    import os
    import signal

    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_admit_and_hang, args=(counters_factory, ready))
    worker.start()
    assert ready.wait(30)
    limits = Limits(counters_factory())
    with pytest.raises(RateLimited):
        limits.admit(_exchange(max_parallel_requests=1))
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    killed = time.monotonic()
    while True:
        try:
            limits.admit(_exchange(max_parallel_requests=1))
            break
        except RateLimited:
            assert time.monotonic() - killed < 10, "the dead worker's slot was still held after 10 s"
            time.sleep(0.2)
    freed = time.monotonic() - killed
    assert freed <= 7.5  # OWNER_TTL (6 s) after its last beat
    found = []
    limits.on_orphans = found.extend
    limits.sweep()
    (orphan,) = [o for o in found if o.key == "h" * 64 and o.tokens == 100]
    assert orphan.amount == 0.25 and not orphan.settled
    assert json.loads(orphan.record)["request_id"] == "req"
    limits.close()


def test_a_counters_file_from_before_running_totals_keeps_its_windows(tmp_path):
    import sqlite3

    path = tmp_path / "old-limits"
    old = sqlite3.connect(path)
    old.execute(LocalCounters.SCHEMA[0])
    old.executemany("INSERT INTO window_log (name, ts, weight) VALUES (?, ?, ?)",
                    [("tpm:k", time.time(), 20), ("tpm:k", time.time(), 22)])
    old.commit()
    old.close()
    counters = LocalCounters(path)
    assert counters.total("tpm:k", 60)[0] == 42
    assert counters.admit(_ask(tpm=1000, tokens=8), window=60) is None
    assert counters.total("tpm:k", 60)[0] == 50


def test_a_journal_that_cannot_be_written_refuses_with_503_not_a_500(tmp_path):
    """A request is forwarded only once it would be recorded even if its worker died: when the
    admission journal cannot be written (here its folder is a file), the answer is a clear 503."""
    from sidecar.access.journal import Journal

    blocked = tmp_path / "admissions"
    blocked.write_text("not a folder")
    clock = FakeClock()
    limits = Limits(LocalCounters(tmp_path / "l", clock), clock=clock, journal=Journal(blocked))
    with pytest.raises(ServiceUnavailable) as refused:
        limits.admit(_exchange(), 0.001, 100)
    assert refused.value.status == 503 and refused.value.code == "journal_unavailable"
    assert "journal" in str(refused.value)
    limits.close()
