"""The OpenAI dialect: OpenAI-style calls translated only where Mistral's schema refuses them; aliases everywhere."""

from __future__ import annotations

import json

import pytest

from sidecar.core import dialect
from sidecar.settings import Settings

from ..apps import build_app
from ..conftest import MISTRAL_KEY, ROOT
from ..fakes import chat_body, chat_events

MESSAGES = [{"role": "user", "content": "What's in this image?"}]
CHAT = {"model": "mistral-small-latest", "messages": MESSAGES}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


# -- pure translation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("given, sent", [
    ({"max_completion_tokens": 50}, {"max_tokens": 50}),
    ({"seed": 7}, {"random_seed": 7}),
    ({"stream_options": {"include_usage": True}, "stream": True}, {"stream": True}),
    ({"store": False, "logprobs": False}, {}),
    ({"max_tokens": 10, "max_completion_tokens": 50}, {"max_tokens": 10}),
])
def test_openai_only_fields_are_renamed_or_dropped(given, sent):
    body = dict(CHAT, **given)
    assert dialect.translate(dialect.CHAT, body) is True
    assert body == dict(CHAT, **sent)


@pytest.mark.parametrize("field", [
    {"tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "book", "strict": True,
                                                                "schema": {"type": "object"}}}},
    {"reasoning_effort": "high"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                               {"type": "image_url", "image_url": {"url": "https://x/y.png",
                                                                                   "detail": "high"}}]}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny"}]},
])
def test_what_mistral_already_takes_passes_untouched(field):
    body = dict(CHAT, tools=[TOOL], **field)
    before = json.loads(json.dumps(body))
    assert dialect.translate(dialect.CHAT, body) is False
    assert body == before


def test_messages_lose_only_the_fields_mistral_refuses():
    body = dict(CHAT, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": [{"type": "input_audio",
                                                     "input_audio": {"data": "UklGRg==", "format": "wav"}}]},
        {"role": "assistant", "content": "ok", "refusal": None, "audio": None, "function_call": None},
    ], tools=[{"type": "function", "function": {"name": "now"}}])
    assert dialect.translate(dialect.CHAT, body)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": "UklGRg=="}]},
        {"role": "assistant", "content": "ok"},
    ]
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_embeddings_dimensions_become_output_dimension():
    body = {"model": "mistral-embed", "input": ["a"], "dimensions": 256, "encoding_format": "base64"}
    assert dialect.translate(dialect.EMBEDDINGS, body)
    assert body == {"model": "mistral-embed", "input": ["a"], "output_dimension": 256, "encoding_format": "base64"}


def test_only_the_native_prefix_is_exempt():
    assert dialect.applies("/v1/chat/completions") and dialect.applies("/chat/completions")
    assert not dialect.applies("/mistral/v1/chat/completions")


# -- through the app ------------------------------------------------------------------------------------
@pytest.fixture
def aliased(fake, settings):
    """An app with the proxy tutorial's aliases plus a Codestral alias on its own (fake) endpoint."""
    def build(tmp_path):
        path = tmp_path / "config.yaml"
        path.write_text(f"""model_list:
  - model_name: mistral-nemo
    litellm_params: {{model: mistral/open-mistral-nemo, api_key: os.environ/MISTRAL_API_KEY}}
  - model_name: codestral
    litellm_params: {{model: codestral/codestral-latest, api_base: "{fake.url}/codestral"}}
""")
        env = {"MISTRAL_API_KEY": MISTRAL_KEY, "CODESTRAL_API_KEY": "sk-codestral-key",
               "SIDECAR_CONFIG": str(path), "MISTRAL_API_BASE": fake.url}
        return build_app(Settings.from_env(env, spec_path=ROOT / "openapi.yaml",
                                            database_url=settings.database_url)).test_client()
    return build


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
def test_openai_chat_is_translated_then_validated(client, fake, path):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    body = dict(CHAT, max_completion_tokens=64, seed=1, user="u-42", stream_options={"include_usage": True},
                tool_choice="required", tools=[TOOL])
    response = client.post(path, json=body)
    assert response.status_code == 200, response.json
    sent = json.loads(fake.last.body)
    assert sent == dict(CHAT, max_tokens=64, random_seed=1, tool_choice="required", tools=[TOOL])


def test_native_requests_on_openai_paths_are_forwarded_byte_for_byte(client, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    raw = b'{"model":"mistral-small-latest",   "messages":[{"role":"user","content":"hi"}], "random_seed": 3}'
    assert client.post("/chat/completions", data=raw, content_type="application/json").status_code == 200
    assert fake.last.body == raw


def test_translation_still_validates_against_mistral(client, fake):
    response = client.post("/chat/completions", json=dict(CHAT, logit_bias={"1": 5}))
    assert response.status_code == 422
    assert response.json["detail"][0]["loc"] == ["body", "logit_bias"]
    assert fake.seen == []


def test_openai_streaming_relays_mistral_events(client, fake):
    fake.stream("POST", "/v1/chat/completions", chat_events(3))
    response = client.post("/chat/completions", json=dict(CHAT, stream=True, stream_options={"include_usage": True}))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.get_data().endswith(b"data: [DONE]\n\n")
    assert "stream_options" not in json.loads(fake.last.body)


def test_embeddings_without_v1(client, fake):
    fake.on("POST", "/v1/embeddings", json_body={"id": "e", "object": "list", "model": "mistral-embed",
                                                 "data": [{"object": "embedding", "embedding": [0.1], "index": 0}],
                                                 "usage": {"prompt_tokens": 2, "completion_tokens": 0,
                                                           "total_tokens": 2}})
    response = client.post("/embeddings", json={"model": "mistral-embed", "input": "hi", "dimensions": 8})
    assert response.status_code == 200
    assert json.loads(fake.last.body) == {"model": "mistral-embed", "input": "hi", "output_dimension": 8}


def test_aliases_resolve_on_native_and_openai_routes(aliased, fake, tmp_path):
    client = aliased(tmp_path)
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(model="open-mistral-nemo"))
    for path in ("/chat/completions", "/mistral/v1/chat/completions"):
        assert client.post(path, json=dict(CHAT, model="mistral-nemo")).status_code == 200
        assert json.loads(fake.last.body)["model"] == "open-mistral-nemo"
        assert fake.last.headers["Authorization"] == f"Bearer {MISTRAL_KEY}"


def test_codestral_alias_goes_to_its_own_endpoint_with_its_own_key(aliased, fake, tmp_path):
    client = aliased(tmp_path)
    fake.on("POST", "/codestral/v1/fim/completions", json_body=chat_body(model="codestral-latest"))
    response = client.post("/v1/fim/completions", json={"model": "codestral", "prompt": "def f(", "suffix": ")"})
    assert response.status_code == 200
    assert fake.last.path == "/codestral/v1/fim/completions"
    assert fake.last.headers["Authorization"] == "Bearer sk-codestral-key"
    assert json.loads(fake.last.body)["model"] == "codestral-latest"


def test_unknown_models_pass_to_the_default_target_unchanged(aliased, fake, tmp_path):
    client = aliased(tmp_path)
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    raw = b'{"model": "open-mistral-7b", "messages": [{"role": "user", "content": "hi"}]}'
    assert client.post("/v1/chat/completions", data=raw, content_type="application/json").status_code == 200
    assert fake.last.body == raw and fake.last.path == "/v1/chat/completions"


@pytest.mark.parametrize("path", ["/models", "/v1/models"])
def test_model_list_includes_the_aliases(aliased, fake, tmp_path, path):
    client = aliased(tmp_path)
    fake.on("GET", "/v1/models", json_body={"object": "list", "data": [
        {"id": "open-mistral-nemo", "object": "model", "created": 1, "owned_by": "mistralai", "type": "base",
         "capabilities": {"completion_chat": True}}]})
    listing = client.get(path).json
    ids = [m["id"] for m in listing["data"]]
    assert ids == ["open-mistral-nemo", "mistral-nemo", "codestral"]
    alias = listing["data"][1]
    assert alias["object"] == "model" and alias["owned_by"] == "mistral-sidecar" and isinstance(alias["created"], int)
    assert alias["capabilities"] == {"completion_chat": True}  # copied from the model it stands for
