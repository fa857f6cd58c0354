"""Pass-through: every operation routed, bodies forwarded byte for byte, errors in Mistral's shape."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from werkzeug.wrappers import Response

from sidecar.core.spec import Spec

from ..conftest import MISTRAL_KEY, ROOT
from ..fakes import chat_body, chat_events

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "I am going to Paris, what should I see?"}]}


def test_every_spec_operation_has_a_route_under_v1_and_mistral(app):
    spec = Spec.load(ROOT / "openapi.yaml")
    rules = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods}
    from sidecar.core.spec import flask_rule
    missing = [
        (e.method, prefix + e.path)
        for e in spec.endpoints if e.plain.proxied
        for prefix in ("", "/mistral")
        if (prefix + flask_rule(e.path), e.method) not in rules
    ]
    assert not missing
    assert sum(1 for e in spec.endpoints if e.plain.proxied) >= 284


def test_chat_is_forwarded_byte_for_byte_with_the_real_key(client, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    raw = b'{"model": "mistral-small-latest",  "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": 1}}'
    response = client.post("/mistral/v1/chat/completions?trace=1", data=raw,
                           headers={"Content-Type": "application/json", "Authorization": "Bearer sk-client",
                                    "Connection": "keep-alive", "X-Custom": "kept"})
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "Hello!"
    seen = fake.last
    assert seen.body == raw
    assert seen.path == "/v1/chat/completions" and seen.query == "trace=1"
    assert seen.headers["Authorization"] == f"Bearer {MISTRAL_KEY}"
    assert seen.headers.get("X-Custom") == "kept"
    assert "sk-client" not in json.dumps(seen.headers)


def test_invalid_body_gets_422_and_never_reaches_upstream(client, fake):
    body = dict(CHAT, max_completion_tokens=5)  # native route: no OpenAI translation (see test_dialect.py)
    response = client.post("/mistral/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json == {"detail": [{"loc": ["body", "max_completion_tokens"],
                                         "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]}
    assert fake.seen == []


@pytest.mark.parametrize("body, loc", [
    ({"messages": [{"role": "user", "content": "x"}]}, ["body", "model"]),
    (dict(CHAT, temperature="hot"), ["body", "temperature"]),
    (dict(CHAT, messages="not a list"), ["body", "messages"]),
])
def test_schema_violations_name_the_field(client, fake, body, loc):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json["detail"][0]["loc"] == loc
    assert set(response.json["detail"][0]) >= {"loc", "msg", "type"}
    assert fake.seen == []


def test_query_and_path_parameters_are_validated(client, fake):
    response = client.get("/v1/files?page=notanumber")
    assert response.status_code == 422
    assert response.json["detail"][0]["loc"] == ["query", "page"]
    fake.on("GET", "/v1/files", json_body={"data": [], "object": "list", "total": 0})
    assert client.get("/v1/files?page=2&page_size=10").status_code == 200
    assert fake.last.query == "page=2&page_size=10"


@pytest.mark.parametrize("send, status, code", [
    (lambda c: c.post("/v1/chat/completions", data=b'{"model": ', content_type="application/json"), 400, "invalid_json"),
    (lambda c: c.post("/v1/chat/completions", data=b"\xff\xfe{}", content_type="application/json"), 400, "invalid_utf8"),
    (lambda c: c.get("/v1/no/such/route"), 404, "not_found"),
    (lambda c: c.delete("/v1/chat/completions"), 405, "method_not_allowed"),
    (lambda c: c.post("/v1/chat/completions", data=b"a=b", content_type="application/x-www-form-urlencoded"), 415,
     "unsupported_media_type"),
])
def test_bad_requests_get_the_mistral_error_shape(client, fake, send, status, code):
    response = send(client)
    assert response.status_code == status
    assert set(response.json) == {"object", "message", "type", "param", "code"}
    assert response.json["object"] == "error" and response.json["code"] == code
    assert fake.seen == []


def test_oversized_body_is_refused_before_reading(make_app, fake):
    client = make_app(max_body_bytes=1000).test_client()
    response = client.post("/v1/chat/completions", data=b"{" + b" " * 5000 + b"}", content_type="application/json")
    assert response.status_code == 413
    assert fake.seen == []


def test_upstream_errors_are_relayed_unchanged(client, fake):
    error = {"object": "error", "message": "Rate limit exceeded", "type": "rate_limited", "param": None, "code": "1300"}
    fake.on("POST", "/v1/chat/completions", json_body=error, status=429, headers={"Retry-After": "7"})
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.json == error
    assert response.headers["Retry-After"] == "7"


def test_hop_by_hop_headers_are_not_relayed_back(client, fake):
    fake.on("GET", "/v1/models", lambda r: Response(b'{"object":"list","data":[]}', 200, {
        "Content-Type": "application/json", "Keep-Alive": "timeout=5", "mistral-correlation-id": "abc"}))
    response = client.get("/v1/models")
    assert response.headers["mistral-correlation-id"] == "abc"
    assert "Keep-Alive" not in response.headers


def test_first_event_arrives_while_upstream_holds_the_rest(client, fake):
    gate = threading.Event()
    fake.stream("POST", "/v1/chat/completions", chat_events(4), gate=gate)
    response = client.post("/v1/chat/completions", json=dict(CHAT, stream=True), buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    chunks = iter(response.response)
    first = next(chunks)
    assert first.startswith(b"data: ") and b'"t0 "' in first
    assert not gate.is_set()  # upstream is still holding events 2..4
    gate.set()
    rest = b"".join(chunks)
    response.close()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert rest.count(b"data: ") == 4


def test_stream_cut_midway_ends_with_an_error_event(client, fake):
    fake.cut_stream("POST", "/v1/chat/completions")
    response = client.post("/v1/chat/completions", json=dict(CHAT, stream=True))
    text = response.get_data()
    assert text.startswith(b"data: ")
    last = text.strip().split(b"\n\n")[-1]
    assert json.loads(last[len(b"data: "):])["object"] == "error"


def test_stream_twin_is_chosen_by_the_stream_flag(client, fake):
    events = [b'event: conversation.response.started\ndata: {"type":"conversation.response.started","conversation_id":"c1"}\n\n']
    fake.stream("POST", "/v1/conversations", events)
    response = client.post("/v1/conversations", json={"inputs": "hello", "model": "mistral-small-latest", "stream": True})
    assert response.status_code == 200, response.json
    assert b"conversation.response.started" in response.get_data()


def test_multipart_upload_is_streamed_and_checked_for_required_parts(client, fake):
    fake.on("POST", "/v1/files", json_body={"id": "f1", "object": "file", "bytes": 3, "created_at": 1,
                                             "filename": "a.jsonl", "purpose": "batch", "sample_type": "batch_request",
                                             "source": "upload"})
    import io
    payload = b"x" * (2 * 1024 * 1024)
    response = client.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(payload), "a.jsonl")},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    assert payload in fake.last.body and b'name="purpose"' in fake.last.body
    fake.seen.clear()
    response = client.post("/v1/files", data={"purpose": "batch"}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert response.json["detail"][0]["loc"] == ["body", "file"]
    assert fake.seen == []


def test_binary_download_is_relayed_as_a_stream(client, fake):
    blob = bytes(range(256)) * 4096
    file_id = "7f3b1c2e-5a4d-4e8f-9b6a-1c2d3e4f5a6b"  # the spec says a file id is a UUID
    fake.on("GET", f"/v1/files/{file_id}/content", lambda r: Response(blob, 200, {"Content-Type": "application/octet-stream"}))
    response = client.get(f"/v1/files/{file_id}/content", buffered=False)
    assert response.is_streamed
    assert response.get_data() == blob


def _refusing_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_a_502(make_app):
    client = make_app(mistral_api_base=f"http://127.0.0.1:{_refusing_port()}").test_client()
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["code"] == "upstream_unavailable"
    assert MISTRAL_KEY not in response.get_data(as_text=True)


def test_read_timeout_is_a_504(make_app, fake):
    import time

    def slow(request):
        time.sleep(1.5)
        return Response(json.dumps(chat_body()), 200, {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", slow)
    client = make_app(read_timeout=0.3).test_client()
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 504
    assert response.json["code"] == "upstream_timeout"


def test_health_answers_without_upstream(make_app):
    client = make_app(mistral_api_base=f"http://127.0.0.1:{_refusing_port()}").test_client()
    assert client.get("/health/liveliness").json["status"] == "ok"
    assert client.get("/health/readiness").status_code == 200


def test_plain_chat_cost_is_reported_in_a_header(client, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(prompt=1000, completion=500))
    response = client.post("/v1/chat/completions", json=CHAT)
    # mistral-small-latest: $0.15 / M input, $0.6 / M output
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(0.00045)


def test_the_seed_curl_body_with_a_trailing_comma_works(client, fake):
    """LiteLLM's Mistral page sends `"model": "mistral-large-latest",` before the closing brace."""
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    raw = (b'{\n "messages": [{"role": "user", "content": "I am going to Paris, what should I see?"}],\n'
           b' "max_tokens": 2048, "temperature": 0.8, "top_p": 0.1,\n "model": "mistral-large-latest",\n}')
    response = client.post("/mistral/v1/chat/completions", data=raw, content_type="application/json")
    assert response.status_code == 200
    forwarded = json.loads(fake.last.body)
    assert forwarded["model"] == "mistral-large-latest" and forwarded["max_tokens"] == 2048


def test_other_malformed_json_is_not_repaired(client, fake):
    response = client.post("/v1/chat/completions", data=b'{"model": "x",, "messages": []}', content_type="application/json")
    assert response.status_code == 400
    assert fake.seen == []
