"""Key pools, cooldowns and fallbacks on the native routes, seen by the unchanged Mistral SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from werkzeug.wrappers import Response

from sidecar.core.config import parse

from ..apps import build_app
from ..fakes import Blackhole, FakeMistral, chat_body, chat_events

KEY_A, KEY_B, KEY_C = "sk-pool-key-a-0123456789", "sk-pool-key-b-0123456789", "sk-fallback-key-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def second():
    upstream = FakeMistral()
    yield upstream
    upstream.close()


def pool_config(first_url: str, second_url: str, fallback_url: str | None = None, **router) -> str:
    return yaml.safe_dump({
        "model_list": [
            {"model_name": "large", "litellm_params": {"model": "mistral/mistral-large-latest", "api_base": first_url,
                                                      "api_key": KEY_A, "order": 1}, "model_info": {"id": "key-a"}},
            {"model_name": "large", "litellm_params": {"model": "mistral/mistral-large-2411", "api_base": second_url,
                                                      "api_key": KEY_B, "order": 2}, "model_info": {"id": "key-b"}},
            {"model_name": "medium", "litellm_params": {"model": "mistral/mistral-medium-latest", "api_base": fallback_url or second_url,
                                                       "api_key": KEY_C}},
        ],
        "router_settings": {"fallbacks": [{"large": ["medium"]}], **router},
    })


@pytest.fixture
def configure(settings, tmp_path):
    def build(text: str):
        config = parse(yaml.safe_load(text), Path("config.yaml"), {})
        return build_app(settings.with_(config=config))
    return build


def answers(fake, content, status=200, headers=None):
    def chat(request):
        if status != 200:
            return Response(json.dumps({"object": "error", "message": "slow down", "type": "rate_limited",
                                        "param": None, "code": "1300"}), status,
                            {"Content-Type": "application/json", **(headers or {})})
        data = json.loads(request.get_data())
        if data.get("stream"):
            return Response(b"".join(chat_events(2, model=data["model"])), 200, {"Content-Type": "text/event-stream"})
        return Response(json.dumps(chat_body(model=data["model"], content=content)), 200,
                        {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", chat)


@pytest.fixture
def app(configure, fake, second):
    answers(fake, "from a", 429, {"Retry-After": "30"})
    answers(second, "from b")
    return configure(pool_config(fake.url, second.url))


@pytest.fixture
def mistral(live_sidecar):
    from mistralai.client import Mistral
    return Mistral(api_key="sk-anything", server_url=live_sidecar)


def spend(settings) -> list[dict]:
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT model, deployment, status FROM spend_logs ORDER BY id")).mappings().all()
    engine.dispose()
    return [dict(r) for r in rows]


def test_the_sdk_gets_its_answer_from_the_second_key_and_the_first_is_cooled_down(app, mistral, fake, second, settings):
    response = mistral.chat.complete(model="large", messages=MESSAGES)
    assert response.choices[0].message.content == "from b"
    assert [s.headers["Authorization"] for s in fake.seen] == [f"Bearer {KEY_A}"]
    assert json.loads(second.last.body)["model"] == "mistral-large-2411"  # the deployment's own model name
    app.extensions["sidecar"].accountant.spend.flush()  # a plain answer's record is queued before it returns
    assert spend(settings) == [{"model": "large", "deployment": "key-b", "status": 200}]
    chunks = list(mistral.chat.stream(model="large", messages=MESSAGES))
    assert "".join(c.data.choices[0].delta.content for c in chunks) == "t0 t1 "
    assert len(fake.seen) == 1  # cooling down for its Retry-After: not asked again
    assert [s.headers["Authorization"] for s in second.seen] == [f"Bearer {KEY_B}"] * 2
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'sidecar_deployment_attempts_total{deployment="key-a",outcome="retry"} 1.0' in metrics
    assert 'sidecar_deployment_cooldowns_total{deployment="key-a"} 1.0' in metrics
    assert 'sidecar_deployment_attempts_total{deployment="key-b",outcome="ok"} 2.0' in metrics


def test_every_failed_attempt_is_logged_without_its_key(app, mistral, caplog):
    mistral.chat.complete(model="large", messages=MESSAGES)
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.web.pipeline"]
    assert any("deployment key-a failed (429), cooling down 30 s; trying the next one" in line for line in lines)
    assert not any(KEY_A in line for line in caplog.text.splitlines())


def test_a_model_falls_back_to_another_when_its_deployments_fail(configure, fake, second):
    answers(fake, "unused", 503)
    second.on("POST", "/v1/chat/completions", lambda request: Response(json.dumps(chat_body(
        model=json.loads(request.get_data())["model"], content="from medium")), 200, {"Content-Type": "application/json"}))
    client = configure(pool_config(fake.url, fake.url, second.url)).test_client()  # both of "large" answer 503
    response = client.post("/v1/chat/completions", json={"model": "large", "messages": MESSAGES})
    assert response.status_code == 200 and response.json["choices"][0]["message"]["content"] == "from medium"
    assert len(fake.seen) == 2
    assert json.loads(second.last.body)["model"] == "mistral-medium-latest"
    assert second.last.headers["Authorization"] == f"Bearer {KEY_C}"


def test_a_connection_error_moves_on_to_the_next_deployment(configure, second):
    hole = Blackhole()  # accepts no connection: the connect times out
    try:
        answers(second, "from b")
        client = configure(pool_config(hole.url, second.url)).test_client()
        response = client.post("/v1/chat/completions", json={"model": "large", "messages": MESSAGES})
        assert response.status_code == 200 and response.json["choices"][0]["message"]["content"] == "from b"
        refused = configure(pool_config("http://127.0.0.1:9", second.url)).test_client()  # port 9: refused
        assert refused.post("/v1/chat/completions", json={"model": "large", "messages": MESSAGES}).status_code == 200
    finally:
        hole.close()


def test_when_every_deployment_fails_the_last_answer_is_relayed_as_is(configure, fake, second):
    answers(fake, "", 429, {"Retry-After": "7"})
    answers(second, "", 429, {"Retry-After": "7"})
    client = configure(pool_config(fake.url, second.url)).test_client()
    response = client.post("/v1/chat/completions", json={"model": "large", "messages": MESSAGES})
    assert response.status_code == 429 and response.json["message"] == "slow down"
    assert response.headers["Retry-After"] == "7"
    assert len(fake.seen) + len(second.seen) == 3  # key-a, key-b, then medium (on second)
    again = client.post("/v1/chat/completions", json={"model": "large", "messages": MESSAGES})
    assert again.status_code == 429 and len(fake.seen) + len(second.seen) == 4  # all cooling: one attempt


def test_a_stream_that_started_is_never_retried_elsewhere(configure, fake, second):
    fake.cut_stream("POST", "/v1/chat/completions")
    answers(second, "from b")
    client = configure(pool_config(fake.url, second.url)).test_client()
    response = client.post("/v1/chat/completions", json={"model": "large", "messages": MESSAGES, "stream": True})
    text = response.get_data(as_text=True)
    assert text.startswith("data: ") and second.seen == []


def test_a_key_pool_spreads_requests_by_rpm_headroom(configure, fake, second):
    answers(fake, "a")
    answers(second, "b")
    text = yaml.safe_dump({"model_list": [
        {"model_name": "small", "litellm_params": {"model": "mistral-small-latest", "api_base": fake.url,
                                                  "api_key": KEY_A, "rpm": 1}},
        {"model_name": "small", "litellm_params": {"model": "mistral-small-latest", "api_base": second.url,
                                                  "api_key": KEY_B, "rpm": 1}}]})
    client = configure(text).test_client()
    contents = {client.post("/v1/chat/completions", json={"model": "small", "messages": MESSAGES}).json[
        "choices"][0]["message"]["content"] for _ in range(2)}
    assert contents == {"a", "b"}  # the second request goes where a request of the minute is left
    assert len(fake.seen) == len(second.seen) == 1
