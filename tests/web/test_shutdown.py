"""Graceful shutdown and worker recycling under gunicorn: in-flight streams finish, new connections are refused.

SIGTERM closes the listeners at once and gives in-flight requests ``SIDECAR_GRACEFUL_TIMEOUT``
seconds; a worker recycled by ``SIDECAR_MAX_REQUESTS`` drains the same way.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest
import requests
import sqlalchemy as sa

from ..conftest import MISTRAL_KEY
from ..fakes import chat_events
from ..servers import children, gunicorn_sidecar

pytestmark = pytest.mark.slow
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _env(fake, tmp_path, **extra) -> dict:
    return {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": MISTRAL_KEY,
            "SIDECAR_DB_PATH": str(tmp_path / "sidecar.sqlite3"), **extra}


class StreamReader(threading.Thread):
    """Reads one streamed chat completion in the background; ``started`` is set at its first event."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.events, self.error = url, [], None
        self.started = threading.Event()

    def run(self):
        try:
            with requests.post(self.url + "/v1/chat/completions", json=CHAT, stream=True, timeout=30) as response:
                for line in response.iter_lines():
                    if line:
                        self.events.append(line)
                        self.started.set()
        except requests.RequestException as exc:
            self.error = exc
        finally:
            self.started.set()


def _refused(url: str, within: float) -> bool:
    """True once a new TCP connection to the sidecar is refused (polled for ``within`` seconds)."""
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_sigterm_lets_in_flight_streams_finish_and_refuses_new_connections(fake, tmp_path):
    fake.stream("POST", "/v1/chat/completions", chat_events(30), delay=0.1)  # about 3 s
    env = _env(fake, tmp_path, SIDECAR_GRACEFUL_TIMEOUT="20")
    with gunicorn_sidecar(env, workers=1, log_path=tmp_path / "sidecar.log") as (url, process):
        readers = [StreamReader(url) for _ in range(3)]
        for reader in readers:
            reader.start()
        for reader in readers:
            assert reader.started.wait(10)
        process.send_signal(signal.SIGTERM)
        assert _refused(url, within=2.5), "the sidecar still accepts connections after SIGTERM"
        assert any(reader.is_alive() for reader in readers), "streams ended before the listener closed"
        for reader in readers:
            reader.join(20)
        assert process.wait(20) == 0
    for reader in readers:
        assert reader.error is None
        assert len(reader.events) == 32 and reader.events[-1] == b"data: [DONE]"  # 30, cost, DONE


def test_the_grace_period_bounds_how_long_shutdown_waits(fake, tmp_path):
    fake.stream("POST", "/v1/chat/completions", chat_events(300), delay=0.1)  # about 30 s
    env = _env(fake, tmp_path, SIDECAR_GRACEFUL_TIMEOUT="2")
    with gunicorn_sidecar(env, workers=1, log_path=tmp_path / "sidecar.log") as (url, process):
        reader = StreamReader(url)
        reader.start()
        assert reader.started.wait(10)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        took = time.monotonic() - signalled
        reader.join(10)
    assert took < 2 + 4, f"shutdown took {took:.1f} s with a 2 s grace period"
    assert len(reader.events) < 301  # the stream was cut when the grace period ran out
    # ... and told so, in the stream, before the connection closed; and it is billed.
    last = json.loads(reader.events[-1].removeprefix(b"data: "))
    assert last["object"] == "error" and last["code"] == "sidecar_shutdown", reader.events[-3:]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sidecar.sqlite3'}")
    with engine.connect() as connection:
        (row,) = connection.execute(sa.text("SELECT * FROM spend_logs WHERE streamed")).mappings().all()
    engine.dispose()
    relayed = len(reader.events) - 1  # content events "t0 ", "t1 "... of 3 to 4 characters
    assert row["estimated"] and row["error"] == "stream cut at shutdown" and row["cost"] > 0
    assert relayed * 3 / 3.5 - 1 <= row["completion_tokens"] <= relayed * 4 / 3.5 + 1


def test_worker_recycling_lets_in_flight_streams_finish(fake, tmp_path):
    fake.stream("POST", "/v1/chat/completions", chat_events(20), delay=0.1)  # about 2 s
    env = _env(fake, tmp_path, SIDECAR_MAX_REQUESTS="3", SIDECAR_GRACEFUL_TIMEOUT="20")
    with gunicorn_sidecar(env, workers=1, log_path=tmp_path / "sidecar.log") as (url, process):
        (first_worker,) = children(process.pid)
        reader = StreamReader(url)
        reader.start()
        assert reader.started.wait(10)
        # enough requests to reach max_requests (3, plus at most 1 of jitter) while the stream runs
        statuses = [requests.get(url + "/health/liveliness", timeout=20).status_code for _ in range(5)]
        reader.join(20)
        assert statuses == [200] * 5
        deadline = time.monotonic() + 10
        while children(process.pid) in ([], [first_worker]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children(process.pid) and first_worker not in children(process.pid), "the worker was not recycled"
    assert reader.error is None
    assert len(reader.events) == 22 and reader.events[-1] == b"data: [DONE]"  # 20, cost, DONE
