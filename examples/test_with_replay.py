"""Run your application's tests against mistral-sidecar in replay mode: no Mistral key, no network.

Copy this file into your tests. The ``sidecar_url`` fixture starts the sidecar in this process on a free
loopback port, answering from recorded contracts; point the official ``mistralai`` SDK (or any HTTP
client) at it with ``server_url``. Run it with ``pytest examples/test_with_replay.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from mistralai.client import Mistral
from sidecar import create_app
from sidecar.settings import Settings

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"  # or a copy holding your own contracts
MY_CONTRACT = """
operation: chat_completion_v1_chat_completions_post
exchanges:
- name: capital of France
  match: {json: {messages: [{role: user, content: What is the capital of France?}]}}
  request: {method: POST, path: /v1/chat/completions,
            json: {model: mistral-small-latest, messages: [{role: user, content: What is the capital of France?}]}}
  response:
    status: 200
    json: {id: cmpl-1, object: chat.completion, created: 1764064800, model: mistral-small-latest,
           choices: [{index: 0, message: {role: assistant, content: Paris.}, finish_reason: stop}],
           usage: {prompt_tokens: 9, completion_tokens: 2, total_tokens: 11}}
"""


@pytest.fixture(scope="module")
def sidecar_url(tmp_path_factory):
    """The sidecar in replay mode on 127.0.0.1, with the shipped contracts plus one of our own."""
    contracts = tmp_path_factory.mktemp("contracts")
    for shipped in CONTRACTS.glob("*.yaml"):
        (contracts / shipped.name).write_bytes(shipped.read_bytes())
    (contracts / "my_answers.yaml").write_text(MY_CONTRACT)
    settings = Settings(upstream_mode="replay", contracts_dir=contracts,
                        database_url=f"sqlite:///{tmp_path_factory.mktemp('db') / 'sidecar.db'}")
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def mistral(sidecar_url):
    # Any key: the sidecar runs open on loopback. Note server_url is the root, not .../v1.
    with Mistral(api_key="sk-anything", server_url=sidecar_url) as client:
        yield client


def test_chat(mistral):
    answer = mistral.chat.complete(model="mistral-small-latest",
                                   messages=[{"role": "user", "content": "I am going to Paris, what should I see?"}])
    assert "Eiffel Tower" in answer.choices[0].message.content
    assert answer.usage.total_tokens == 53


def test_streaming_chat(mistral):
    stream = mistral.chat.stream(model="mistral-small-latest",
                                 messages=[{"role": "user", "content": "I am going to Paris, what should I see?"}])
    events = list(stream)
    text = "".join(e.data.choices[0].delta.content or "" for e in events)
    assert text.startswith("Paris has plenty to see.")
    assert events[-1].data.usage.completion_tokens == 7 and events[-1].data.choices[0].finish_reason == "stop"


def test_embeddings(mistral):
    result = mistral.embeddings.create(model="mistral-embed", inputs=["Embed this sentence.", "As well as this one."])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 5


def test_ocr(mistral):
    result = mistral.ocr.process(model="mistral-ocr-latest",
                                 document={"type": "document_url", "document_url": "https://arxiv.org/pdf/2201.04234"})
    assert result.usage_info.pages_processed == 2
    assert result.pages[0].markdown.startswith("# Leveraging")


def test_our_own_fixed_answer(mistral):
    answer = mistral.chat.complete(model="mistral-small-latest",
                                   messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert answer.choices[0].message.content == "Paris."


def test_mistral_errors_are_replayed_too(mistral):
    from mistralai.client import errors
    with pytest.raises(errors.SDKError) as caught:
        mistral.chat.complete(model="mistral-small-latest", messages=[{"role": "user", "content": "simulate: 429"}])
    assert caught.value.status_code == 429
