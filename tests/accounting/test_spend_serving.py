"""The spend log, metrics and logs under real gunicorn (gevent workers): nothing lost on SIGTERM or
recycling, metrics summed over workers, and no secret in anything the sidecar prints."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa
from werkzeug.wrappers import Response

from ..conftest import MISTRAL_KEY
from ..fakes import chat_body, chat_events
from ..servers import gunicorn_sidecar

pytestmark = pytest.mark.slow
MASTER = "sk-master-e2e-0123456789abcdef"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "a secret prompt: tell me a joke"}]}
COMPLETION = "a secret completion: the joke"


def slow_chat(delay: float):
    def answer(request):
        time.sleep(delay)
        return Response(json.dumps(chat_body(content=COMPLETION)), 200, {"Content-Type": "application/json"})
    return answer


def env_for(fake, tmp_path, **extra) -> dict:
    return {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": MISTRAL_KEY, "SIDECAR_MASTER_KEY": MASTER,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'spend.db'}", "SIDECAR_GRACEFUL_TIMEOUT": "20", **extra}


def spend_rows(tmp_path) -> list:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'spend.db'}")
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT request_id, status, streamed, cost FROM spend_logs")).all()
    engine.dispose()
    return rows


def worker_pids(metrics_dir) -> set[str]:
    """Workers that have written metrics: prometheus_client keeps one file per process and type."""
    return {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}


def test_no_spend_record_is_lost_on_sigterm_or_worker_recycling(fake, tmp_path):
    """N clients hammer two workers that recycle every 40 requests; SIGTERM arrives mid-load.
    Every request a client saw answered in full has exactly one record, and no other has one."""
    fake.on("POST", "/v1/chat/completions", slow_chat(0.05))
    fake.stream("POST", "/v1/fim/completions", chat_events(5, model="codestral-2508"), delay=0.02)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    log_path = tmp_path / "sidecar.log"
    env = env_for(fake, tmp_path, SIDECAR_MAX_REQUESTS="40")
    with gunicorn_sidecar(env, workers=2, log_path=log_path) as (url, process):
        auth = {"Authorization": f"Bearer {MASTER}"}

        def client(n: int) -> None:
            session = requests.Session()
            i = 0
            while not stop.is_set():
                i += 1
                request_id = f"c{n}x{i}"
                headers = {**auth, "x-request-id": request_id, "x-end-user": f"user-{n}"}
                try:
                    if i % 3 == 0:
                        body = {"model": "codestral-latest", "prompt": "def f(", "stream": True}
                        with session.post(url + "/v1/fim/completions", json=body, headers=headers, stream=True,
                                          timeout=10) as response:
                            data = response.raw.read()
                            complete = response.status_code == 200 and data.rstrip().endswith(b"data: [DONE]")
                    else:
                        response = session.post(url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
                        complete = response.status_code == 200 and response.json()["usage"]["total_tokens"] == 17
                except (requests.RequestException, ValueError):
                    complete = False
                    time.sleep(0.01)
                if complete:
                    with lock:
                        answered.append(request_id)

        with ThreadPoolExecutor(24) as pool:
            for n in range(24):
                pool.submit(client, n)
            deadline = time.monotonic() + 90
            while ("Autorestarting worker" not in log_path.read_text() or len(answered) < 60) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # requests are in flight on both workers
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            stop.set()
    assert process.returncode == 0
    assert len(answered) > 40, "the load never got going"
    rows = spend_rows(tmp_path)
    recorded = [row.request_id for row in rows]
    assert len(recorded) == len(set(recorded)), "a request was recorded twice"
    missing = set(answered) - set(recorded)
    assert not missing, f"{len(missing)} answered requests have no spend record"
    assert len(recorded) - len(answered) <= 24  # at most one per client connection cut by the shutdown
    assert any(row.streamed for row in rows) and all(row.cost is not None for row in rows if row.status == 200)
    assert "Autorestarting worker" in log_path.read_text(), "no worker was recycled under the load"


def test_metrics_from_two_workers_are_summed_and_logs_hold_no_secret(fake, tmp_path):
    fake.on("POST", "/v1/chat/completions", slow_chat(0.02))
    fake.stream("POST", "/v1/fim/completions", chat_events(3, model="codestral-2508"))
    metrics_dir = tmp_path / "prom"
    log_path = tmp_path / "sidecar.log"
    env = env_for(fake, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    with gunicorn_sidecar(env, workers=2, log_path=log_path) as (url, _process):
        master = {"Authorization": f"Bearer {MASTER}"}
        generated = requests.post(url + "/key/generate", json={"key_alias": "app-one"}, headers=master, timeout=5)
        assert generated.status_code == 200, generated.text
        virtual = generated.json()["key"]

        def one(i: int) -> int:
            key = virtual if i % 2 else MASTER
            headers = {"Authorization": f"Bearer {key}", "Connection": "close", "x-end-user": "bob"}
            if i % 5 == 0:
                response = requests.post(url + "/v1/fim/completions", headers=headers, timeout=10,
                                         json={"model": "codestral-latest", "prompt": "x", "stream": True})
            else:
                response = requests.post(url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
            return response.status_code

        sent = 0
        with ThreadPoolExecutor(16) as pool:
            deadline = time.monotonic() + 90  # until both workers have booted and served some
            while sent < 60 or (len(worker_pids(metrics_dir)) < 2 and time.monotonic() < deadline):
                assert list(pool.map(one, range(sent, sent + 20))) == [200] * 20
                sent += 20
        assert requests.post(url + "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-wrong-key"},
                             timeout=5).status_code == 401
        assert len(worker_pids(metrics_dir)) == 2, "both workers should have served requests"
        fims = len(range(0, sent, 5))
        for _ in range(4):  # whichever worker answers the scrape, it reports every worker's counts
            text = requests.get(url + "/metrics", timeout=5).text
            chat = f'sidecar_requests_total{{operation="chat_completion_v1_chat_completions_post",status="2xx"}} {sent - fims}.0'
            fim = f'sidecar_requests_total{{operation="fim_completion_v1_fim_completions_post",status="2xx"}} {fims}.0'
            assert chat in text and fim in text
            assert "sidecar_open_streams 0.0" in text
        spent = requests.get(url + "/key/info", headers={"Authorization": f"Bearer {virtual}"}, timeout=5).json()
        assert spent["info"]["spend"] > 0
    output = log_path.read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len([line for line in lines if line.get("operation", "").startswith("chat_")]) == sent - fims + 1
    assert {line["key_alias"] for line in lines if line.get("status") == 200 and line["operation"].startswith("chat")} \
        == {"master", "app-one"}
    for secret in (MASTER, MISTRAL_KEY, virtual, "sk-wrong-key", "a secret prompt", "a secret completion"):
        assert secret not in output, f"{secret[:8]}... leaked into the log"
