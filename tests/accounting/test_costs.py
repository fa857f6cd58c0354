"""Every priced operation, through the app against the fake Mistral: usage read, cost computed from
the price table (checked here by hand), one spend record each; free operations cost 0, unpriced null."""

from __future__ import annotations

import io
import json
import logging
import math

import pytest

from sidecar.core.usage import Usage

from ..fakes import OCR_ANSWER, OCR_REQUEST, TRANSCRIPT, chat_body, chat_events

M = 1e6
SMALL = (0.15, 0.6)  # mistral-small-latest, USD per million tokens in / out (prices.yaml)


def conversation_body(prompt=10, completion=20):
    return {"object": "conversation.response", "conversation_id": "conv_1", "outputs": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "connector_tokens": 0, "connectors": {}}}


def conversation_events(prompt=10, completion=20) -> list[bytes]:
    done = {"type": "conversation.response.done", "created_at": "2026-01-01T00:00:00Z",
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    return [b'event: conversation.response.started\ndata: {"type":"conversation.response.started"}\n\n',
            b'event: message.output.delta\ndata: {"type":"message.output.delta","content":"usage is fine"}\n\n',
            b"event: conversation.response.done\ndata: " + json.dumps(done).encode() + b"\n\n"]


AGENT_CHAT = {"agent_id": "ag_1", "messages": [{"role": "user", "content": "hi"}]}

# (id, method, path, request, upstream answer (JSON body or SSE events), expected usage fields, expected cost)
CASES = [
    ("chat", "POST", "/v1/chat/completions",
     {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]},
     chat_body(prompt=12, completion=5), {"prompt_tokens": 12, "completion_tokens": 5},
     12 * SMALL[0] / M + 5 * SMALL[1] / M),
    ("chat-stream", "POST", "/v1/chat/completions",
     {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}], "stream": True},
     chat_events(3, prompt=10, completion=3), {"prompt_tokens": 10, "completion_tokens": 3},
     10 * SMALL[0] / M + 3 * SMALL[1] / M),
    ("fim", "POST", "/v1/fim/completions", {"model": "codestral-latest", "prompt": "def f(", "suffix": "):"},
     chat_body(model="codestral-2508", prompt=20, completion=10), {"prompt_tokens": 20, "completion_tokens": 10},
     20 * 0.3 / M + 10 * 0.9 / M),
    ("fim-stream", "POST", "/v1/fim/completions", {"model": "codestral-latest", "prompt": "def f(", "stream": True},
     chat_events(2, model="codestral-2508", prompt=8, completion=4), {"prompt_tokens": 8, "completion_tokens": 4},
     8 * 0.3 / M + 4 * 0.9 / M),
    # An agent request names no model: the answer's model is priced.
    ("agents", "POST", "/v1/agents/completions", AGENT_CHAT,
     chat_body(model="mistral-large-latest", prompt=100, completion=40), {"prompt_tokens": 100, "completion_tokens": 40},
     100 * 0.5 / M + 40 * 1.5 / M),
    ("agents-stream", "POST", "/v1/agents/completions", dict(AGENT_CHAT, stream=True),
     chat_events(4, model="mistral-large-2512", prompt=50, completion=4), {"prompt_tokens": 50, "completion_tokens": 4},
     50 * 0.5 / M + 4 * 1.5 / M),
    ("embeddings", "POST", "/v1/embeddings", {"model": "mistral-embed", "input": ["a", "b"]},
     {"id": "e", "object": "list", "model": "mistral-embed", "data": [],
      "usage": {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}},
     {"prompt_tokens": 1000, "completion_tokens": 0}, 1000 * 0.1 / M),
    # Megabytes of vectors: usage is read from the answer's closing fields, not a parse of it all.
    ("embeddings-large", "POST", "/v1/embeddings", {"model": "mistral-embed", "input": ["a"] * 64},
     {"id": "e", "object": "list", "data": [{"object": "embedding", "embedding": [-0.0123456] * 1024, "index": i}
                                            for i in range(64)],
      "model": "mistral-embed", "usage": {"prompt_tokens": 4096, "completion_tokens": 0, "total_tokens": 4096}},
     {"prompt_tokens": 4096, "completion_tokens": 0}, 4096 * 0.1 / M),
    ("ocr", "POST", "/v1/ocr", OCR_REQUEST, OCR_ANSWER, {"pages": 3}, 3 * 4.0 / 1000),
    ("ocr-annotated", "POST", "/v1/ocr",
     dict(OCR_REQUEST, document_annotation_format={"type": "json_schema", "json_schema": {
         "name": "receipt", "schema": {"type": "object", "properties": {"total": {"type": "number"}}}}}),
     OCR_ANSWER, {"pages": 3}, 3 * 5.0 / 1000),
    ("transcription", "POST", "/v1/audio/transcriptions", {"model": "voxtral-mini-latest", "file_url": "https://x/a.mp3"},
     TRANSCRIPT, {"audio_seconds": 90.0}, 90 / 60 * 0.003),
    ("speech", "POST", "/v1/audio/speech", {"model": "voxtral-mini-tts-latest", "input": "Bonjour le monde"},
     {"audio_data": "AAAA"}, {"characters": 16}, 16 * 16.0 / M),
    ("conversation", "POST", "/v1/conversations", {"model": "mistral-medium-latest", "inputs": "hello"},
     conversation_body(10, 20), {"prompt_tokens": 10, "completion_tokens": 20}, 10 * 1.5 / M + 20 * 7.5 / M),
    ("conversation-stream", "POST", "/v1/conversations",
     {"model": "mistral-medium-latest", "inputs": "hello", "stream": True},
     conversation_events(7, 3), {"prompt_tokens": 7, "completion_tokens": 3}, 7 * 1.5 / M + 3 * 7.5 / M),
    # Free or usage-less operations: cost 0, never null.
    ("models-list", "GET", "/v1/models", None, {"object": "list", "data": []}, {}, 0.0),
    ("files-list", "GET", "/v1/files", None, {"data": [], "object": "list", "total": 0}, {}, 0.0),
    ("batch-jobs", "GET", "/v1/batch/jobs", None, {"data": [], "object": "list", "total": 0}, {}, 0.0),
]


def spend_rows(app) -> list[dict]:
    """The records the app has written, oldest first (the writer is flushed first)."""
    spend = app.extensions["sidecar"].accountant.spend
    spend.flush()
    return list(reversed(spend.logs({}, size=1000)["logs"]))


def call(client, method, path, request, headers=None):
    """One request, read to the end and closed, as a WSGI server does (a stream is accounted on close)."""
    if path == "/v1/audio/transcriptions":
        response = client.post(path, data=request, content_type="multipart/form-data", headers=headers)
    elif request is None:
        response = client.open(path, method=method, headers=headers)
    else:
        response = client.open(path, method=method, json=request, headers=headers)
    response.get_data()
    response.close()
    return response


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_operation_is_priced_from_the_table(app, client, fake, case):
    name, method, path, request, answer, usage, cost = case
    if isinstance(answer, list):
        fake.stream(method, path, answer)
    else:
        fake.on(method, path, json_body=answer)
    response = call(client, method, path, request)
    body = response.get_data()
    assert response.status_code == 200, body
    if not isinstance(answer, list):
        assert json.loads(body) == answer  # relayed whole, whatever accounting read of it
    (row,) = spend_rows(app)
    assert row["cost"] == pytest.approx(cost, rel=1e-9, abs=1e-12)
    assert row["cost"] is not None
    for field, value in usage.items():
        assert row[field] == value, field
    assert row["status"] == 200 and row["streamed"] is name.endswith("-stream")
    assert row["operation"] and row["route"] == path and row["request_id"] == response.headers["x-request-id"]
    assert row["latency_ms"] > 0
    if not name.endswith("-stream"):
        assert float(response.headers["x-sidecar-cost"]) == pytest.approx(cost, rel=1e-9, abs=1e-12)


def test_an_unpriced_model_is_recorded_with_null_cost_and_a_warning(app, client, fake, caplog):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(model="ft:my-own-model", prompt=3, completion=2))
    with caplog.at_level(logging.WARNING, logger="sidecar.accounting.accountant"):
        response = client.post("/v1/chat/completions",
                               json={"model": "ft:my-own-model", "messages": [{"role": "user", "content": "x"}]})
        client.post("/v1/chat/completions", json={"model": "ft:my-own-model", "messages": [{"role": "user", "content": "y"}]})
    assert response.status_code == 200 and "x-sidecar-cost" not in response.headers
    rows = spend_rows(app)
    assert [r["cost"] for r in rows] == [None, None]
    assert rows[0]["prompt_tokens"] == 3 and rows[0]["model"] == "ft:my-own-model"
    warnings = [r.getMessage() for r in caplog.records if "no price" in r.getMessage()]
    assert len(warnings) == 1 and "ft:my-own-model" in warnings[0]  # once per model, not once per request


def test_config_model_prices_override_the_packaged_table(make_app, fake, tmp_path):
    from sidecar.core.config import load

    path = tmp_path / "config.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: house-model\n"
        "    litellm_params: {model: mistral/ft:mistral-small:abc}\n"
        "    model_info: {input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}\n"
        "  - model_name: mistral-small-latest\n"
        "    litellm_params: {model: mistral/mistral-small-latest}\n"
        "    model_info: {input_cost_per_token: 0.000001, output_cost_per_token: 0.000001}\n")
    app = make_app(config=load(path, {}), config_path=path)
    client = app.test_client()
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(model="ft:mistral-small:abc", prompt=10, completion=5))
    response = client.post("/v1/chat/completions", json={"model": "house-model", "messages": [{"role": "user", "content": "x"}]})
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(10 * 1e-6 + 5 * 2e-6)
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(prompt=10, completion=5))
    response = client.post("/v1/chat/completions", json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}]})
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(15 / M)


@pytest.mark.parametrize("status", [400, 429, 500])
def test_upstream_errors_cost_nothing(app, client, fake, status):
    fake.on("POST", "/v1/chat/completions", json_body={"object": "error", "message": "no"}, status=status)
    response = client.post("/v1/chat/completions", json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == status
    (row,) = spend_rows(app)
    assert row["status"] == status and row["cost"] == 0.0


def test_refused_requests_are_recorded_with_cost_zero(make_app, fake):
    app = make_app(master_key="sk-master-test-0123456789")
    client = app.test_client()
    assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 401
    assert client.post("/v1/chat/completions", json={"model": "m"},
                       headers={"Authorization": "Bearer sk-master-test-0123456789"}).status_code == 422
    rows = spend_rows(app)
    assert [(r["status"], r["cost"], r["error"] is not None) for r in rows] == [(401, 0.0, True), (422, 0.0, True)]
    assert fake.seen == []


def test_a_stream_cut_before_its_usage_records_what_it_knows(app, client, fake):
    fake.stream("POST", "/v1/chat/completions", chat_events(3)[:2])  # no usage chunk, no [DONE]
    response = client.post("/v1/chat/completions",
                           json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}], "stream": True})
    response.get_data()
    response.close()
    (row,) = spend_rows(app)
    # Mistral bills a cut stream all the same: the prompt estimated from the request ("x": 1 character
    # and one message's framing), the completion counted from the text relayed ("t0 t1 ": 6 characters).
    assert row["streamed"] and row["estimated"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1 + 4, 2)
    assert row["cost"] == pytest.approx((5 * 0.15 + 2 * 0.6) / M)
    logs = client.get("/spend/logs").get_json()["logs"]
    assert logs[0]["estimated"] is True


def test_a_long_cut_stream_is_charged_for_the_text_relayed(app, client, fake):
    """Past the few events parsed exactly, the text is measured from the events' sizes alone."""
    words = [f"word{i:03d} " for i in range(200)]  # 8 characters each
    events = [b"data: " + json.dumps({"id": "cmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}).encode()
              + b"\n\n" for w in words]
    fake.stream("POST", "/v1/chat/completions", events)
    response = client.post("/v1/chat/completions", json={"model": "mistral-small-latest", "stream": True,
                                                         "messages": [{"role": "user", "content": "x"}]})
    response.get_data()
    response.close()
    (row,) = spend_rows(app)
    assert row["estimated"] and row["completion_tokens"] == math.ceil(200 * 8 / 3.5)


@pytest.mark.parametrize("send", ["header", "custom-header", "user-field"])
def test_the_end_user_is_recorded_and_user_never_reaches_mistral(make_app, fake, send):
    app = make_app(end_user_header="x-customer") if send == "custom-header" else make_app()
    client = app.test_client()
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}]}
    headers = {}
    if send == "header":
        headers["x-end-user"] = "alice"
    elif send == "custom-header":
        headers["x-customer"] = "alice"
    else:
        body["user"] = "alice"
    assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    (row,) = spend_rows(app)
    assert row["end_user"] == "alice"
    forwarded = fake.last
    assert "user" not in json.loads(forwarded.body)
    assert "alice" not in json.dumps(forwarded.headers)


def test_speech_is_priced_from_the_request_text_not_the_audio(app, client, fake):
    fake.on("POST", "/v1/audio/speech", json_body={"audio_data": "QUJD" * 1000})
    response = client.post("/v1/audio/speech", json={"model": "voxtral-mini-tts-latest", "input": "é" * 100})
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(100 * 16.0 / M)
    assert spend_rows(app)[0]["characters"] == 100


def test_transcription_upload_is_priced_by_audio_seconds(app, client, fake):
    fake.on("POST", "/v1/audio/transcriptions", json_body=TRANSCRIPT)
    response = client.post("/v1/audio/transcriptions", content_type="multipart/form-data",
                           data={"model": "voxtral-mini-latest", "file": (io.BytesIO(b"RIFF0000WAVE"), "a.wav")})
    assert response.status_code == 200
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(1.5 * 0.003)


def test_batch_pricing_applies_the_discount():
    from sidecar.core.pricing import PriceTable

    table = PriceTable.load()
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert table.cost("mistral-small-latest", usage, batch=True) == pytest.approx(
        table.cost("mistral-small-latest", usage) * (1 - table.batch_discount))


def test_seed_004s_alias_bills_as_open_mistral_nemo(make_app, fake, tmp_path, caplog):
    from sidecar.core.config import load

    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n"
                    "  - model_name: mistral-nemo\n"
                    "    litellm_params:\n"
                    "      model: mistral/open-mistral-nemo\n"
                    "      api_key: os.environ/MISTRAL_API_KEY\n")
    app = make_app(config=load(path, {"MISTRAL_API_KEY": "sk-test"}), config_path=path)
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(model="open-mistral-nemo", prompt=10, completion=5))
    with caplog.at_level(logging.WARNING, logger="sidecar.accounting.accountant"):
        response = app.test_client().post("/v1/chat/completions",
                                          json={"model": "mistral-nemo", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200 and json.loads(fake.seen[-1].body)["model"] == "open-mistral-nemo"
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(15 * 0.15 / M)
    (row,) = spend_rows(app)
    assert row["model"] == "mistral-nemo" and row["cost"] == pytest.approx(15 * 0.15 / M)
    assert not [r for r in caplog.records if "no price" in r.getMessage()]


def test_the_unpriced_warning_names_the_setting_users_have(client, fake, caplog):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(model="ft:other", prompt=3, completion=2))
    with caplog.at_level(logging.WARNING, logger="sidecar.accounting.accountant"):
        client.post("/v1/chat/completions", json={"model": "ft:other", "messages": [{"role": "user", "content": "x"}]})
    (warning,) = [r.getMessage() for r in caplog.records if "no price" in r.getMessage()]
    assert "model_info" in warning and "config.yaml" in warning and "model_prices" not in warning
