"""A streamed answer's cost: an SSE comment ``: x-sidecar-cost=<USD>`` just before ``data: [DONE]``.

Headers leave before the usage arrives, so the cost travels in the stream as a comment line, which
every SSE parser skips: the official ``mistralai`` and ``openai`` SDKs and LangChain still read
these streams whole (each test first proves the comment is really in the stream it parses).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from werkzeug.wrappers import Response

from ..fakes import chat_events

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}], "stream": True}
PRICE = (10 * 0.15 + 3 * 0.6) / 1e6  # mistral-small: 10 prompt and 3 completion tokens


@pytest.fixture
def streaming(fake):
    """The fake Mistral streams three chunks, usage on the last, then ``[DONE]``, in separate writes."""
    def chat(request):
        data = json.loads(request.get_data())
        return Response(iter(chat_events(3, model=data["model"])), 200, {"Content-Type": "text/event-stream"})
    fake.on("POST", "/v1/chat/completions", chat)
    return fake


def raw_stream(url: str, body=CHAT) -> list[bytes]:
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=10) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def recorded(client, timeout: float = 5.0) -> dict:
    """The newest spend record: the server finishes a stream when it closes it, just after the last byte."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = client.get("/spend/logs", query_string={"operation": "chat_completion_v1_chat_completions_post"})
        if logs.get_json()["logs"]:
            return logs.get_json()["logs"][0]
        time.sleep(0.02)
    raise AssertionError("no spend record for the stream")


def test_the_cost_comment_comes_just_before_done_and_matches_the_spend_record(live_sidecar, streaming, client):
    lines = raw_stream(live_sidecar)
    assert lines[-1] == b"data: [DONE]"
    assert lines[-2].startswith(b": x-sidecar-cost=")
    assert float(lines[-2].partition(b"=")[2]) == pytest.approx(PRICE)
    assert b'"usage"' in lines[-3]  # priced from the usage the client has just seen
    record = recorded(client)
    assert record["streamed"] is True and record["cost"] == pytest.approx(PRICE)


def test_an_unpriced_model_streams_without_a_cost_line(live_sidecar, streaming):
    lines = raw_stream(live_sidecar, dict(CHAT, model="my-own-finetune"))
    assert lines[-1] == b"data: [DONE]" and not any(line.startswith(b":") for line in lines)


def test_a_stream_without_done_ends_with_the_cost_line(live_sidecar, fake):
    events = chat_events(2)[:-1]  # the upstream closes after the usage event, no [DONE]
    fake.stream("POST", "/v1/chat/completions", events)
    lines = raw_stream(live_sidecar)
    assert lines[-1].startswith(b": x-sidecar-cost=") and len(lines) == 3


def test_mistral_sdk_reads_a_stream_with_the_cost_line(live_sidecar, streaming):
    from mistralai.client import Mistral

    assert raw_stream(live_sidecar)[-2].startswith(b": x-sidecar-cost=")
    client = Mistral(api_key="sk-anything", server_url=live_sidecar)
    chunks = list(client.chat.stream(model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.data.choices[0].delta.content for c in chunks) == "t0 t1 t2 "
    assert chunks[-1].data.usage.completion_tokens == 3


def test_openai_sdk_reads_a_stream_with_the_cost_line(live_sidecar, streaming):
    from openai import OpenAI

    assert raw_stream(live_sidecar)[-2].startswith(b": x-sidecar-cost=")
    client = OpenAI(api_key="sk-anything", base_url=live_sidecar + "/v1")
    chunks = list(client.chat.completions.create(model="mistral-small-latest", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "t0 t1 t2 "
    assert chunks[-1].usage.completion_tokens == 3


def test_langchain_reads_a_stream_with_the_cost_line(live_sidecar, streaming):
    from langchain_openai import ChatOpenAI

    assert raw_stream(live_sidecar)[-2].startswith(b": x-sidecar-cost=")
    llm = ChatOpenAI(model="mistral-small-latest", api_key="sk-anything", base_url=live_sidecar + "/v1",
                     stream_usage=True)
    parts = list(llm.stream("hi"))
    assert "".join(p.content for p in parts) == "t0 t1 t2 "
    assert sum((p.usage_metadata or {}).get("output_tokens", 0) for p in parts) == 3
