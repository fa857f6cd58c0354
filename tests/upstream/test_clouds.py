"""The unchanged Mistral SDK against Mistral models on Bedrock, Vertex AI and Azure AI Foundry (local fakes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from sidecar.core.config import parse

from ..apps import build_app
from ..fake_clouds import (
    FakeAzure,
    FakeBedrock,
    FakeVertex,
    converse_answer,
    exception,
    service_account,
    tool_events,
)
from ..fakes import TOOL

KEY_ID, SECRET, TOKEN = "AKIDSIDECARTEST01", "aws-secret-key-for-the-fake-0123456789", "aws-session-token-0123456789"
AZURE_KEY = "azure-key-for-the-fake-0123456789"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
pytest.importorskip("botocore")
pytest.importorskip("google.auth")


@pytest.fixture
def clouds():
    bedrock, vertex, azure = FakeBedrock(KEY_ID, SECRET, "eu-west-3", TOKEN), FakeVertex(), FakeAzure(AZURE_KEY)
    info, vertex.public_key = service_account(f"{vertex.url}/token")
    yield {"bedrock": bedrock, "vertex": vertex, "azure": azure, "service_account": info}
    for fake in (bedrock, vertex, azure):
        fake.close()


def config_text(clouds, tmp_path) -> str:
    credentials = tmp_path / "sa.json"
    credentials.write_text(json.dumps(clouds["service_account"]))
    bedrock = {"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET, "aws_session_token": TOKEN,
               "aws_region_name": "eu-west-3", "aws_bedrock_runtime_endpoint": clouds["bedrock"].url}
    azure = {"api_base": clouds["azure"].url, "api_key": AZURE_KEY}
    return yaml.safe_dump({"model_list": [
        {"model_name": "mistral-7b", "litellm_params": {"model": "bedrock/mistral.mistral-7b-instruct-v0:2", **bedrock}},
        {"model_name": "large-vertex", "litellm_params": {
            "model": "vertex_ai/mistral-large-2411", "vertex_project": "proj-1", "vertex_location": "europe-west4",
            "vertex_credentials": str(credentials), "api_base": clouds["vertex"].url}},
        {"model_name": "codestral-vertex", "litellm_params": {
            "model": "vertex_ai/codestral-2501", "vertex_project": "proj-1", "vertex_location": "europe-west4",
            "vertex_credentials": json.dumps(clouds["service_account"]), "api_base": clouds["vertex"].url}},
        {"model_name": "large-azure", "litellm_params": {"model": "azure_ai/mistral-large-2411", **azure}},
        {"model_name": "ocr-azure", "litellm_params": {"model": "azure_ai/mistral-document-ai-2505", **azure}},
        {"model_name": "pooled", "litellm_params": {"model": "bedrock/mistral.mistral-large-2407-v1:0", **bedrock,
                                                    "order": 1}, "model_info": {"id": "pooled-bedrock"}},
        {"model_name": "pooled", "litellm_params": {"model": "azure_ai/mistral-large-2411", **azure, "order": 2},
         "model_info": {"id": "pooled-azure"}},
    ]})


@pytest.fixture
def app(clouds, make_app, tmp_path):
    """The clouds' deployments; on the test's ``clock`` when it asks for one (conftest.make_app)."""
    return make_app(config=parse(yaml.safe_load(config_text(clouds, tmp_path)), Path("config.yaml"), {}))


@pytest.fixture
def mistral(live_sidecar):
    from mistralai.client import Mistral
    return Mistral(api_key="sk-anything", server_url=live_sidecar)


# -- Bedrock ---------------------------------------------------------------------------------------------
def test_bedrock_chat_is_signed_translated_to_converse_and_back(mistral, clouds):
    response = mistral.chat.complete(model="mistral-7b", messages=MESSAGES, temperature=0.2, max_tokens=50,
                                     stop=["\n\n"])
    assert response.choices[0].message.content == "Bonjour!" and response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (11, 4, 15)
    model_id, body = clouds["bedrock"].requests[-1]
    assert model_id == "mistral.mistral-7b-instruct-v0:2"
    assert body == {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
                    "system": [{"text": "Be brief."}],
                    "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["\n\n"]}}
    assert clouds["bedrock"].last.path == "/model/mistral.mistral-7b-instruct-v0:2/converse"


def test_bedrock_streaming_chat_arrives_as_mistral_chunks_with_usage_last(mistral):
    chunks = list(mistral.chat.stream(model="mistral-7b", messages=MESSAGES))
    assert "".join(c.data.choices[0].delta.content or "" for c in chunks) == "Bonjour"
    assert chunks[-1].data.choices[0].finish_reason == "stop"
    assert chunks[-1].data.usage.total_tokens == 15
    assert all(c.data.usage is None for c in chunks[:-1])


def test_bedrock_stream_ends_with_done(client):
    response = client.post("/v1/chat/completions", json={"model": "mistral-7b", "messages": MESSAGES, "stream": True})
    text = response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/event-stream") and text.endswith("data: [DONE]\n\n")


def test_bedrock_tools_and_tool_results_round_trip(mistral, clouds):
    clouds["bedrock"].answer = converse_answer(tool=True)
    response = mistral.chat.complete(model="mistral-7b", messages=MESSAGES, tools=[TOOL], tool_choice="any")
    call = response.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "tooluse_1", "get_current_weather", {"location": "Boston"})
    assert response.choices[0].finish_reason == "tool_calls"
    _model, body = clouds["bedrock"].requests[-1]
    assert body["toolConfig"] == {"tools": [{"toolSpec": {"name": "get_current_weather", "description": "Weather in a place",
                                                         "inputSchema": {"json": TOOL["function"]["parameters"]}}}],
                                  "toolChoice": {"any": {}}}
    followup = [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "tooluse_1", "type": "function", "function": {"name": "get_current_weather",
                                                             "arguments": '{"location": "Boston"}'}}]},
                {"role": "tool", "tool_call_id": "tooluse_1", "name": "get_current_weather", "content": "22C"}]
    clouds["bedrock"].answer = converse_answer("22C.")
    assert mistral.chat.complete(model="mistral-7b", messages=followup, tools=[TOOL]).choices[0].message.content == "22C."
    _model, body = clouds["bedrock"].requests[-1]
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_current_weather",
                                                       "input": {"location": "Boston"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "22C"}]}}]}]


def test_bedrock_streamed_tool_calls_arrive_whole(mistral, clouds):
    clouds["bedrock"].events = tool_events()
    chunks = list(mistral.chat.stream(model="mistral-7b", messages=MESSAGES, tools=[TOOL]))
    calls = [call for c in chunks for call in (c.data.choices[0].delta.tool_calls or [])]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_current_weather", {"location": "Boston"})]
    assert chunks[-1].data.choices[0].finish_reason == "tool_calls" and chunks[-1].data.usage.total_tokens == 29


@pytest.mark.parametrize("status, kind, expected", [(429, "ThrottlingException", 429),
                                                   (400, "ValidationException", 400),
                                                   (403, "AccessDeniedException", 403)])
def test_bedrock_errors_take_mistrals_shape(client, clouds, status, kind, expected):
    clouds["bedrock"].error = (status, kind, "nope")
    response = client.post("/v1/chat/completions", json={"model": "mistral-7b", "messages": MESSAGES})
    assert response.status_code == expected
    assert response.json["object"] == "error" and response.json["message"] == "Bedrock: nope"
    assert response.json["type"] in ("rate_limit_error", "invalid_request_error", "permission_error")


def test_a_wrong_secret_is_refused_by_the_fake_bedrock(clouds, settings, tmp_path):
    text = config_text(clouds, tmp_path).replace(SECRET, "not-the-secret-0123456789")
    app = build_app(settings.with_(config=parse(yaml.safe_load(text), Path("c.yaml"), {})))
    response = app.test_client().post("/v1/chat/completions", json={"model": "mistral-7b", "messages": MESSAGES})
    assert response.status_code == 403 and "SignatureDoesNotMatch" in response.json["message"]
    assert clouds["bedrock"].requests == []


def test_an_exception_frame_mid_stream_becomes_an_error_event(client, clouds):
    clouds["bedrock"].events = clouds["bedrock"].events[:2] + [exception("throttlingException", "slow down")]
    text = client.post("/v1/chat/completions", json={"model": "mistral-7b", "messages": MESSAGES,
                                                      "stream": True}).get_data(as_text=True)
    assert '"content":"Bon"' in text and '"message":"Bedrock: slow down"' in text and "[DONE]" not in text


def test_untranslatable_fields_are_refused_not_dropped(client, clouds):
    response = client.post("/v1/chat/completions", json={"model": "mistral-7b", "messages": MESSAGES, "random_seed": 3})
    assert response.status_code == 400 and response.json["param"] == "random_seed"
    assert clouds["bedrock"].requests == []


def test_an_operation_bedrock_lacks_is_a_clear_404(client):
    response = client.post("/v1/embeddings", json={"model": "mistral-7b", "input": ["a"]})
    assert response.status_code == 404
    assert response.json["message"].startswith("Model 'mistral-7b' is deployed on bedrock only")


def test_a_bedrock_answer_is_dated_by_the_apps_clock(client, clock):
    clock.advance(-86400)  # a day behind the machine's
    chat = {"model": "mistral-7b", "messages": MESSAGES}
    assert client.post("/v1/chat/completions", json=chat).json["created"] == int(clock.wall())
    stream = client.post("/v1/chat/completions", json={**chat, "stream": True}).get_data(as_text=True)
    first = json.loads(stream.split("\n\n")[0].removeprefix("data: "))
    assert first["created"] == int(clock.wall())


# -- Vertex AI ---------------------------------------------------------------------------------------------
def test_vertex_chat_streaming_and_fim_with_a_minted_token(mistral, clouds):
    vertex = clouds["vertex"]
    assert mistral.chat.complete(model="large-vertex", messages=MESSAGES).choices[0].message.content == "Hello from Vertex"
    assert vertex.last.path == ("/v1/projects/proj-1/locations/europe-west4/publishers/mistralai/models/"
                                "mistral-large@2411:rawPredict")
    assert json.loads(vertex.last.body)["model"] == "mistral-large"
    chunks = list(mistral.chat.stream(model="large-vertex", messages=MESSAGES))
    assert "".join(c.data.choices[0].delta.content for c in chunks) == "t0 t1 "
    assert vertex.last.path.endswith("/mistral-large@2411:streamRawPredict")
    fim = mistral.fim.complete(model="codestral-vertex", prompt="def f(", suffix="")
    assert fim.choices[0].message.content == "def f(): return 1"
    assert vertex.last.path.endswith("/codestral@2501:rawPredict")
    tools = mistral.chat.complete(model="large-vertex", messages=MESSAGES, tools=[TOOL])
    assert tools.choices[0].message.tool_calls[0].function.name == "get_current_weather"
    assert vertex.grants == 2  # one token per service account (two deployments), reused until near expiry


def test_vertex_tokens_are_refreshed_before_they_expire_and_expired_ones_are_refused(app, clouds, clock):
    vertex, client = clouds["vertex"], app.test_client()
    chat = {"model": "large-vertex", "messages": MESSAGES}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200 and vertex.grants == 1
    vertex.offset = 3700  # the fake's clock passes the token's expiry; the sidecar's does not
    refused = client.post("/v1/chat/completions", json=chat)
    assert refused.status_code == 401 and vertex.grants == 1
    vertex.offset = 3400  # both clocks: 200 s left, under the margin
    clock.advance(3400)
    assert client.post("/v1/chat/completions", json=chat).status_code == 200 and vertex.grants == 2


# -- Azure AI Foundry ----------------------------------------------------------------------------------------
def test_azure_chat_streaming_and_tools_with_its_key(mistral, clouds):
    azure = clouds["azure"]
    assert mistral.chat.complete(model="large-azure", messages=MESSAGES).choices[0].message.content == "Hello from Azure"
    assert azure.last.path == "/v1/chat/completions" and azure.last.headers["Authorization"] == f"Bearer {AZURE_KEY}"
    assert json.loads(azure.last.body)["model"] == "mistral-large-2411"
    chunks = list(mistral.chat.stream(model="large-azure", messages=MESSAGES))
    assert "".join(c.data.choices[0].delta.content for c in chunks) == "t0 t1 t2 "
    tools = mistral.chat.complete(model="large-azure", messages=MESSAGES, tools=[TOOL])
    assert tools.choices[0].message.tool_calls[0].function.name == "get_current_weather"


def test_azure_ocr_goes_to_document_ai_with_a_data_uri(mistral, clouds):
    document = {"type": "document_url", "document_url": "data:application/pdf;base64,JVBERi0xLjQK"}
    response = mistral.ocr.process(model="ocr-azure", document=document)
    assert response.pages[0].markdown == "# azure"
    assert clouds["azure"].last.path == "/providers/mistral/azure/ocr"


def test_the_fake_azure_refuses_a_wrong_key(clouds, settings, tmp_path):
    text = config_text(clouds, tmp_path).replace(AZURE_KEY, "wrong-azure-key-0123456789")
    app = build_app(settings.with_(config=parse(yaml.safe_load(text), Path("c.yaml"), {})))
    response = app.test_client().post("/v1/chat/completions", json={"model": "large-azure", "messages": MESSAGES})
    assert response.status_code == 401


# -- a pool across clouds ------------------------------------------------------------------------------------
def test_a_throttled_bedrock_deployment_falls_over_to_azure(mistral, clouds, app, settings):
    clouds["bedrock"].error = (429, "ThrottlingException", "Too many requests")
    response = mistral.chat.complete(model="pooled", messages=MESSAGES)
    assert response.choices[0].message.content == "Hello from Azure"
    assert len(clouds["bedrock"].requests) == 1
    mistral.chat.complete(model="pooled", messages=MESSAGES)
    assert len(clouds["bedrock"].requests) == 1  # cooling down
    app.extensions["sidecar"].accountant.spend.flush()
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT model, deployment FROM spend_logs")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("pooled", "pooled-azure")] * 2


def test_a_cloud_deployment_bills_at_its_clouds_price_and_the_record_names_it(client, app, settings):
    response = client.post("/v1/chat/completions", json={"model": "mistral-7b", "messages": MESSAGES})
    expected = round(11 * 0.15 / 1e6 + 4 * 0.2 / 1e6, 10)  # Bedrock's price of Mistral 7B, not Mistral's
    assert float(response.headers["x-sidecar-cost"]) == pytest.approx(expected)
    app.extensions["sidecar"].accountant.spend.flush()
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT model, deployment, cost, prompt_tokens FROM spend_logs")).one()
    engine.dispose()
    assert tuple(row) == ("mistral-7b", "mistral-7b", pytest.approx(expected), 11)
