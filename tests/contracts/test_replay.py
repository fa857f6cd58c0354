"""Replay mode: answers come from contracts/, with no network, through the same pipeline as real traffic."""

from __future__ import annotations

import json
import logging

import pytest

from ..conftest import ROOT
from ..fakes import CAPITAL_CONTRACT

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "I am going to Paris, what should I see?"}]}


@pytest.fixture
def replay(make_app):
    """An app answering from the shipped contracts; the fake upstream must never be called."""
    def build(**changes):
        return make_app(upstream_mode="replay", contracts_dir=ROOT / "contracts", mistral_api_key=None, **changes)
    return build


def test_plain_chat_is_answered_from_a_contract_and_priced(replay, fake):
    response = replay().test_client().post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"].startswith("Paris has plenty to see.")
    assert response.headers["x-sidecar-contract"] == "chat_completion_v1_chat_completions_post: plain answer"
    assert float(response.headers["x-sidecar-cost"]) > 0  # accounting ran on the replayed usage
    assert fake.seen == []


def test_streams_replay_one_chunk_per_event_ending_in_done(replay, fake, caplog):
    caplog.set_level(logging.INFO, logger="sidecar.access")
    client = replay().test_client()
    response = client.post("/mistral/v1/chat/completions", json=dict(CHAT, stream=True), buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    chunks = list(response.response)
    response.close()
    assert len(chunks) == 7 and all(c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert chunks[-2].startswith(b": x-sidecar-cost=")  # the stream's cost, as an SSE comment
    assert json.loads(chunks[-3][6:])["usage"]["total_tokens"] == 22
    line = json.loads([r.message for r in caplog.records if r.name == "sidecar.access"][-1])
    assert line["completion_tokens"] == 7 and line["cost"] > 0  # the stream was metered as it passed
    assert fake.seen == []


def test_named_event_streams_replay_as_named_events(replay):
    response = replay().test_client().post("/v1/conversations", json={"inputs": "Hi", "stream": True})
    events = response.data.split(b"\n\n")
    assert events[0].startswith(b"event: conversation.response.started\ndata: {")
    assert b"event: conversation.response.done" in response.data


def test_validation_and_auth_still_run_before_any_contract(replay):
    client = replay(master_key="sk-master-0123456789").test_client()
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    headers = {"Authorization": "Bearer sk-master-0123456789"}
    invalid = client.post("/v1/chat/completions", json=dict(CHAT, temperature="hot"), headers=headers)
    assert invalid.status_code == 422 and invalid.json["detail"][0]["loc"] == ["body", "temperature"]
    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200


def test_error_contracts_answer_their_trigger(replay):
    client = replay().test_client()
    limited = client.post("/v1/chat/completions", json={"model": "mistral-small-latest",
                                                        "messages": [{"role": "user", "content": "simulate: 429"}]})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
    assert limited.json["type"] == "rate_limited"


def test_path_ids_and_binary_bodies(replay):
    client = replay().test_client()
    download = client.get("/v1/files/e85980c9-409e-4a46-9304-36588f6292b0/content")
    assert download.status_code == 200 and download.mimetype == "application/octet-stream"
    assert download.data.startswith(b'{"custom_id": "0"')
    assert client.delete("/v1/agents/ag_1").status_code == 204
    assert client.get("/v2/prompts/p1/versions/3").status_code == 200  # integer path parameter


def test_a_request_no_contract_answers_gets_501_in_the_error_shape(make_app, tmp_path):
    (tmp_path / "chat.yaml").write_text(CAPITAL_CONTRACT)
    client = make_app(upstream_mode="replay", contracts_dir=tmp_path).test_client()
    stream = client.post("/v1/chat/completions", json=dict(CHAT, stream=True))
    assert stream.status_code == 501
    assert stream.json["code"] == "no_matching_contract" and stream.json["object"] == "error"
    assert stream.json["message"] == (
        f"No contract in {tmp_path} answers POST /v1/chat/completions (chat_completion_v1_chat_completions_post). "
        "Closest: chat.yaml, exchange 'capital of France': json.stream: expected not true, got true "
        "(and 1 more difference).")
    other = client.post("/v1/embeddings", json={"model": "mistral-embed", "input": "x"})
    assert other.status_code == 501 and f"add one to {tmp_path}/embeddings_v1_embeddings_post.yaml" in other.json["message"]


def test_your_own_contract_gives_a_fixed_answer_for_a_given_prompt(make_app, tmp_path):
    (tmp_path / "mine.yaml").write_text(CAPITAL_CONTRACT)
    (tmp_path / "shipped.yaml").write_text((ROOT / "contracts" / "chat_completion_v1_chat_completions_post.yaml").read_text())
    client = make_app(upstream_mode="replay", contracts_dir=tmp_path).test_client()
    asked = {"model": "mistral-large-latest", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    assert client.post("/v1/chat/completions", json=asked).json["choices"][0]["message"]["content"] == "Paris."
    assert client.post("/v1/chat/completions", json=CHAT).json["choices"][0]["message"]["content"] != "Paris."


def test_settings_read_the_replay_mode_from_the_environment(tmp_path):
    from sidecar.settings import Settings
    settings = Settings.from_env({"MISTRAL_UPSTREAM": "replay", "SIDECAR_CONTRACTS": str(tmp_path)})
    assert settings.upstream_mode == "replay" and settings.contracts_dir == tmp_path


def _slow_stream(directory, events=50, seconds=2.0):
    """A recorded stream of ``events`` chat chunks spread over ``seconds`` (as record mode writes it)."""
    chunk = {"id": "cmpl-slow", "object": "chat.completion.chunk", "created": 1764064800, "model": "mistral-small-latest",
             "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    recorded = [{"data": chunk, "delay": seconds / events} for _ in range(events - 1)] + [{"data": "[DONE]", "delay": seconds / events}]
    body = {"operation": "chat_completion_v1_chat_completions_post", "source": "recorded", "exchanges": [
        {"name": "slow", "request": {"method": "POST", "path": "/v1/chat/completions", "json": dict(CHAT, stream=True)},
         "response": {"status": 200, "headers": {"Content-Type": "text/event-stream"}, "events": recorded}}]}
    (directory / "slow.yaml").write_text(json.dumps(body))


# Unpaced (speed 0) must beat half the recorded 2 s by far; the bound leaves a loaded CI machine room.
@pytest.mark.parametrize("speed, low, high", [(1.0, 1.6, 2.4), (0.0, 0.0, 1.0)])
def test_a_recorded_slow_stream_replays_at_its_recorded_pace(make_app, live_sidecar_for, tmp_path, speed, low, high):
    import time

    import requests
    _slow_stream(tmp_path)
    url = live_sidecar_for(make_app(upstream_mode="replay", contracts_dir=tmp_path, replay_speed=speed))
    started = time.monotonic()
    with requests.post(url + "/v1/chat/completions", json=dict(CHAT, stream=True), stream=True, timeout=30) as answer:
        arrivals = [time.monotonic() - started for line in answer.iter_lines() if line.startswith(b"data:")]
    assert len(arrivals) == 50
    assert low <= arrivals[-1] <= high, f"50 events recorded over 2 s took {arrivals[-1]:.2f} s at speed {speed}"
    if speed:
        assert arrivals[25] >= 0.8  # spread out, not held back and sent at the end


def test_error_triggers_answer_streaming_requests_and_cut_breaks_a_stream(replay):
    client = replay().test_client()
    for trigger, status in (("simulate: 429", 429), ("simulate: 401", 401)):
        asked = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": trigger}], "stream": True}
        assert client.post("/v1/chat/completions", json=asked).status_code == status
    cut = client.post("/v1/chat/completions", json={"model": "mistral-small-latest", "stream": True,
                                                   "messages": [{"role": "user", "content": "simulate: cut"}]})
    events = _events(cut.data)
    assert cut.status_code == 200 and [e["data"]["choices"][0]["delta"]["content"] for e in events[:2]] == [
        "The connection ", "drops after this"]
    assert events[-1]["data"]["code"] == "stream_interrupted" and all(e["data"] != "[DONE]" for e in events)


def _events(raw: bytes) -> list:
    from sidecar.contracts.fileformat import unframe
    return [unframe(block) for block in raw.split(b"\n\n") if block.strip()]


def _spliced(raw: bytes):
    from sidecar.web.longjson import parse_long
    return parse_long(raw, splice_from=0)[1]


LONG_CHAT = {**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]}


@pytest.mark.parametrize("kind, body", [(bytes, CHAT), (bytearray, CHAT), (_spliced, LONG_CHAT)])
def test_contracts_match_a_body_however_it_was_read(kind, body):
    """Under gunicorn a JSON body is received into a bytearray (sidecar.worker.read_body), under a test
    client it is bytes, and a body mostly of one long string is forwarded spliced back from the parsed
    string (sidecar.web.body.Spliced): a contract reads the same request from each, and leaves it rewound."""
    from requests import PreparedRequest

    from sidecar.upstream.transports import asked_from
    prepared = PreparedRequest()
    prepared.prepare(method="POST", url="http://mistral.test/v1/chat/completions",
                     headers={"Content-Type": "application/json"})
    prepared.body = kind(json.dumps(body).encode())
    assert asked_from(prepared).json == body
    if hasattr(prepared.body, "read"):
        assert prepared.body.read() == json.dumps(body).encode()


@pytest.mark.parametrize("ctype", ["application/octet-stream", "application/x-www-form-urlencoded"])
def test_a_spooled_upload_that_is_not_json_is_not_read_whole_to_match_a_contract(ctype):
    """A pass-through upload of any size is spooled to disk; matching it against contracts must not
    read it into memory (only a JSON body is matched on its value)."""
    import tempfile

    from requests import PreparedRequest

    from sidecar.upstream.transports import asked_from

    class Unread(tempfile.SpooledTemporaryFile):
        def read(self, *args):
            raise AssertionError("the upload was read")

    prepared = PreparedRequest()
    prepared.prepare(method="POST", url="http://mistral.test/v1/files", headers={"Content-Type": ctype})
    prepared.body = Unread()
    asked = asked_from(prepared)
    assert asked.json is None and not asked.form
