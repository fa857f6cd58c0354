"""No leaks: the master key, the Mistral key and virtual keys never show in answers, errors, logs or
contracts; redirects are relayed, never followed with the key; admin routes need the master key.

Admin routes are found in openapi.yaml (operations with ``x-sidecar-handler``), so routes added
later are covered without touching this file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from werkzeug.wrappers import Response

from sidecar.core.spec import Spec

from ..conftest import MISTRAL_KEY, ROOT
from ..fakes import FakeMistral, chat_body, chat_events

MASTER = "sk-master-DO-NOT-LEAK-4f9a1c0e"
ADMIN_KEY = "sk-admin-DO-NOT-LEAK-77aa01"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
_SPEC = Spec.load(ROOT / "openapi.yaml")
OWN_ROUTES = [op for op in _SPEC.operations if op.handler and not op.handler.startswith("health.")]


def _path(op) -> str:
    return op.path.replace("{", "").replace("}", "")


@pytest.fixture
def guarded(make_app):
    """An app with a master key (so admin routes are guarded) and an admin key for Mistral's admin API."""
    app = make_app(master_key=MASTER, mistral_admin_api_key=ADMIN_KEY)
    return app.test_client()


def _virtual_key(client, **fields) -> dict:
    response = client.post("/key/generate", json=fields, headers={"Authorization": f"Bearer {MASTER}"})
    assert response.status_code == 200, response.get_data()
    return response.json


def _secrets(*virtual) -> list[str]:
    return [MASTER, MISTRAL_KEY, ADMIN_KEY, *virtual]


def _assert_clean(where: str, text: str, secrets) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:8]}...) leaked into {where}: {text[:500]}"


# -- secrets in answers and logs -----------------------------------------------------------------------
def test_no_secret_reaches_an_answer_or_a_log_line(guarded, fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    fake.on("GET", "/v1/models", json_body={"object": "error", "message": "Unauthorized", "type": "auth"},
            status=401)
    fake.stream("POST", "/v1/conversations", [chat_events(2)[0]])
    alice = _virtual_key(guarded, key_alias="alice", models=["mistral-small-latest"])["key"]
    bob = _virtual_key(guarded, key_alias="bob")["key"]
    secrets = _secrets(alice, bob)
    as_ = {name: {"Authorization": f"Bearer {key}"} for name, key in
           {"master": MASTER, "alice": alice, "bob": bob, "wrong": MASTER + "x", "mistral": MISTRAL_KEY}.items()}
    calls = [
        ("POST", "/v1/chat/completions", as_["alice"], CHAT),
        ("POST", "/v1/chat/completions", as_["alice"], dict(CHAT, model="mistral-large-latest")),  # 403
        ("POST", "/v1/chat/completions", as_["wrong"], CHAT),  # 401
        ("POST", "/v1/chat/completions", as_["mistral"], CHAT),  # 401: the upstream key is no sidecar key
        ("POST", "/v1/chat/completions", {"x-api-key": bob}, dict(CHAT, temperature="hot")),  # 422
        ("POST", "/v1/chat/completions", {"Authorization": f"Basic {alice}"}, CHAT),  # 401, odd scheme
        ("POST", "/v1/conversations", as_["bob"], {"inputs": "hi", "model": "mistral-small-latest", "stream": True}),
        ("GET", "/v1/models", as_["bob"], None),  # upstream 401 relayed
        ("GET", "/v1/no/such/route", as_["alice"], None),  # 404
        ("GET", "/key/list", as_["master"], None),
        ("GET", "/key/info", as_["alice"], None),
        ("GET", "/key/info?key=" + bob, as_["alice"], None),  # refused: someone else's key
        ("GET", "/key/info?key=" + alice, as_["master"], None),
    ]
    calls += [(op.method, _path(op), as_["alice"], None) for op in OWN_ROUTES]
    calls += [(op.method, _path(op), as_["master"], None) for op in OWN_ROUTES if op.handler != "admin.key_regenerate"]
    statuses = set()
    for method, path, headers, body in calls * 3:
        response = guarded.open(path, method=method, headers=headers, json=body)
        text = response.get_data(as_text=True)
        statuses.add(response.status_code)
        _assert_clean(f"{method} {path} -> {response.status_code}", text, secrets)
        _assert_clean(f"headers of {method} {path}", json.dumps(dict(response.headers)), secrets)
    assert {200, 401, 403, 404, 422} <= statuses
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert '"key_alias":"alice"' in logged.replace(" ", "")  # the log names keys by alias ...
    _assert_clean("the logs", logged, secrets)  # ... never by the key itself


def test_errors_from_the_upstream_transport_do_not_carry_the_key(make_app):
    from ..servers import free_port

    client = make_app(master_key=MASTER, mistral_api_base=f"http://user:{MISTRAL_KEY}@127.0.0.1:{free_port()}"
                      ).test_client()
    response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {MASTER}"})
    assert response.status_code == 502
    _assert_clean("a 502", response.get_data(as_text=True), _secrets())


def test_recorded_contracts_hold_no_secret(make_app, fake, tmp_path):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    contracts = tmp_path / "contracts"
    client = make_app(master_key=MASTER, upstream_mode="record", contracts_dir=contracts).test_client()
    alice = _virtual_key(client, key_alias="alice")["key"]
    for key in (MASTER, alice):
        response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    files = [p for p in Path(contracts).rglob("*") if p.is_file()]
    assert files, "record mode wrote no contract"
    for path in files:
        _assert_clean(f"contract {path.name}", path.read_text(errors="replace"), _secrets(alice))


# -- redirects ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_upstream_redirects_are_relayed_never_followed(client, fake, status):
    elsewhere = FakeMistral()
    try:
        target = elsewhere.url + "/v1/chat/completions"
        fake.on("POST", "/v1/chat/completions",
                lambda r: Response(b"", status, {"Location": target, "Content-Type": "application/json"}))
        response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == status
        assert response.headers["Location"] == target
        assert elsewhere.seen == [], "the sidecar followed a redirect to another host"
        assert fake.last.headers["Authorization"] == f"Bearer {MISTRAL_KEY}"  # the key went only to the upstream
    finally:
        elsewhere.close()


# -- who may call the sidecar's own routes -------------------------------------------------------------
@pytest.mark.parametrize("op", [op for op in OWN_ROUTES if op.auth != "none"], ids=lambda op: op.id)
@pytest.mark.parametrize("credentials", [{}, {"Authorization": f"Bearer {MASTER}-not"},
                                         {"Authorization": f"Bearer {MISTRAL_KEY}"}, {"x-api-key": "sk-guess"}],
                         ids=["none", "wrong", "mistral-key", "guess"])
def test_own_routes_refuse_callers_without_a_sidecar_key(guarded, fake, op, credentials):
    response = guarded.open(_path(op), method=op.method, headers=credentials, json={} if op.body_kind else None)
    assert response.status_code == 401, response.get_data()
    assert response.json["type"] == "authentication_error"
    assert fake.seen == []


def test_metrics_are_open_by_default_and_need_the_master_key_when_configured(make_app, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    open_ = make_app(master_key=MASTER).test_client()
    assert open_.get("/metrics").status_code == 200
    guarded = make_app(master_key=MASTER, metrics_auth=True).test_client()
    alice = _virtual_key(guarded, key_alias="alice")
    guarded.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {alice['key']}"})
    for credentials in ({}, {"Authorization": f"Bearer {alice['key']}"}, {"Authorization": f"Bearer {MISTRAL_KEY}"}):
        refused = guarded.get("/metrics", headers=credentials)
        assert refused.status_code == 401 and refused.json["type"] == "authentication_error"
    scraped = guarded.get("/metrics", headers={"Authorization": f"Bearer {MASTER}"})
    assert scraped.status_code == 200 and b"sidecar_requests" in scraped.data
    _assert_clean("/metrics", scraped.get_data(as_text=True), _secrets(alice["key"], alice["token"]))


MASTER_ONLY = [op for op in OWN_ROUTES if op.auth == "master"]


@pytest.mark.parametrize("op", MASTER_ONLY, ids=lambda op: op.id)
@pytest.mark.parametrize("body", ["attempt", "malformed"])
def test_key_administration_needs_the_master_key_before_anything_else(guarded, op, body):
    alice = _virtual_key(guarded, key_alias="alice")
    bob = _virtual_key(guarded, key_alias="bob")
    attempts = {"key": bob["token"], "keys": [bob["token"]], "key_alias": "mallory", "models": []}
    payload = {"json": attempts} if body == "attempt" else {"data": b"{not json", "content_type": "application/json"}
    response = guarded.open(_path(op), method=op.method, headers={"Authorization": f"Bearer {alice['key']}"},
                            **(payload if op.body_kind else {}))
    assert response.status_code == 401, response.get_data()  # never a 422 that would describe the route
    assert response.json["code"] == "master_key_required"
    info = guarded.get("/key/info?key=" + bob["token"], headers={"Authorization": f"Bearer {MASTER}"})
    assert info.status_code == 200 and info.json["info"]["key_alias"] == "bob"  # untouched


def test_every_key_administration_route_is_marked_master_only_in_the_spec():
    assert {op.handler for op in MASTER_ONLY} == {
        "admin.key_generate", "admin.key_update", "admin.key_delete", "admin.key_list", "admin.key_regenerate"}


def test_a_virtual_key_cannot_read_another_keys_info_or_spend(guarded, fake):
    if not any(op.handler == "admin.key_info" for op in OWN_ROUTES):
        pytest.skip("no /key/info route in openapi.yaml yet")
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    alice = _virtual_key(guarded, key_alias="alice")
    bob = _virtual_key(guarded, key_alias="bob")
    for key in (alice, bob):
        assert guarded.post("/v1/chat/completions", json=CHAT,
                            headers={"Authorization": f"Bearer {key['key']}"}).status_code == 200
    as_alice = {"Authorization": f"Bearer {alice['key']}"}
    for ref in (bob["key"], bob["token"]):
        response = guarded.get("/key/info?key=" + ref, headers=as_alice)
        assert response.status_code == 401 and "bob" not in response.get_data(as_text=True)
    own = guarded.get("/key/info", headers=as_alice)
    assert own.status_code == 200 and own.json["info"]["key_alias"] == "alice"

    spend_routes = [op for op in OWN_ROUTES if op.handler.startswith("spend.")]
    for op in spend_routes:
        for query in ("", f"?key_hash={bob['token']}", "?key_alias=bob", "?group_by=key"):
            response = guarded.open(_path(op) + query, method=op.method, headers=as_alice)
            assert response.status_code in (200, 400, 401, 403, 422), response.get_data()
            text = response.get_data(as_text=True)
            assert bob["token"] not in text and '"bob"' not in text, f"{op.path}{query} showed bob's spend: {text}"


# -- an upstream that echoes its credential; a client that puts a key where it is logged -------------------
def test_an_upstream_echoing_its_key_has_it_scrubbed_from_headers_and_json(guarded, fake):
    def echo(request):
        key = request.headers["Authorization"].split()[-1]
        body = {"object": "error", "message": f"bad key {key}", "type": "auth", "param": None, "code": "401"}
        return Response(json.dumps(body), 401, {"Content-Type": "application/json", "X-Echo-Key": key,
                                                "X-Echo-Auth": f"Bearer {key}; scope=all"})
    fake.on("POST", "/v1/chat/completions", echo)
    response = guarded.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {MASTER}"})
    assert fake.last.headers["Authorization"] == f"Bearer {MISTRAL_KEY}"  # the echo really had it
    assert response.status_code == 401
    _assert_clean("relayed headers", json.dumps(dict(response.headers)), _secrets())
    _assert_clean("a JSON answer", response.get_data(as_text=True), _secrets())
    assert response.headers["X-Echo-Key"] == "<scrubbed>"
    assert response.headers["X-Echo-Auth"] == "Bearer <scrubbed>; scope=all"
    assert response.json["message"] == "bad key <scrubbed>"
    assert int(response.headers["Content-Length"]) == len(response.get_data())


def test_a_key_the_client_puts_in_a_path_or_header_is_kept_out_of_logs_and_spend(guarded, fake, caplog):
    caplog.set_level(logging.INFO)
    virtual = _virtual_key(guarded)["key"]
    fake.on("GET", f"/v1/models/{virtual}", json_body={"id": "x", "object": "model"})
    fake.on("GET", f"/v1/models/{MISTRAL_KEY}", json_body={"id": "x", "object": "model"})
    for secret in (virtual, MISTRAL_KEY, MASTER):
        response = guarded.get(f"/v1/models/{secret}", headers={
            "Authorization": f"Bearer {virtual}", "x-request-id": secret, "x-end-user": f"user {secret}"})
        assert response.status_code < 500
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sidecar"))
    assert "/v1/models/" in text or "retrieve_model" in text  # the lines were written
    _assert_clean("log lines", text, _secrets(virtual))
    spend = guarded.application.extensions["sidecar"].accountant.spend
    spend.flush()
    rows = spend.logs({}, size=100)["logs"]
    assert len(rows) >= 3
    _assert_clean("spend records", json.dumps(rows), _secrets(virtual))
    assert any(row["model"] == "<scrubbed>" for row in rows)
