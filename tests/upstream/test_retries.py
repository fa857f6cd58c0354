"""Retries (SIDECAR_RETRIES): 429/5xx and refused connections retried with backoff; streams never once started."""

from __future__ import annotations

import json

import pytest
from werkzeug.wrappers import Response

from sidecar.settings import Settings

from ..fakes import chat_body
from ..servers import free_port

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}


def answers(*responses):
    """A fake-upstream handler that answers with each (status, headers) in turn, then 200."""
    queue = list(responses)

    def handler(request):
        if queue:
            status, headers = queue.pop(0)
            return Response(json.dumps({"object": "error", "message": "busy"}), status,
                            {"Content-Type": "application/json", **headers})
        return Response(json.dumps(chat_body()), 200, {"Content-Type": "application/json"})
    return handler


@pytest.fixture
def retrying(make_app, clock):
    """Waits between attempts advance the fake clock (``clock.slept``) instead of taking real time."""
    return make_app(retries=2, retry_backoff=0.01, retry_max_wait=1.0).test_client()


def test_retries_are_off_by_default(client, fake):
    assert Settings().retries == 0
    fake.on("POST", "/v1/chat/completions", answers((429, {})))
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 429
    assert len(fake.seen) == 1


def test_settings_read_retries_from_the_environment():
    settings = Settings.from_env({"SIDECAR_RETRIES": "3", "SIDECAR_RETRY_BACKOFF": "0.2"})
    assert (settings.retries, settings.retry_backoff) == (3, 0.2)


def test_429_then_200_honours_retry_after(retrying, fake, clock):
    fake.on("POST", "/v1/chat/completions", answers((429, {"Retry-After": "1"})))
    response = retrying.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200 and response.json["choices"][0]["message"]["content"] == "Hello!"
    assert len(fake.seen) == 2 and clock.slept == [1.0]
    assert fake.seen[0].body == fake.seen[1].body


def test_retry_after_as_an_http_date_is_waited_for_by_the_clock(retrying, fake, clock):
    from email.utils import formatdate

    fake.on("POST", "/v1/chat/completions", answers((503, {"Retry-After": formatdate(clock.wall() + 1, usegmt=True)})))
    assert retrying.post("/v1/chat/completions", json=CHAT).status_code == 200
    (waited,) = clock.slept
    assert 0 < waited <= 1.0


def test_500_then_200_is_retried_with_backoff(retrying, fake, clock):
    fake.on("POST", "/v1/chat/completions", answers((500, {}), (503, {})))
    assert retrying.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert len(fake.seen) == 3
    first, second = clock.slept  # exponential, with jitter of at most half
    assert 0.005 <= first <= 0.01 and 0.01 <= second <= 0.02


def test_the_last_failure_is_relayed_when_retries_run_out(retrying, fake):
    fake.on("POST", "/v1/chat/completions", answers((502, {}), (502, {}), (502, {}), (502, {})))
    response = retrying.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502 and response.json["message"] == "busy"
    assert len(fake.seen) == 3


def test_client_errors_are_not_retried(retrying, fake):
    fake.on("POST", "/v1/chat/completions", answers((400, {})))
    assert retrying.post("/v1/chat/completions", json=CHAT).status_code == 400
    assert len(fake.seen) == 1


def test_refused_connections_are_retried_then_reported(make_app):
    client = make_app(mistral_api_base=f"http://127.0.0.1:{free_port()}", retries=2, retry_backoff=0.01).test_client()
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502 and response.json["code"] == "upstream_unavailable"


def test_a_stream_is_not_retried_once_bytes_flowed(retrying, fake):
    fake.cut_stream("POST", "/v1/chat/completions")
    response = retrying.post("/v1/chat/completions", json=dict(CHAT, stream=True))
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and "t0" in text
    assert len(fake.seen) == 1
