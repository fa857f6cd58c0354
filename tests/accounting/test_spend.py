"""The spend log in use: key spend and budgets from the records, reports, the writer, and the log line."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from werkzeug.wrappers import Response

from sidecar.accounting.spend import SpendLog
from sidecar.core.exchange import Caller, Exchange
from sidecar.store import tables

from ..conftest import MISTRAL_KEY
from ..fakes import chat_body

MASTER = "sk-master-spend-test-0123456789"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "my private question"}]}
PER_REQUEST = (1000 * 0.15 + 1000 * 0.6) / 1e6  # 1000 tokens in and out on mistral-small-latest
AS_MASTER = {"Authorization": f"Bearer {MASTER}"}


@pytest.fixture
def app(make_app):
    return make_app(master_key=MASTER)


def new_key(client, **fields) -> str:
    response = client.post("/key/generate", json=fields, headers=AS_MASTER)
    assert response.status_code == 200, response.json
    return response.json["key"]


def priced_chat(fake, delay: float = 0.0, content: str = "my private answer"):
    def answer(request):
        time.sleep(delay)
        return Response(json.dumps(chat_body(prompt=1000, completion=1000, content=content)), 200,
                        {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", answer)


def records(app) -> list[dict]:
    spend = app.extensions["sidecar"].accountant.spend
    spend.flush()
    return spend.logs({}, size=1000)["logs"]


def key_row(app, key_hash: str):
    with app.extensions["sidecar"].accountant.spend.engine.connect() as connection:
        return connection.execute(sa.select(tables.keys).where(tables.keys.c.token == key_hash)).mappings().one()


def test_a_virtual_key_sees_its_spend_grow_in_headers_and_key_info(app, client, fake):
    priced_chat(fake)
    key = new_key(client, key_alias="web")
    auth = {"Authorization": f"Bearer {key}"}
    for n in range(1, 4):
        response = client.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert float(response.headers["x-sidecar-cost"]) == pytest.approx(PER_REQUEST)
        assert float(response.headers["x-sidecar-key-spend"]) == pytest.approx(n * PER_REQUEST)
    info = client.get("/key/info", headers=auth).json["info"]
    assert info["spend"] == pytest.approx(3 * PER_REQUEST)
    mine = [r for r in records(app) if r["key_alias"] == "web"]
    assert info["spend"] == pytest.approx(sum(r["cost"] for r in mine), abs=1e-12)
    assert "x-sidecar-key-spend" not in client.post("/v1/chat/completions", json=CHAT, headers=AS_MASTER).headers


def _reserve(app) -> float:
    """What admission reserves for CHAT: its prompt estimate plus the default output reserve, priced."""
    ex = Exchange("r", "chat_completion_v1_chat_completions_post", "POST", "/v1/chat/completions")
    ex.model, ex.request_json = CHAT["model"], CHAT
    return app.extensions["sidecar"].accountant.reserve(ex)[0]


@pytest.mark.parametrize("in_flight", [1, 4, 20])
def test_budget_holds_reservations_of_requests_in_flight(app, client, fake, in_flight):
    """A budget worth 4.5 requests, 20 sent with ``in_flight`` at a time: each is admitted only while the
    key's spend plus every reservation in flight plus its own fits, so one at a time admits exactly
    while that holds, and in parallel the spend stays within the budget but for reserves that fell
    short of the real cost (the fake bills 1000 prompt tokens for a 3-word question)."""
    priced_chat(fake, delay=0.05)
    budget = 4.5 * PER_REQUEST
    key = new_key(client, key_alias=f"budget-{in_flight}", max_budget=budget, budget_duration="30d")
    auth = {"Authorization": f"Bearer {key}"}
    reserve = _reserve(app)
    assert 0 < reserve < PER_REQUEST

    def one(_):
        return app.test_client().post("/v1/chat/completions", json=CHAT, headers=auth).status_code

    with ThreadPoolExecutor(in_flight) as pool:
        statuses = list(pool.map(one, range(20)))
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 400} and statuses.count(400) == 20 - admitted
    fits_one_at_a_time = int((budget - reserve) // PER_REQUEST) + 1  # spend + reserve <= budget
    if in_flight == 1:
        assert admitted == fits_one_at_a_time == 4
    else:
        assert fits_one_at_a_time <= admitted <= int(budget // reserve)
    rows = [r for r in records(app) if r["key_alias"] == f"budget-{in_flight}"]
    assert len(rows) == 20
    assert sorted((r["status"], r["cost"]) for r in rows) == sorted(
        [(200, pytest.approx(PER_REQUEST))] * admitted + [(400, 0.0)] * (20 - admitted))
    row = key_row(app, rows[0]["key_hash"])
    assert row["spend"] == pytest.approx(sum(r["cost"] for r in rows), abs=1e-12)  # no double counting
    assert row["spend"] == pytest.approx(admitted * PER_REQUEST) and row["spend"] <= budget * PER_REQUEST / reserve


def test_reports_group_and_filter_and_a_virtual_key_sees_only_itself(app, client, fake):
    priced_chat(fake)
    alice_key, bob_key = new_key(client, key_alias="alice-app"), new_key(client, key_alias="bob-app")
    for key, user, times in ((alice_key, "alice", 2), (bob_key, "bob", 3)):
        for _ in range(times):
            client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}", "x-end-user": user})
    by_key = client.get("/spend/report?group_by=key", headers=AS_MASTER).json
    totals = {g["key_alias"]: (g["requests"], g["cost"]) for g in by_key["groups"] if g["key_alias"]}
    assert totals["alice-app"] == (2, pytest.approx(2 * PER_REQUEST))
    assert totals["bob-app"] == (3, pytest.approx(3 * PER_REQUEST))
    by_user = client.get("/spend/report?group_by=end_user", headers=AS_MASTER).json
    assert {g["end_user"]: g["requests"] for g in by_user["groups"]}.items() >= {"alice": 2, "bob": 3}.items()
    by_model = client.get("/spend/report?group_by=model", headers=AS_MASTER).json["groups"]
    assert any(g["model"] == "mistral-small-latest" and g["prompt_tokens"] == 5000 for g in by_model)
    (today,) = client.get("/spend/report?group_by=day", headers=AS_MASTER).json["groups"]
    assert today["day"] == time.strftime("%Y-%m-%d", time.gmtime())

    page = client.get("/spend/logs?end_user=bob&page_size=2", headers=AS_MASTER).json
    assert page["total_count"] == 3 and len(page["logs"]) == 2 and page["total_pages"] == 2
    assert {r["end_user"] for r in page["logs"]} == {"bob"}
    assert client.get("/spend/logs?end_user=bob&page_size=2&page=2", headers=AS_MASTER).json["logs"][0]["end_user"] == "bob"
    assert client.get("/spend/logs?start=2999-01-01", headers=AS_MASTER).json["total_count"] == 0
    assert client.get(f"/spend/logs?end={time.time() + 60}&model=mistral-small-latest",
                      headers=AS_MASTER).json["total_count"] == 5

    as_alice = {"Authorization": f"Bearer {alice_key}"}
    own = client.get("/spend/logs?key_alias=bob-app", headers=as_alice).json  # asking for bob changes nothing
    assert own["total_count"] == 2 and {r["key_alias"] for r in own["logs"]} == {"alice-app"}
    assert {g["key_alias"] for g in client.get("/spend/report", headers=as_alice).json["groups"]} == {"alice-app"}
    assert client.get("/spend/logs").status_code == 401
    assert client.get("/spend/report?group_by=weekday", headers=AS_MASTER).status_code in (400, 422)
    assert client.get("/spend/logs?start=yesterday", headers=AS_MASTER).status_code == 400


def test_the_writer_batches_keeps_records_when_the_database_fails_and_flushes_on_close(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'spend.db'}")
    tables.metadata.create_all(engine)
    spend = SpendLog(engine, flush_interval=3600)  # the writer never wakes by itself here
    for i in range(5):
        ex = Exchange(f"r{i}", "chat_completion_v1_chat_completions_post", "POST", "/v1/chat/completions")
        ex.status, ex.cost = 200, 0.001
        spend.record(ex)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE spend_logs RENAME TO spend_logs_away"))
    with pytest.raises(sa.exc.OperationalError):
        spend.flush()
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE spend_logs_away RENAME TO spend_logs"))
    spend.close()
    with engine.connect() as connection:
        ids = [r.request_id for r in connection.execute(sa.text("SELECT request_id FROM spend_logs ORDER BY id"))]
    assert ids == [f"r{i}" for i in range(5)]  # none lost, none twice, in order


def test_the_log_line_is_complete_and_never_holds_a_secret_or_a_prompt(make_app, fake, caplog):
    app = make_app(master_key=MASTER)
    client = app.test_client()
    priced_chat(fake)
    with caplog.at_level(logging.DEBUG):
        key = new_key(client, key_alias="logged-app")
        client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}", "x-end-user": "carol"})
        client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-not-a-key-987654"})
        client.get(f"/key/info?key={key}", headers=AS_MASTER)
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in (MASTER, MISTRAL_KEY, key, "sk-not-a-key-987654", "my private question", "my private answer"):
        assert secret not in text
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.access"]
    chat = next(line for line in lines if line["operation"].startswith("chat") and line["status"] == 200)
    assert chat["key_alias"] == "logged-app" and chat["end_user"] == "carol" and chat["model"] == "mistral-small-latest"
    assert chat["prompt_tokens"] == 1000 and chat["total_tokens"] == 2000
    assert chat["cost"] == pytest.approx(PER_REQUEST) and chat["latency_ms"] > 0 and chat["request_id"]
    assert any(line["status"] == 401 and line["cost"] == 0.0 for line in lines)


def test_bodies_are_logged_only_when_asked(make_app, fake, caplog):
    client = make_app(log_bodies=True).test_client()
    priced_chat(fake)
    with caplog.at_level(logging.INFO, logger="sidecar.access"):
        client.post("/v1/chat/completions", json=CHAT)
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sidecar.access"]
    assert line["request_body"]["messages"][0]["content"] == "my private question"
    assert line["response_body"]["choices"][0]["message"]["content"] == "my private answer"


def test_records_written_from_many_threads_are_each_written_once(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'spend.db'}")
    tables.metadata.create_all(engine)
    spend = SpendLog(engine, flush_interval=0.001)

    def burst(n):
        for i in range(200):
            ex = Exchange(f"t{n}-{i}", "op", "GET", "/x")
            ex.status, ex.cost = 200, 0.0
            spend.record(ex)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spend.close()
    with engine.connect() as connection:
        count, distinct = connection.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM spend_logs")).one()
    assert count == distinct == 1600


def test_the_sqlite_insert_binds_every_column_of_a_spend_record():
    from sidecar.accounting.spend import ROW_COLUMNS, spend_record
    from sidecar.core.exchange import Exchange

    assert tuple(spend_record(Exchange("r1", "op", "POST", "/v1/x"))) == ROW_COLUMNS


def test_a_flushed_batch_moves_into_the_cached_spend_so_the_store_is_read_once_per_ttl(tmp_path, clock):
    """This worker's own spend is exact across flushes without re-reading the store for each one; what
    other workers wrote (here: a change behind the log's back) shows once ``spend_ttl`` has passed."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'spend.db'}")
    tables.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(tables.keys.insert().values(token="k" * 64, key_name="sk-...kkkk", spend=1.0,
                                                      created_at=clock.wall(), updated_at=clock.wall()))
    spend = SpendLog(engine, clock=clock, flush_interval=3600)
    caller = Caller("virtual", key_hash="k" * 64)
    assert spend.key_spend(caller.key_hash) == pytest.approx(1.0)
    with engine.begin() as connection:  # another worker's records land
        connection.execute(tables.keys.update().values(spend=tables.keys.c.spend + 5.0))
    for i in range(3):
        ex = Exchange(f"r{i}", "chat_completion_v1_chat_completions_post", "POST", "/v1/chat/completions")
        ex.status, ex.cost, ex.caller = 200, 0.25, caller
        spend.record(ex)
        assert spend.key_spend(caller.key_hash) == pytest.approx(1.0 + 0.25 * (i + 1))
        spend.flush()  # committed: counted once, and the store is not read again for it
        assert spend.key_spend(caller.key_hash) == pytest.approx(1.0 + 0.25 * (i + 1))
    clock.advance(spend.spend_ttl)
    assert spend.key_spend(caller.key_hash) == pytest.approx(6.75)
    spend.close()
