"""Record mode: real exchanges (here with the local fake Mistral) written as contracts, secrets nowhere."""

from __future__ import annotations

import json

import pytest
from werkzeug.wrappers import Response

from sidecar.contracts import fileformat as contracts

from ..conftest import MISTRAL_KEY
from ..fakes import chat_body, chat_events

CLIENT_KEY = "sk-client-master-key-9876543210"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Hello there"}]}


@pytest.fixture
def recorder(make_app, tmp_path):
    directory = tmp_path / "recorded"
    app = make_app(upstream_mode="record", contracts_dir=directory, master_key=CLIENT_KEY)
    return app.test_client(), directory


def _echo_credentials(request):
    """A hostile upstream: it echoes the credential it was sent into headers and body."""
    body = chat_body(content=f"you sent {request.headers.get('Authorization')}")
    return Response(json.dumps(body), 200, {"Content-Type": "application/json", "X-Echo": request.headers.get("Authorization", ""),
                                            "Set-Cookie": f"session={MISTRAL_KEY}", "mistral-correlation-id": "abc"})


def test_plain_and_streamed_exchanges_are_recorded_and_replay_identically(recorder, fake, make_app):
    client, directory = recorder
    fake.on("POST", "/v1/chat/completions", _echo_credentials)
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Cookie": f"k={CLIENT_KEY}", "X-Tag": CLIENT_KEY}
    plain = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert plain.status_code == 200

    fake.stream("POST", "/v1/chat/completions", chat_events(4))
    streamed = client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=headers, buffered=False)
    chunks = list(streamed.response)  # the client's stream is relayed as it arrives, not after recording
    streamed.close()
    relayed = b"".join(chunks).split(b"\n\n")
    assert [e for e in relayed if not e.startswith(b":")] == b"".join(chat_events(4)).split(b"\n\n")  # (less the cost comment)

    written = list(directory.glob("*.yaml"))
    assert [p.name for p in written] == ["chat_completion_v1_chat_completions_post.yaml"]
    text = written[0].read_text()
    assert MISTRAL_KEY not in text and CLIENT_KEY not in text
    assert "Authorization" not in text and "Set-Cookie" not in text and "<scrubbed>" in text
    recorded = contracts.load_file(written[0])
    assert [c.source for c in recorded] == ["recorded", "recorded"]
    events = recorded[1].response["events"]
    assert events[-1]["data"] == "[DONE]" and len(events) == 5
    assert all(isinstance(e["delay"], float) and e["delay"] >= 0 for e in events)  # each event's pace is kept
    assert recorded[0].response["headers"]["mistral-correlation-id"] == "abc"

    replay = make_app(upstream_mode="replay", contracts_dir=directory).test_client()
    again = replay.post("/v1/chat/completions", json=dict(CHAT, stream=True))
    assert _events(again.data) == _events(b"".join(chat_events(4)))  # same events (JSON re-serialised compact)
    assert replay.post("/v1/chat/completions", json=CHAT).json["choices"][0]["message"]["content"] == "you sent <scrubbed>"


def test_a_slow_stream_recorded_from_upstream_replays_at_the_pace_it_was_recorded(recorder, fake, make_app,
                                                                                  live_sidecar_for):
    """Record then replay, end to end: 50 events 40 ms apart upstream (about 2 s) come back in 2 s +- 20 %."""
    import time

    import requests

    client, directory = recorder
    fake.stream("POST", "/v1/chat/completions", chat_events(49), delay=0.04)
    streamed = client.post("/v1/chat/completions", json=dict(CHAT, stream=True),
                           headers={"Authorization": f"Bearer {CLIENT_KEY}"}, buffered=False)
    list(streamed.response)
    streamed.close()
    recorded = contracts.load_file(directory / "chat_completion_v1_chat_completions_post.yaml")[0].response["events"]
    assert len(recorded) == 50
    paced = sum(event["delay"] for event in recorded)
    assert 1.6 <= paced <= 2.6, f"the recorder kept {paced:.2f} s of pacing for a stream that took about 2 s"

    url = live_sidecar_for(make_app(upstream_mode="replay", contracts_dir=directory))
    started = time.monotonic()
    with requests.post(url + "/v1/chat/completions", json=dict(CHAT, stream=True), stream=True, timeout=30) as answer:
        arrivals = [time.monotonic() - started for line in answer.iter_lines() if line.startswith(b"data:")]
    assert len(arrivals) == 50
    assert 0.8 * paced <= arrivals[-1] <= 1.2 * paced, f"recorded {paced:.2f} s, replayed in {arrivals[-1]:.2f} s"
    assert arrivals[25] >= 0.4 * paced  # spread out, not held back and sent at the end


def _events(raw: bytes) -> list:
    return [contracts.unframe(block) for block in raw.split(b"\n\n") if block and not block.startswith(b":")]


def test_the_same_request_is_recorded_once(recorder, fake):
    client, directory = recorder
    fake.on("POST", "/v1/embeddings", json_body={"id": "e", "object": "list", "model": "mistral-embed", "data": [],
                                                 "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}})
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    for text in ("a", "a", "b"):
        assert client.post("/v1/embeddings", json={"model": "mistral-embed", "input": text}, headers=headers).status_code == 200
    assert len(contracts.load_file(directory / "embeddings_v1_embeddings_post.yaml")) == 2


def test_no_key_is_written_anywhere_in_the_directory(recorder, fake):
    client, directory = recorder
    fake.on("GET", "/v1/models", json_body={"object": "list", "data": [], "echo": MISTRAL_KEY})
    fake.on("GET", "/v1/files", json_body={"object": "list", "data": [], "echo": f"Bearer {MISTRAL_KEY}"})
    for path in ("/v1/models", f"/v1/files?note={CLIENT_KEY}"):
        client.get(path, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    blobs = b"".join(p.read_bytes() for p in directory.rglob("*"))
    assert blobs and MISTRAL_KEY.encode() not in blobs and CLIENT_KEY.encode() not in blobs


def test_an_abandoned_stream_is_not_recorded(recorder, fake):
    client, directory = recorder
    fake.stream("POST", "/v1/chat/completions", chat_events(50), delay=0.01)
    response = client.post("/v1/chat/completions", json=dict(CHAT, stream=True),
                           headers={"Authorization": f"Bearer {CLIENT_KEY}"}, buffered=False)
    next(iter(response.response))
    response.close()
    assert not (directory / "chat_completion_v1_chat_completions_post.yaml").exists()
