"""Money under gunicorn (2 gevent workers): bursts and sequences of requests against a budget and a
tpm limit, counted in the shared limits file and in Redis, and SIGKILL of both workers mid-load with
every answer recorded.

The figures the issue set: 100 parallel ~$0.0002 streams against a $0.001 budget spend at most
1.25x the budget; 40 sequential requests are admitted exactly while spend + reservation fits; 100
parallel 640-token streams against tpm_limit 1000 admit at most 3.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa
from werkzeug.wrappers import Response

from sidecar.core import estimate

from ..conftest import MISTRAL_KEY
from ..databases import redis_url
from ..fakes import chat_body, chat_events
from ..servers import children, gunicorn_sidecar

pytestmark = pytest.mark.slow
MASTER = "sk-master-money-test-0123456789"
PROMPT, COMPLETION = 10, 330  # $0.0000015 + $0.000198 on mistral-small-latest ($0.15 / $0.6 per M)
COST = (PROMPT * 0.15 + COMPLETION * 0.6) / 1e6
BODY = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Tell me about Paris."}],
        "max_tokens": COMPLETION}


def _fake_chat(fake, completion=COMPLETION, events=8, delay=0.05):
    """Plain answers and streams of ``events`` events (usage on the last), ``delay`` apart."""
    def answer(request):
        body = json.loads(request.get_data())
        if not body.get("stream"):
            time.sleep(delay)
            return Response(json.dumps(chat_body(prompt=PROMPT, completion=completion)), 200,
                            {"Content-Type": "application/json"})

        def stream():
            for event in chat_events(events, prompt=PROMPT, completion=completion):
                yield event
                time.sleep(delay)
        return Response(stream(), 200, {"Content-Type": "text/event-stream"})
    fake.on("POST", "/v1/chat/completions", answer)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def limiter(request) -> str:
    """Where the limits are counted: the shared SQLite file of the machine, or Redis (REDIS_URL)."""
    return redis_url() if request.param == "redis" else ""


@pytest.fixture
def sidecar(fake, tmp_path, limiter):
    _fake_chat(fake)
    env = {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": MISTRAL_KEY, "SIDECAR_MASTER_KEY": MASTER,
           "SIDECAR_DB_PATH": str(tmp_path / "sidecar.sqlite3"), "REDIS_URL": limiter}
    with gunicorn_sidecar(env, workers=2, log_path=tmp_path / "sidecar.log") as (url, process):
        yield url, process


def _key(url, **fields) -> str:
    answer = requests.post(url + "/key/generate", json=fields, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["key"]


def _spend(url, key) -> float:
    time.sleep(0.5)  # the writers' last batch
    info = requests.get(url + "/key/info", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return info.json()["info"]["spend"]


def _name(limiter: str) -> str:
    return "redis" if limiter else "sqlite"


def _call(url, key, body) -> int:
    with requests.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       stream=True, timeout=60) as response:
        for _ in response.iter_content(None):
            pass
        return response.status_code


def test_a_burst_of_streams_spends_at_most_its_budget(sidecar, limiter):
    url, _process = sidecar
    key = _key(url, max_budget=0.001)
    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(lambda _: _call(url, key, {**BODY, "stream": True}), range(100)))
    assert set(statuses) <= {200, 400}
    spend = _spend(url, key)
    print(f"burst ({_name(limiter)}): {statuses.count(200)} of 100 admitted, spend ${spend:.6f} = {spend / 0.001:.2f}x the budget")
    assert 1 <= statuses.count(200) <= 5 and spend <= 1.25 * 0.001


def test_sequential_requests_are_admitted_exactly_while_spend_and_reservation_fit(sidecar, limiter):
    url, _process = sidecar
    key = _key(url, max_budget=0.001)
    statuses = [_call(url, key, BODY) for _ in range(40)]
    reserve = (estimate.prompt_tokens(BODY) * 0.15 + COMPLETION * 0.6) / 1e6
    fits = int((0.001 - reserve) // COST) + 1
    print(f"sequential ({_name(limiter)}): {statuses.count(200)} of 40 admitted, {fits} fit (cost ${COST:.7f}, reserve ${reserve:.7f})")
    assert statuses == [200] * fits + [400] * (40 - fits)
    assert _spend(url, key) == pytest.approx(fits * COST) and fits * COST <= 0.001


def test_a_tpm_limit_holds_against_a_burst_of_long_streams(sidecar, fake, limiter):
    url, _process = sidecar
    _fake_chat(fake, completion=630)  # 640 tokens each with the prompt
    key = _key(url, tpm_limit=1000)
    body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Write a long essay."}],
            "stream": True}
    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(lambda _: _call(url, key, body), range(100)))
    print(f"tpm ({_name(limiter)}): {statuses.count(200)} of 100 admitted")
    assert set(statuses) <= {200, 429} and 1 <= statuses.count(200) <= 3


@pytest.mark.parametrize("limiter", ["local"], indirect=True)  # Redis's sweep: tests/access/test_limits.py
@pytest.mark.parametrize("limits", [{}, {"max_budget": 1000.0}], ids=["journal", "counters"])
def test_sigkill_of_both_workers_mid_load_leaves_no_answered_request_without_a_record(sidecar, tmp_path, limits):
    """A key without limits is admitted in its worker's journal, one with a budget in the shared counters."""
    url, process = sidecar
    key = _key(url, **limits)
    answered, stop = [], threading.Event()

    def client(streaming: bool) -> None:
        while not stop.is_set():
            request_id = uuid.uuid4().hex
            try:
                with requests.post(url + "/v1/chat/completions", json={**BODY, "stream": streaming}, timeout=30,
                                   headers={"Authorization": f"Bearer {key}", "x-request-id": request_id},
                                   stream=streaming) as response:
                    content = b"".join(response.iter_content(None))
                    if response.status_code == 200 and (not streaming or content.endswith(b"data: [DONE]\n\n")):
                        answered.append(request_id)
            except requests.RequestException:
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i % 2 == 0,), daemon=True) for i in range(50)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    before = len(answered)
    for worker in children(process.pid):
        os.kill(worker, signal.SIGKILL)
    time.sleep(4)  # gunicorn starts two new workers; they sweep what the dead ones left
    stop.set()
    for thread in threads:
        thread.join(60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sidecar.sqlite3'}")
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT request_id, estimated FROM spend_logs WHERE key_hash IS NOT NULL")
                                  ).all()
    engine.dispose()
    recorded = {row[0] for row in rows}
    missing = [r for r in answered if r not in recorded]
    print(f"sigkill: {len(answered)} answered ({before} before the kill), {len(rows)} records, "
          f"{sum(1 for row in rows if row[1])} estimated, {len(missing)} answered without a record")
    assert before > 50 and not missing
