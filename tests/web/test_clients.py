"""Real clients against a live sidecar (offline: the upstream is the FakeMistral).

The official ``mistralai`` SDK with ``server_url`` at the sidecar's root, the ``openai`` SDK with
``base_url`` at the sidecar's ``/v1``, and LangChain's ``ChatOpenAI``, as the seeds use them.
"""

from __future__ import annotations

import json

import pytest
from werkzeug.wrappers import Response

from ..fakes import TOOL, chat_body, chat_events, tool_call_body

MODELS = {"object": "list", "data": [{"id": "mistral-small-latest", "object": "model", "created": 1,
                                      "owned_by": "mistralai", "type": "base",
                                      "capabilities": {"completion_chat": True}}]}
EMBEDDING = {"id": "emb-1", "object": "list", "model": "mistral-embed",
             "data": [{"object": "embedding", "embedding": [0.1, 0.2], "index": 0}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}}
OCR = {"pages": [{"index": 0, "markdown": "# receipt", "images": [], "dimensions": {"dpi": 200, "height": 2, "width": 1}}],
       "model": "mistral-ocr-latest", "usage_info": {"pages_processed": 1, "doc_size_bytes": 10}}
@pytest.fixture
def upstream(fake):
    """The fake Mistral answering every operation the clients call."""
    def chat(request):
        data = json.loads(request.get_data())
        if data.get("stream"):
            return Response(b"".join(chat_events(3)), 200, {"Content-Type": "text/event-stream"})
        answer = tool_call_body() if data.get("tools") else chat_body()
        return Response(json.dumps(answer), 200, {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", chat)
    fake.on("POST", "/v1/fim/completions", json_body=chat_body(model="codestral-latest", content="return 1"))
    fake.on("POST", "/v1/embeddings", json_body=EMBEDDING)
    fake.on("POST", "/v1/ocr", json_body=OCR)
    fake.on("GET", "/v1/models", json_body=MODELS)
    fake.on("POST", "/v1/files", json_body={"id": "497f6eca-6276-4993-bfeb-53cbbbba6f09", "object": "file",
                                            "bytes": 5, "created_at": 1, "filename": "doc.jsonl", "purpose": "batch",
                                            "sample_type": "batch_request", "source": "upload"})
    return fake


def sent(fake, path):
    return json.loads([s for s in fake.seen if s.path == path][-1].body)


# -- the official Mistral SDK -----------------------------------------------------------------------------
@pytest.fixture
def mistral(live_sidecar, upstream):
    from mistralai.client import Mistral
    return Mistral(api_key="sk-anything", server_url=live_sidecar)


def test_mistral_sdk_chat(mistral):
    response = mistral.chat.complete(model="mistral-small-latest", messages=[{"role": "user", "content": "poem"}])
    assert response.choices[0].message.content == "Hello!" and response.usage.total_tokens == 17


def test_mistral_sdk_streaming_chat(mistral):
    chunks = list(mistral.chat.stream(model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.data.choices[0].delta.content for c in chunks) == "t0 t1 t2 "
    assert chunks[-1].data.usage.completion_tokens == 3


def test_mistral_sdk_tool_call(mistral, upstream):
    response = mistral.chat.complete(model="mistral-small-latest", tools=[TOOL], tool_choice="auto",
                                     messages=[{"role": "user", "content": "Weather in Boston?"}])
    call = response.choices[0].message.tool_calls[0]
    assert call.function.name == "get_current_weather" and json.loads(call.function.arguments) == {"location": "Boston"}
    assert sent(upstream, "/v1/chat/completions")["tools"] == [TOOL]


def test_mistral_sdk_fim(mistral):
    response = mistral.fim.complete(model="codestral-latest", prompt="def f():", suffix="")
    assert response.choices[0].message.content == "return 1"


def test_mistral_sdk_embeddings(mistral, upstream):
    response = mistral.embeddings.create(model="mistral-embed", inputs=["good morning"])
    assert response.data[0].embedding == [0.1, 0.2]
    assert sent(upstream, "/v1/embeddings")["input"] == ["good morning"]


def test_mistral_sdk_ocr(mistral):
    response = mistral.ocr.process(model="mistral-ocr-latest",
                                   document={"type": "image_url", "image_url": "https://example.com/receipt.png"})
    assert response.pages[0].markdown == "# receipt" and response.usage_info.pages_processed == 1


def test_mistral_sdk_file_upload(mistral, upstream):
    response = mistral.files.upload(file={"file_name": "doc.jsonl", "content": b'{"a":1}'}, purpose="batch")
    assert response.id == "497f6eca-6276-4993-bfeb-53cbbbba6f09"
    seen = [s for s in upstream.seen if s.path == "/v1/files"][-1]
    assert seen.headers["Content-Type"].startswith("multipart/form-data") and b'{"a":1}' in seen.body


def test_mistral_sdk_models(mistral):
    assert [m.id for m in mistral.models.list().data] == ["mistral-small-latest"]


# -- the OpenAI SDK ----------------------------------------------------------------------------------------
@pytest.fixture
def openai_client(live_sidecar, upstream):
    import openai
    return openai.OpenAI(api_key="anything", base_url=live_sidecar + "/v1", max_retries=0)


def test_openai_sdk_chat(openai_client, upstream):
    response = openai_client.chat.completions.create(
        model="mistral-small-latest", messages=[{"role": "user", "content": "write a short poem"}],
        max_completion_tokens=100, seed=3, user="end-user-7")
    assert response.choices[0].message.content == "Hello!"
    body = sent(upstream, "/v1/chat/completions")
    assert body["max_tokens"] == 100 and body["random_seed"] == 3 and "user" not in body


def test_openai_sdk_streaming(openai_client, upstream):
    stream = openai_client.chat.completions.create(
        model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0 t1 t2 "
    assert chunks[-1].usage.total_tokens == 13
    assert "stream_options" not in sent(upstream, "/v1/chat/completions")


def test_openai_sdk_tools(openai_client, upstream):
    response = openai_client.chat.completions.create(
        model="mistral-small-latest", messages=[{"role": "user", "content": "Weather in Boston?"}], tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "get_current_weather"}})
    assert response.choices[0].message.tool_calls[0].function.name == "get_current_weather"
    assert sent(upstream, "/v1/chat/completions")["tool_choice"] == {
        "type": "function", "function": {"name": "get_current_weather"}}


def test_openai_sdk_vision_message(openai_client, upstream):
    image = {"type": "image_url", "image_url": {"url": "https://example.com/boardwalk.jpg", "detail": "low"}}
    openai_client.chat.completions.create(model="mistral-small-latest", max_tokens=300, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What's in this image?"}, image]}])
    assert sent(upstream, "/v1/chat/completions")["messages"][0]["content"][1] == image


def test_openai_sdk_embeddings(openai_client, upstream):
    response = openai_client.embeddings.create(model="mistral-embed", input=["good morning"], encoding_format="float")
    assert response.data[0].embedding == [0.1, 0.2]


def test_openai_sdk_models(openai_client):
    assert [m.id for m in openai_client.models.list()] == ["mistral-small-latest"]


def test_openai_sdk_at_the_root_like_the_seeds(live_sidecar, upstream):
    import openai
    client = openai.OpenAI(api_key="anything", base_url=live_sidecar, max_retries=0)
    response = client.chat.completions.create(model="mistral-small-latest",
                                              messages=[{"role": "user", "content": "this is a test request"}])
    assert response.choices[0].message.content == "Hello!"


# -- LangChain ------------------------------------------------------------------------------------------------
def test_langchain_chat_openai(live_sidecar, upstream):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, SystemMessage
    chat = langchain_openai.ChatOpenAI(base_url=live_sidecar, api_key="anything", model="mistral-small-latest",
                                       temperature=0.1, max_retries=0)
    response = chat.invoke([SystemMessage(content="You are a helpful assistant."),
                            HumanMessage(content="tell me why it's amazing in 1 sentence")])
    assert response.content == "Hello!"
    assert sent(upstream, "/v1/chat/completions")["temperature"] == 0.1
