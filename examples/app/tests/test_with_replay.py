"""An application's tests against mistral-sidecar in replay mode: no Mistral key, no network, no conftest.

``pip install mistral-sidecar[pytest]`` registers the plugin; its session fixture ``mistral_sidecar`` serves
the contracts in ``tests/contracts`` (see ``pytest.ini`` for the options) on a free loopback port. Point the
official SDK at ``mistral_sidecar.url`` (``server_url`` is the root: the SDK adds ``/v1``), or an OpenAI client
at ``mistral_sidecar.base_url``.
"""

from __future__ import annotations

import json

import pytest
from mistralai.client import Mistral, errors


@pytest.fixture
def mistral(mistral_sidecar):
    with Mistral(api_key=mistral_sidecar.api_key, server_url=mistral_sidecar.url) as client:
        yield client


def test_our_own_answer(mistral):
    answer = mistral.chat.complete(model="mistral-small-latest",
                                   messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert answer.choices[0].message.content == "Paris."


def test_a_generic_answer_follows_the_request(mistral):
    answer = mistral.chat.complete(model="mistral-large-latest", messages=[{"role": "user", "content": "Hello"}])
    assert answer.model == "mistral-large-latest" and answer.usage.total_tokens > 0


def test_tools_are_called_with_arguments_that_fit_their_schema(mistral):
    tool = {"type": "function", "function": {"name": "get_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
    answer = mistral.chat.complete(model="mistral-small-latest", tools=[tool], tool_choice="any",
                                   messages=[{"role": "user", "content": "Where is my order?"}])
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_order" and "order_id" in json.loads(call.function.arguments)


def test_streaming(mistral):
    events = list(mistral.chat.stream(model="mistral-small-latest",
                                      messages=[{"role": "user", "content": "I am going to Paris, what should I see?"}]))
    assert "".join(e.data.choices[0].delta.content or "" for e in events).startswith("Paris has plenty to see.")


def test_embeddings_have_the_dimensions_asked_for(mistral):
    result = mistral.embeddings.create(model="mistral-embed", inputs=["one", "two", "three"], output_dimension=16)
    assert [len(d.embedding) for d in result.data] == [16, 16, 16]


def test_mistral_errors_are_replayed_too(mistral):
    with pytest.raises(errors.SDKError) as caught:
        mistral.chat.complete(model="mistral-small-latest", messages=[{"role": "user", "content": "simulate: 429"}])
    assert caught.value.status_code == 429
