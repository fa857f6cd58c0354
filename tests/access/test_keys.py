"""Virtual keys end to end, on SQLite and on real PostgreSQL: the /key/* API, and what a key may do on
every proxied route (401 unknown/expired/blocked/deleted, 403 model, 400 budget, 429 rpm/tpm/parallel)."""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa

from sidecar import store

from ..databases import postgres_schema
from ..fakes import chat_body, chat_events

MASTER = "sk-master-test-0123456789abcdef"
CHAT = "/v1/chat/completions"
PROMPT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def app(make_app, database_url, fake, tmp_path):
    if database_url.startswith("postgresql"):  # shared databases are migrated deliberately, as in production
        engine = store.make_engine(store.database_url(type("S", (), {"database_url": database_url})))
        store.migrate(engine)
        engine.dispose()
    fake.on("POST", CHAT, json_body=chat_body())
    app = make_app(master_key=MASTER, database_url=database_url, db_path=tmp_path / "local.sqlite3")
    yield app
    pipeline = app.extensions["sidecar"]
    spend = getattr(pipeline.accountant, "spend", None)
    if spend is not None:  # write what is queued before the test's schema goes away
        spend.close()
    pipeline.auth.keys.engine.dispose()


@pytest.fixture
def admin(client):
    """Call a /key/* route with the master key; returns (status, json)."""
    def call(method: str, path: str, body=None, **query):
        response = client.open(path, method=method, json=body, query_string=query,
                               headers={"Authorization": f"Bearer {MASTER}"})
        return response.status_code, response.get_json()
    return call


@pytest.fixture
def new_key(admin):
    def make(**fields) -> str:
        status, answer = admin("POST", "/key/generate", fields)
        assert status == 200, answer
        return answer["key"]
    return make


def chat(client, key: str, body=None, **kwargs):
    return client.post(CHAT, json=body or PROMPT, headers={"Authorization": f"Bearer {key}"}, **kwargs)


def keys(app):
    return app.extensions["sidecar"].auth.keys


# -- the key API ------------------------------------------------------------------------------------------
def test_generate_shows_the_key_once_and_stores_only_its_hash(admin, client, app):
    status, answer = admin("POST", "/key/generate", {"key_alias": "billing-service", "models": ["mistral-small-latest"],
                                                      "max_budget": 5, "budget_duration": "30d", "duration": "1h",
                                                      "rpm_limit": 100, "metadata": {"team": "billing"}})
    assert status == 200
    key = answer["key"]
    assert key.startswith("sk-") and len(key) >= 3 + 43  # token_urlsafe(32): 256 random bits
    assert answer["token"] == hashlib.sha256(key.encode()).hexdigest()
    assert answer["key_name"] == f"sk-...{key[-4:]}" and key not in json.dumps({**answer, "key": None})
    assert answer["key_alias"] == "billing-service" and answer["rpm_limit"] == 100 and answer["spend"] == 0
    assert answer["expires"] and answer["budget_reset_at"] and answer["metadata"] == {"team": "billing"}

    assert chat(client, key).status_code == 200
    with keys(app).engine.connect() as connection:
        dump = json.dumps([list(map(str, row)) for table in ("keys", "spend_logs")
                           for row in connection.execute(sa.text(f"SELECT * FROM {table}"))])
    assert key not in dump and key[3:] not in dump and answer["token"] in dump


def test_generate_with_an_empty_body_as_in_the_litellm_docs(client):
    response = client.post("/key/generate", data="{}", headers={"Authorization": f"Bearer {MASTER}",
                                                                 "Content-Type": "application/json"})
    assert response.status_code == 200 and response.get_json()["key"].startswith("sk-")


@pytest.mark.parametrize("body, field", [({"rpm_limit": "ten"}, "rpm_limit"), ({"budget_duration": "monthly"}, "budget_duration"),
                                         ({"team_id": "t1"}, "team_id"), ({"max_budget": -1}, "max_budget")])
def test_generate_refuses_bad_fields_with_422(admin, body, field):
    status, answer = admin("POST", "/key/generate", body)
    assert status == 422 and answer["detail"][0]["loc"][:2] == ["body", field]


def test_alias_is_unique_among_live_keys(admin, new_key):
    new_key(key_alias="one")
    status, answer = admin("POST", "/key/generate", {"key_alias": "one"})
    assert status == 400 and answer["param"] == "key_alias"
    admin("POST", "/key/delete", {"key_aliases": ["one"]})
    assert admin("POST", "/key/generate", {"key_alias": "one"})[0] == 200


def test_info_list_update_regenerate_delete(admin, new_key, client):
    key = new_key(key_alias="svc", user_id="u1", tpm_limit=1000)
    token = hashlib.sha256(key.encode()).hexdigest()
    status, answer = admin("GET", "/key/info", key=key)
    assert status == 200 and answer["key"] == token and answer["info"]["user_id"] == "u1"
    assert admin("GET", "/key/info", key=token)[1]["info"]["key_alias"] == "svc"

    new_key(user_id="u2")
    status, listed = admin("GET", "/key/list", user_id="u1")
    assert status == 200 and listed["keys"] == [token] and listed["total_count"] == 1
    full = admin("GET", "/key/list", return_full_object="true", size=1)[1]
    assert full["total_pages"] == 2 and full["keys"][0]["token"] == token

    status, updated = admin("POST", "/key/update", {"key": key, "tpm_limit": None, "models": ["codestral-latest"]})
    assert status == 200 and updated["tpm_limit"] is None and updated["models"] == ["codestral-latest"]

    status, regenerated = admin("POST", "/key/regenerate", {"key": key, "key_alias": "svc-2"})
    fresh = regenerated["key"]
    assert status == 200 and fresh != key and regenerated["key_alias"] == "svc-2"
    assert regenerated["models"] == ["codestral-latest"]
    assert chat(client, key).status_code == 401
    assert chat(client, fresh, {**PROMPT, "model": "codestral-latest"}).status_code == 200

    status, deleted = admin("POST", "/key/delete", {"keys": [fresh]})
    assert status == 200 and deleted["deleted_keys"] == [regenerated["token"]]
    assert admin("POST", "/key/delete", {"keys": [fresh]})[0] == 404
    assert admin("GET", "/key/list")[1]["total_count"] == 1


def test_admin_routes_need_the_master_key(client, new_key):
    key = new_key()
    for method, path in [("POST", "/key/generate"), ("GET", "/key/list"), ("POST", "/key/delete"),
                         ("POST", "/key/update"), ("POST", "/key/regenerate")]:
        body = {"/key/delete": {"keys": [key]}, "/key/update": {"key": key}, "/key/regenerate": {"key": key},
                "/key/generate": {}}.get(path)
        for headers in ({"Authorization": f"Bearer {key}"}, {}):
            response = client.open(path, method=method, json=body, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.get_json()["object"] == "error" and key not in response.get_data(as_text=True)


def test_a_virtual_key_reads_only_its_own_info(client, new_key):
    key, other = new_key(key_alias="me"), new_key()
    own = client.get("/key/info", headers={"Authorization": f"Bearer {key}"})
    assert own.status_code == 200 and own.get_json()["info"]["key_alias"] == "me"
    assert client.get("/key/info", query_string={"key": key}, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/key/info", query_string={"key": other},
                      headers={"Authorization": f"Bearer {key}"}).status_code == 401


# -- what a key may do on proxied routes ------------------------------------------------------------------
def _refused(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["object"] == "error" and body["code"] == code, body
    return body


def test_unknown_expired_blocked_and_deleted_keys_get_401(client, admin, new_key, fake, clock):
    _refused(chat(client, "sk-not-a-key"), 401, "invalid_api_key")
    _refused(client.post(CHAT, json=PROMPT), 401, "invalid_api_key")

    expiring = new_key(duration="1h")
    assert chat(client, expiring).status_code == 200
    clock.advance(3601)
    _refused(chat(client, expiring), 401, "key_expired")

    blocked = new_key()
    admin("POST", "/key/update", {"key": blocked, "blocked": True})
    _refused(chat(client, blocked), 401, "key_blocked")
    admin("POST", "/key/update", {"key": blocked, "blocked": False})
    assert chat(client, blocked).status_code == 200

    deleted = new_key()
    admin("POST", "/key/delete", {"keys": [deleted]})
    _refused(chat(client, deleted), 401, "key_deleted")
    assert len([s for s in fake.seen if s.path == CHAT]) == 2  # refused requests never reach Mistral


def test_model_outside_the_allowlist_gets_403_on_every_kind_of_route(client, new_key):
    key = new_key(models=["mistral-small-latest"])
    assert chat(client, key).status_code == 200
    _refused(chat(client, key, {**PROMPT, "model": "mistral-large-latest"}), 403, "model_not_allowed")
    form = client.post("/v1/audio/transcriptions", data={"model": "voxtral-mini-latest", "file": (b"RIFF", "a.wav")},
                       headers={"Authorization": f"Bearer {key}"}, content_type="multipart/form-data")
    _refused(form, 403, "model_not_allowed")
    path = client.delete("/v1/models/ft:open-mistral-7b:abc", headers={"Authorization": f"Bearer {key}"})
    _refused(path, 403, "model_not_allowed")
    conversation = client.post("/v1/conversations", json={"model": "mistral-large-latest", "inputs": "hi"},
                               headers={"Authorization": f"Bearer {key}"})  # declared in the schema's allOf
    _refused(conversation, 403, "model_not_allowed")


def test_budget_is_enforced_then_resets_with_its_period(app, client, new_key, clock):
    key = new_key(max_budget=0.000002, budget_duration="1h")
    small = {**PROMPT, "max_tokens": 1}  # reserves (1 + 4 prompt tokens) * $0.15/M + 1 * $0.6/M = $0.00000135
    first = chat(client, key, small)
    assert first.status_code == 200 and float(first.headers["x-sidecar-cost"]) > 0.000002  # the fake bills 17 tokens
    body = _refused(chat(client, key, small), 400, "budget_exceeded")  # seen at once: no cache to wait for
    assert "max_budget $0.000002" in body["message"] and "spent $0.0000" in body["message"]
    # Without max_tokens the request reserves 1024 output tokens, more than the whole budget.
    fresh = new_key(max_budget=0.000002, budget_duration="1h")
    body = _refused(chat(client, fresh), 400, "budget_exceeded")
    assert "This request reserves up to $0.000615" in body["message"]

    app.extensions["sidecar"].accountant.spend.flush()  # what the writer does within its interval
    clock.advance(3601)
    last = chat(client, key, small)
    assert last.status_code == 200, last.get_json()  # a new period starts with nothing spent


def test_rpm_limit_gives_429_with_retry_after(client, new_key):
    key = new_key(rpm_limit=2)
    assert [chat(client, key).status_code for _ in range(2)] == [200, 200]
    refused = chat(client, key)
    _refused(refused, 429, "rpm_limit_exceeded")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_tpm_limit_counts_tokens_of_finished_requests(client, new_key):
    key = new_key(tpm_limit=30)  # each fake answer uses 17 tokens
    small = {**PROMPT, "max_tokens": 5}  # reserves 1 + 4 prompt tokens and 5 of output: 10
    assert [chat(client, key, small).status_code for _ in range(2)] == [200, 200]  # 0 + 10, then 17 + 10
    refused = _refused(chat(client, key, small), 429, "tpm_limit_exceeded")
    assert "34 of its 30 tokens" in refused["message"]  # settled to the 17 each really used
    # Without max_tokens a request reserves 1024 output tokens: more than the whole minute, so it
    # passes only alone, when the window is empty.
    other = new_key(tpm_limit=30)
    assert chat(client, other).status_code == 200
    assert "this request reserves 1029" in _refused(chat(client, other), 429, "tpm_limit_exceeded")["message"]


def test_parallel_limit_holds_until_a_stream_is_closed(client, new_key, fake):
    fake.stream("POST", CHAT, chat_events(3))
    key = new_key(max_parallel_requests=1)
    streaming = chat(client, key, {**PROMPT, "stream": True})
    assert streaming.status_code == 200
    refused = chat(client, key)
    _refused(refused, 429, "parallel_limit_exceeded")
    assert refused.headers["Retry-After"] == "1"
    assert b"[DONE]" in b"".join(streaming.response)
    streaming.close()
    assert chat(client, key, {**PROMPT, "stream": True}).status_code == 200


def test_an_upstream_error_releases_the_parallel_slot(client, new_key, fake):
    key = new_key(max_parallel_requests=1)
    fake.on("POST", CHAT, json_body={"object": "error", "message": "busy"}, status=503)
    assert [chat(client, key).status_code for _ in range(2)] == [503, 503]
    fake.on("POST", CHAT, json_body=chat_body())
    assert chat(client, key).status_code == 200


def test_open_mode_lets_any_token_through_but_still_applies_virtual_keys(make_app, tmp_path, fake, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("open mode is exercised on SQLite only")
    fake.on("POST", CHAT, json_body=chat_body())
    client = make_app(master_key=None, database_url=database_url).test_client()
    assert chat(client, "anything").status_code == 200  # as the LiteLLM docs call it: "Bearer anything"
    key = client.post("/key/generate", json={"rpm_limit": 1}).get_json()["key"]
    assert chat(client, key).status_code == 200
    assert chat(client, key).status_code == 429
