"""Open mode is safe from web pages: a foreign Host (DNS rebinding) gets 421, a foreign Origin 403, and JSON
operations refuse the content types a page may send cross-site without asking (415)."""

from __future__ import annotations

import pytest

from ..fakes import chat_body

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
MASTER = "sk-master-browser-guard-0123"


@pytest.fixture
def open_client(client, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    return client


@pytest.mark.parametrize("path, body", [("/key/generate", {}), ("/v1/chat/completions", CHAT),
                                        ("/mistral/v1/chat/completions", CHAT)])
def test_open_mode_refuses_a_foreign_host(open_client, fake, path, body):
    response = open_client.post(path, json=body, headers={"Host": "attacker.example"})
    assert response.status_code == 421
    assert response.json["code"] == "misdirected_request"
    assert fake.seen == []
    assert open_client.get("/v1/models", headers={"Host": "attacker.example:4000"}).status_code == 421


@pytest.mark.parametrize("host", ["localhost", "localhost:4000", "127.0.0.1:4000", "127.0.0.2", "[::1]:4000"])
def test_open_mode_answers_loopback_names(open_client, host):
    response = open_client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert response.status_code == 200, response.get_data()


@pytest.mark.parametrize("origin, status", [("http://attacker.example", 403), ("null", 403),
                                            ("http://localhost:3000", 200), ("http://127.0.0.1:8080", 200)])
def test_open_mode_refuses_calls_from_foreign_web_pages(open_client, fake, origin, status):
    response = open_client.post("/v1/chat/completions", json=CHAT, headers={"Origin": origin})
    assert response.status_code == status, response.get_data()
    if status == 403:
        assert response.json["code"] == "cross_origin_refused" and fake.seen == []


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", ["/key/generate", "/v1/chat/completions"])
def test_json_operations_refuse_the_content_types_of_simple_requests(open_client, fake, path, content_type):
    body = b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}'
    response = open_client.post(path, data=body, headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert response.json["code"] == "unsupported_media_type"
    assert fake.seen == []


def test_with_a_master_key_any_host_is_answered_unless_allowed_hosts_says_otherwise(make_app, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    auth = {"Authorization": f"Bearer {MASTER}"}
    anywhere = make_app(master_key=MASTER, host="0.0.0.0").test_client()
    assert anywhere.post("/v1/chat/completions", json=CHAT, headers={**auth, "Host": "api.internal"}).status_code == 200
    assert anywhere.post("/v1/chat/completions", json=CHAT,  # with a key, a page's Origin is no threat
                         headers={**auth, "Origin": "https://app.example"}).status_code == 200
    listed = make_app(master_key=MASTER, host="0.0.0.0", allowed_hosts=("sidecar.internal",)).test_client()
    assert listed.post("/v1/chat/completions", json=CHAT, headers={**auth, "Host": "sidecar.internal:4000"}
                       ).status_code == 200
    assert listed.post("/v1/chat/completions", json=CHAT, headers={**auth, "Host": "localhost"}).status_code == 200
    refused = listed.post("/v1/chat/completions", json=CHAT, headers={**auth, "Host": "api.internal"})
    assert refused.status_code == 421 and "SIDECAR_ALLOWED_HOSTS" in refused.json["message"]
