"""Readiness that tells the truth, and a store outage answered with 503 instead of tracebacks.

PostgreSQL (127.0.0.1:5432, skipped with the reason when absent) is reached through a TCP proxy the
test kills and restarts: while it is down, readiness says so, requests that need the store get 503
``store_unavailable``, the others are served, and after it is back every answered request has its
spend record. The outage is logged twice (down, back), never once per request.
"""

from __future__ import annotations

import logging
import time

import pytest

from sidecar.store import make_engine, migrate

from ..conftest import MISTRAL_KEY
from ..databases import PG_HOST, postgres_schema
from ..fakes import TcpProxy, chat_body

MASTER = "sk-master-outage-test-0123"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}


def test_readiness_names_the_store_and_is_ready_when_it_answers(client):
    response = client.get("/health/readiness")
    assert response.status_code == 200, response.get_data()
    assert response.json["status"] == "ready" and "failing" not in response.json


def test_readiness_is_503_when_redis_is_configured_but_down(make_app):
    client = make_app(redis_url="redis://127.0.0.1:9/0").test_client()  # port 9 (discard): nothing listens
    response = client.get("/health/readiness")
    assert response.status_code == 503
    assert list(response.json["failing"]) == ["limiter"]
    assert response.json["failing"]["limiter"].startswith("Redis does not answer")
    assert "limiter_unavailable" in response.json["limiter_down_policy"]
    assert client.get("/health/liveliness").status_code == 200  # liveness does not look at dependencies


@pytest.fixture
def proxied_postgres():
    with postgres_schema() as url:
        host, _, port = PG_HOST.partition(":")
        proxy = TcpProxy((host, int(port or 5432))).start()
        proxied = url.replace(f"@{PG_HOST}/", f"@127.0.0.1:{proxy.port}/")
        engine = make_engine(proxied.replace("postgresql://", "postgresql+psycopg://"))
        migrate(engine)
        engine.dispose()
        try:
            yield proxied, proxy
        finally:
            proxy.stop()


def test_a_store_outage_is_503_logged_once_and_loses_no_spend_record(make_app, fake, proxied_postgres, caplog):
    caplog.set_level(logging.INFO)
    url, proxy = proxied_postgres
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    app = make_app(database_url=url, master_key=MASTER)
    client = app.test_client()
    master = {"Authorization": f"Bearer {MASTER}"}
    key = client.post("/key/generate", json={"key_alias": "outage"}, headers=master).json["key"]
    virtual = {"Authorization": f"Bearer {key}"}
    answered = 1
    assert client.post("/v1/chat/completions", json=CHAT, headers=virtual).status_code == 200
    answered += 1

    proxy.stop()
    time.sleep(0.6)  # the key cache (0.5 s) forgets the key: the next lookup needs the store
    statuses = []
    for _ in range(10):
        statuses.append(client.post("/v1/chat/completions", json=CHAT, headers=virtual).status_code)
        statuses.append(client.post("/v1/chat/completions", json=CHAT, headers=master).status_code)
    answered += len(statuses)
    refused = client.post("/v1/chat/completions", json=CHAT, headers=virtual)
    answered += 1
    assert refused.status_code == 503 and refused.json["code"] == "store_unavailable"
    assert statuses.count(503) == 10 and statuses.count(200) == 10  # the master key needs no store
    ready = client.get("/health/readiness")
    assert ready.status_code == 503 and list(ready.json["failing"]) == ["store"]
    assert "OperationalError" in ready.json["failing"]["store"]

    proxy.start()
    deadline = time.monotonic() + 15
    while client.get("/health/readiness").status_code != 200:
        assert time.monotonic() < deadline, "readiness did not come back after the store did"
        time.sleep(0.2)
    assert client.post("/v1/chat/completions", json=CHAT, headers=virtual).status_code == 200
    answered += 1

    spend = app.extensions["sidecar"].accountant.spend
    spend.flush()
    records = spend.logs({}, size=1000)["total_count"]
    assert records == answered  # /key/generate, the chats before, during and after the outage

    lines = [r for r in caplog.records if r.name.startswith("sidecar")]
    assert sum("store unavailable" in r.getMessage() for r in lines) == 1
    assert sum("store available again" in r.getMessage() for r in lines) == 1
    assert not any(r.exc_info for r in lines), "a traceback was logged during the outage"
    assert MISTRAL_KEY not in caplog.text
