"""Keys and limits under real gunicorn: one limit across two workers (and across two instances with
Redis), and a revoked key refused by every worker within a second."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import requests

from ..conftest import MISTRAL_KEY
from ..databases import redis_url
from ..fakes import chat_body
from ..servers import gunicorn_sidecar

pytestmark = pytest.mark.slow
MASTER = "sk-master-workers-0123456789"
PROMPT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Hi"}]}


@contextlib.contextmanager
def gunicorn(env: dict, workers: int, log: Path):
    """The sidecar under its production gunicorn settings; yields its URL."""
    with gunicorn_sidecar(env, workers=workers, log_path=log) as (url, _):
        yield url


@pytest.fixture
def env(fake, tmp_path) -> dict:
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    return {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": MISTRAL_KEY, "SIDECAR_MASTER_KEY": MASTER,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'sidecar.db'}", "SIDECAR_DB_PATH": str(tmp_path / "local.db"),
            "REDIS_URL": "", "SIDECAR_CONFIG": ""}


def generate(url: str, **fields) -> str:
    answer = requests.post(url + "/key/generate", json=fields, headers={"Authorization": f"Bearer {MASTER}"}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["key"]


def chat(url: str, key: str) -> requests.Response:
    """One request on a fresh connection, so gunicorn may hand it to any worker."""
    return requests.post(url + "/v1/chat/completions", json=PROMPT, timeout=10,
                         headers={"Authorization": f"Bearer {key}", "Connection": "close"})


def _assert_exactly_five_of_twelve(responses) -> None:
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["code"] == "rpm_limit_exceeded" and 1 <= int(refused.headers["Retry-After"]) <= 60


def test_rpm_limit_holds_across_two_gunicorn_workers(env, tmp_path):
    with gunicorn(env, workers=2, log=tmp_path / "gunicorn.log") as url:
        key = generate(url, rpm_limit=5)
        _assert_exactly_five_of_twelve([chat(url, key) for _ in range(12)])


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(env, tmp_path):
    with gunicorn(env, workers=2, log=tmp_path / "gunicorn.log") as url:
        key = generate(url)
        assert {chat(url, key).status_code for _ in range(20)} == {200}  # cached by both workers by now
        deleted = requests.post(url + "/key/delete", json={"keys": [key]}, timeout=5,
                                headers={"Authorization": f"Bearer {MASTER}"})
        revoked_at = time.monotonic()
        assert deleted.status_code == 200
        time.sleep(max(0.0, 1.0 - (time.monotonic() - revoked_at)))
        refused = [chat(url, key) for _ in range(20)]
        assert {r.status_code for r in refused} == {401}
        assert {r.json()["code"] for r in refused} == {"key_deleted"}


@pytest.mark.redis
def test_with_redis_the_limit_holds_across_two_instances(env, tmp_path):
    env = {**env, "REDIS_URL": redis_url()}  # both instances share the key store file and Redis
    with gunicorn(env, 1, tmp_path / "a.log") as first, gunicorn(env, 1, tmp_path / "b.log") as second:
        key = generate(first, rpm_limit=5)
        _assert_exactly_five_of_twelve([chat((first, second)[i % 2], key) for i in range(12)])
