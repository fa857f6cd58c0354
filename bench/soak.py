"""The soak: steady mixed traffic through the sidecar for a bounded time, then a SIGTERM and a count.

    python bench/soak.py [--seconds 600] [--rate 40] [--workers 2] [--out bench/results/soak.json]

Starts a fake Mistral (``tests/fakes.py``, loopback) and the sidecar under its production gunicorn
settings with a master key and one virtual key, then sends, at a fixed rate, a mix of plain chat,
streaming chat, OCR and admin calls (``/key/info``, ``/spend/report``) for ``--seconds``. It samples the
workers' RSS every 10 s, stops the sidecar with SIGTERM once the last answer is in, and counts the spend
records the store holds for the run. It passes when no answer was a 5xx or a broken connection, the
records equal the answered requests, and RSS did not grow over the second half. Loopback only; every
loop is bounded by the deadline.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from werkzeug.wrappers import Response

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.run import rss_kb, tree_pids  # noqa: E402
from tests.fakes import FakeMistral, chat_body, chat_events  # noqa: E402
from tests.servers import gunicorn_sidecar  # noqa: E402

MASTER = "sk-soak-master"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Say hello."}]}
OCR = {"model": "mistral-ocr-latest", "document": {"type": "document_url", "document_url": "https://example.com/a.pdf"}}
OCR_ANSWER = {"pages": [{"index": 0, "markdown": "# page", "images": [],
                         "dimensions": {"dpi": 200, "height": 2, "width": 1}}],
              "model": "mistral-ocr-2512", "usage_info": {"pages_processed": 1, "doc_size_bytes": 10}}
# (share of the traffic, name): one call in ten is a stream, which holds its connection for ~0.2 s.
MIX = [(5, "chat"), (1, "stream"), (2, "ocr"), (1, "key_info"), (1, "spend_report")]


def fake_mistral() -> FakeMistral:
    """Chat (plain, or 20 events 10 ms apart when ``stream`` is set) and OCR; it keeps no history."""
    fake = FakeMistral()
    fake.seen = collections.deque(maxlen=100)
    plain, events = json.dumps(chat_body()), chat_events(20)

    def chat(request):
        if not json.loads(request.get_data()).get("stream"):
            return Response(plain, 200, {"Content-Type": "application/json"})

        def paced():
            for event in events:
                yield event
                time.sleep(0.01)
        return Response(paced(), 200, {"Content-Type": "text/event-stream"})
    fake.on("POST", "/v1/chat/completions", chat)
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    return fake


def call(session: requests.Session, url: str, key: str, kind: str) -> int:
    """One request of ``kind``; its status, or 0 when the connection broke (a failure like a 5xx)."""
    auth = {"Authorization": f"Bearer {key}"}
    master = {"Authorization": f"Bearer {MASTER}"}
    try:
        if kind == "chat":
            return session.post(url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=30).status_code
        if kind == "stream":
            with session.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth,
                              stream=True, timeout=30) as response:
                body = b"".join(response.iter_content(None))
                return response.status_code if body.rstrip().endswith(b"data: [DONE]") else 0
        if kind == "ocr":
            return session.post(url + "/v1/ocr", json=OCR, headers=auth, timeout=30).status_code
        if kind == "key_info":
            return session.get(url + "/key/info", headers=auth, timeout=30).status_code
        return session.get(url + "/spend/report?group_by=model", headers=master, timeout=30).status_code
    except requests.RequestException:
        return 0


def schedule(rate: float, seconds: float) -> list[tuple[float, str]]:
    """(when, kind) at a fixed rate, cycling through the mix in a fixed order: the same load every run."""
    kinds = [kind for share, kind in MIX for _ in range(share)]
    count = int(rate * seconds)
    return [(i / rate, kinds[(i * 7) % len(kinds)]) for i in range(count)]


def run(seconds: float, rate: float, workers: int, out: Path) -> dict:
    fake = fake_mistral()
    state = Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
    db = state / "soak.sqlite3"
    env = {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": "sk-soak-upstream", "SIDECAR_MASTER_KEY": MASTER,
           "SIDECAR_DB_PATH": str(db), "PROMETHEUS_MULTIPROC_DIR": str(state / "metrics")}
    statuses: dict[int, int] = {}
    samples: list[tuple[float, int]] = []
    lock = threading.Lock()
    local = threading.local()
    try:
        with gunicorn_sidecar(env, workers=workers, log_path=state / "sidecar.log") as (url, process):
            key = requests.post(url + "/key/generate", json={"key_alias": "soak"},
                                headers={"Authorization": f"Bearer {MASTER}"}, timeout=10).json()["key"]
            workers_pids = [p for p in tree_pids(process.pid) if p != process.pid]

            def one(kind: str) -> None:
                session = getattr(local, "session", None) or requests.Session()
                local.session = session
                status = call(session, url, key, kind)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

            started = time.monotonic()
            next_sample = 0.0
            with ThreadPoolExecutor(64) as pool:
                for when, kind in schedule(rate, seconds):
                    now = time.monotonic() - started
                    if now >= next_sample:
                        samples.append((round(now, 1), rss_kb(workers_pids)))
                        next_sample += 10.0
                    if when > now:
                        time.sleep(when - now)
                    pool.submit(one, kind)
            samples.append((round(time.monotonic() - started, 1), rss_kb(workers_pids)))
            process.terminate()  # SIGTERM: gunicorn drains, each worker writes its last spend records
            process.wait(timeout=60)
        with sqlite3.connect(db) as connection:
            records = connection.execute(
                "SELECT count(*) FROM spend_logs WHERE key_alias = 'soak' OR operation = 'sidecar_spend_report'"
            ).fetchone()[0]
    finally:
        fake.close()
    answered = sum(n for status, n in statuses.items() if status)
    half = samples[len(samples) // 2:]
    result = {
        "seconds": seconds, "rate_per_s": rate, "workers": workers, "statuses": statuses,
        "server_errors": sum(n for status, n in statuses.items() if status == 0 or status >= 500),
        "answered": answered, "spend_records": records,
        "rss_kb": samples, "rss_growth_second_half_kb": half[-1][1] - half[0][1] if len(half) > 1 else 0,
    }
    result["pass"] = (result["server_errors"] == 0 and records == answered
                      and result["rss_growth_second_half_kb"] <= 10_000)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the fake upstream's access log is noise here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all kinds together")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "soak.json")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.rate, args.workers, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_kb"}, indent=2))
    print(f"RSS KB (t, workers): {result['rss_kb']}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
