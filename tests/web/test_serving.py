"""The sidecar as deployed: gunicorn with gevent workers, real sockets, real disconnects."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from werkzeug.wrappers import Response

from ..conftest import MISTRAL_KEY
from ..fakes import chat_events
from ..servers import gunicorn_sidecar

pytestmark = pytest.mark.slow
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
def served(fake, tmp_path):
    env = {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": MISTRAL_KEY,
           "SIDECAR_DB_PATH": str(tmp_path / "sidecar.sqlite3")}
    with gunicorn_sidecar(env, workers=1, log_path=tmp_path / "sidecar.log") as (url, _process):
        yield url


def test_a_thousand_event_stream_is_relayed_event_by_event(served, fake):
    events = chat_events(1000)
    fake.stream("POST", "/v1/chat/completions", events, delay=0.001)
    started = time.perf_counter()
    with requests.post(served + "/v1/chat/completions", json=CHAT, stream=True, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        first_at = time.perf_counter() - started
        rest = [line for line in lines if line]
    total = time.perf_counter() - started
    assert first.startswith(b"data: {")
    assert len(rest) + 1 == len(events) + 1  # and the cost comment
    assert rest[-2].startswith(b": x-sidecar-cost=") and rest[-1] == b"data: [DONE]"
    # the first event must not wait for the ~1 s the upstream takes to send the rest
    assert first_at < total / 4


def test_client_disconnect_closes_the_upstream_stream(served, fake):
    closed = threading.Event()

    def endless(request):
        def body():
            try:
                for event in chat_events(100000)[:-1]:
                    yield event
                    time.sleep(0.01)
            finally:
                closed.set()
        return Response(body(), 200, {"Content-Type": "text/event-stream"})

    fake.on("POST", "/v1/chat/completions", endless)
    host, port = served.removeprefix("http://").split(":")
    payload = json.dumps(CHAT).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        received = b""
        sock.settimeout(10)
        while b"data: " not in received:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the first event"
            received += chunk
    # the upstream notices within a second or so (its next write fails)
    assert closed.wait(5), "upstream stream still open after the client left"
    assert requests.get(served + "/health/liveliness", timeout=5).status_code == 200


def test_many_concurrent_streams_on_one_worker(served, fake):
    fake.stream("POST", "/v1/chat/completions", chat_events(20), delay=0.02)
    results = []

    def one():
        with requests.post(served + "/v1/chat/completions", json=CHAT, stream=True, timeout=30) as r:
            results.append(sum(1 for line in r.iter_lines() if line))

    threads = [threading.Thread(target=one) for _ in range(50)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert results == [22] * 50  # 20 events, the cost comment, [DONE]
    # 50 streams of ~0.4 s each on one gevent worker run concurrently, not one after another
    assert elapsed < 10


def test_the_gunicorn_master_imports_nothing_gevent_must_patch_first():
    """gunicorn reads sidecar.gunicorn_conf in the master before forking; ssl, requests or urllib3
    imported there would be patched too late in the gevent workers (MonkeyPatchWarning, then errors)."""
    probe = ("import sys, sidecar.gunicorn_conf; "
             "print(sorted(m for m in ('ssl', 'requests', 'urllib3', 'flask', 'sqlalchemy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_workers_start_without_monkey_patch_warnings(served, tmp_path):
    assert requests.get(served + "/health/readiness", timeout=5).status_code == 200
    assert "MonkeyPatchWarning" not in (tmp_path / "sidecar.log").read_text()


def _probe(tmp_path, probe: str) -> str:
    """Run ``probe`` in a fresh interpreter with a throwaway store and no upstream; its last line."""
    env = {**__import__("os").environ, "SIDECAR_DB_PATH": str(tmp_path / "s.db"), "DATABASE_URL": "",
           "REDIS_URL": "", "SIDECAR_CONFIG": "", "SIDECAR_MASTER_KEY": "", "MISTRAL_API_KEY": "sk-test",
           "MISTRAL_API_BASE": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_master_builds_the_spec_table_once_for_every_worker(tmp_path):
    """gunicorn's on_starting (the master, before it forks) builds the spec table and validators, and
    every app built afterwards in that process, as a forked worker's is, uses those very objects."""
    probe = (
        "import gc, sys\n"
        "import sidecar.gunicorn_conf as conf\n"
        "class Server:\n"
        "    class cfg: bind = ['127.0.0.1:0']; workers = 1\n"
        "conf.on_starting(Server)\n"
        "from sidecar.core import validation\n"
        "built = validation._compiled.cache_info().currsize == 1\n"
        "spec, validators = validation.load_compiled(conf._settings.spec_path)\n"
        "frozen = gc.get_freeze_count()\n"
        "from sidecar.factory import create_app\n"
        "pipeline = create_app(conf._settings).extensions['sidecar']\n"
        "print(built, pipeline.spec is spec, pipeline.validators is validators, frozen > 0)\n"
    )
    assert _probe(tmp_path, probe) == "True True True True"


def test_a_worker_freezes_its_built_app_out_of_the_collector(tmp_path):
    """post_worker_init (after the worker built its app) freezes it: a full collection then walks
    only what came later, not the ~140,000 objects of the app that every one walked before (the
    50-100 ms pauses of a loaded worker's p99)."""
    probe = (
        "import gc, time\n"
        "import sidecar.gunicorn_conf as conf\n"
        "from sidecar.factory import create_app\n"
        "app = create_app(conf._settings)\n"
        "class Worker:\n"
        "    class cfg: graceful_timeout = 30\n"
        "before = gc.get_freeze_count()\n"
        "conf.post_worker_init(Worker)\n"
        "started = time.perf_counter(); gc.collect(); pause = time.perf_counter() - started\n"
        "print(gc.get_freeze_count() - before, len(gc.get_objects()), pause)\n"
    )
    frozen, left, _pause = _probe(tmp_path, probe).split()
    assert int(frozen) > 20_000 and int(left) < 5_000, (frozen, left)
