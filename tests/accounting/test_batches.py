"""Batch jobs metered through the app against the fake Mistral: one record per job at the batch price,
on the key that created it, when its results are read; the file itself relayed unchanged."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from werkzeug.wrappers import Response

from sidecar.access.keys import hash_key
from sidecar.store import tables

from ..fakes import BATCH_FAILED, BATCH_REFUSED, batch_output_line, jsonl

MASTER = "sk-master-batch-test-0123456789"
AS_MASTER = {"Authorization": f"Bearer {MASTER}"}
JOB, FILE = "b9c8d7e6-f5a4-4b3c-8d2e-1f0a9b8c7d6e", "0f6a3c2e-8d4b-4e6f-9a1b-2c3d4e5f6a7b"
SMALL = (0.15, 0.6)  # mistral-small-latest, USD per million tokens in / out (prices.yaml)
# Two answered requests (1000 + 500 tokens in, 200 + 100 out), one failed, one refused.
OUTPUT = jsonl(batch_output_line("0", prompt=1000, completion=200), BATCH_FAILED,
               batch_output_line("1", prompt=500, completion=100), BATCH_REFUSED)
BATCH_COST = 0.5 * (1500 * SMALL[0] + 300 * SMALL[1]) / 1e6


def job(status="QUEUED", output_file=None, **extra) -> dict:
    return {"id": JOB, "object": "batch", "input_files": ["e85980c9-409e-4a46-9304-36588f6292b0"], "metadata": None,
            "endpoint": "/v1/chat/completions", "model": "mistral-small-latest", "agent_id": None,
            "output_file": output_file, "error_file": None, "errors": [], "status": status, "created_at": 1764064800,
            "total_requests": 4, "completed_requests": 0, "succeeded_requests": 0, "failed_requests": 0, **extra}


@pytest.fixture
def app(make_app):
    return make_app(master_key=MASTER)


def new_key(client, alias: str) -> str:
    response = client.post("/key/generate", json={"key_alias": alias}, headers=AS_MASTER)
    assert response.status_code == 200, response.json
    return response.json["key"]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def serve_output(fake, data: bytes = OUTPUT, piece: int = 37, content_type="application/octet-stream"):
    """The output file, sent in small pieces so lines arrive split across reads."""
    def answer(request):
        return Response((data[i:i + piece] for i in range(0, len(data), piece)), 200, {"Content-Type": content_type})
    fake.on("GET", f"/v1/files/{FILE}/content", answer)


def finished_job(client, fake, key: str, **extra) -> None:
    """The job created with ``key``, then read once finished (which names its output file)."""
    fake.on("POST", "/v1/batch/jobs", json_body=job())
    created = client.post("/v1/batch/jobs", headers={**bearer(key), "x-end-user": "nightly-run"},
                          json={"input_files": ["e85980c9-409e-4a46-9304-36588f6292b0"],
                                "endpoint": "/v1/chat/completions", "model": "mistral-small-latest"})
    assert created.status_code == 200, created.get_data()
    fake.on("GET", f"/v1/batch/jobs/{JOB}", json_body=job("SUCCESS", FILE, **extra))
    assert client.get(f"/v1/batch/jobs/{JOB}", headers=bearer(key)).status_code == 200


def download(client, key: str) -> bytes:
    response = client.get(f"/v1/files/{FILE}/content", headers=bearer(key))
    assert response.status_code == 200
    data = response.get_data()
    response.close()
    return data


def batch_records(app) -> list[dict]:
    spend = app.extensions["sidecar"].accountant.spend
    spend.flush()
    return [row for row in spend.logs({}, size=1000)["logs"] if row["batch_job"]]


def spend_of(app, key: str) -> float:
    with app.extensions["sidecar"].accountant.spend.engine.connect() as connection:
        return connection.execute(sa.select(tables.keys.c.spend).where(tables.keys.c.token == hash_key(key))).scalar()


@pytest.mark.parametrize("reader", ["creator", "other key"])
@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/jsonl"])
def test_a_job_is_charged_once_at_the_batch_price_to_the_key_that_created_it(app, client, fake, reader, content_type):
    a, b = new_key(client, "a"), new_key(client, "b")
    finished_job(client, fake, a)
    serve_output(fake, content_type=content_type)
    assert download(client, a if reader == "creator" else b) == OUTPUT  # relayed byte for byte
    assert download(client, b) == OUTPUT  # read twice, and by another key: still one record

    (record,) = batch_records(app)
    assert record["batch_job"] == JOB and record["request_id"] == JOB
    assert record["key_hash"] == hash_key(a) and record["key_alias"] == "a" and record["end_user"] == "nightly-run"
    assert record["operation"] == "jobs_api_routes_batch_create_batch_job"
    assert record["route"] == "/v1/batch/jobs/{job_id}"
    assert (record["prompt_tokens"], record["completion_tokens"], record["model"]) == (1500, 300, "mistral-small-2603")
    assert record["cost"] == pytest.approx(BATCH_COST, rel=1e-9)
    assert spend_of(app, a) == pytest.approx(BATCH_COST, rel=1e-9)
    assert spend_of(app, b) == 0.0  # the downloads themselves are free


def test_a_job_read_inline_once_finished_is_charged_from_its_outputs(app, client, fake):
    a = new_key(client, "a")
    outputs = [json.loads(line) for line in OUTPUT.splitlines()]
    finished_job(client, fake, a, outputs=outputs)
    client.get(f"/v1/batch/jobs/{JOB}?inline=true", headers=bearer(a))
    serve_output(fake)
    download(client, a)
    (record,) = batch_records(app)
    assert record["cost"] == pytest.approx(BATCH_COST, rel=1e-9) and spend_of(app, a) == pytest.approx(BATCH_COST)


def test_a_running_job_read_inline_is_not_charged_yet(app, client, fake):
    a = new_key(client, "a")
    fake.on("POST", "/v1/batch/jobs", json_body=job())
    client.post("/v1/batch/jobs", headers=bearer(a), json={"input_files": [], "endpoint": "/v1/chat/completions"})
    fake.on("GET", f"/v1/batch/jobs/{JOB}", json_body=job("RUNNING", outputs=[batch_output_line("0")]))
    client.get(f"/v1/batch/jobs/{JOB}?inline=true", headers=bearer(a))
    assert batch_records(app) == []


def test_failed_and_usageless_lines_are_not_charged(app, client, fake):
    a = new_key(client, "a")
    finished_job(client, fake, a)
    serve_output(fake, jsonl(BATCH_FAILED, BATCH_REFUSED, BATCH_FAILED))
    download(client, a)
    assert batch_records(app) == [] and spend_of(app, a) == 0.0


def test_a_malformed_output_file_is_relayed_unchanged_and_warned_about_once(app, client, fake, caplog):
    a = new_key(client, "a")
    finished_job(client, fake, a)
    garbage = b"\x89PNG\r\n\x1a\n\x00\xff" * 50 + b'{"id": "cut'
    serve_output(fake, garbage, piece=11)
    with caplog.at_level(logging.WARNING, logger="sidecar.accounting.batches"):
        assert download(client, a) == garbage
    warnings = [r.getMessage() for r in caplog.records if r.name == "sidecar.accounting.batches"]
    assert len(warnings) == 1 and JOB in warnings[0] and "not JSON objects" in warnings[0]
    assert batch_records(app) == []


def test_a_download_cut_by_the_client_charges_nothing_until_one_ends_whole(app, client, fake):
    a = new_key(client, "a")
    finished_job(client, fake, a)
    serve_output(fake, piece=300)
    response = client.get(f"/v1/files/{FILE}/content", headers=bearer(a), buffered=False)
    assert b"\n" in next(iter(response.response))  # a whole answered line, and more to come
    response.close()  # the client went away after the first piece
    assert batch_records(app) == []
    download(client, a)
    assert len(batch_records(app)) == 1


def test_a_file_no_job_names_is_relayed_and_charges_nothing(app, client, fake):
    a = new_key(client, "a")
    serve_output(fake)
    assert download(client, a) == OUTPUT
    assert batch_records(app) == [] and spend_of(app, a) == 0.0


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, settings):
    """The store two workers share: the test's SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield settings.database_url
        return
    from sidecar.store import make_engine, migrate

    from ..databases import postgres_schema

    with postgres_schema() as url:
        engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        migrate(engine)
        engine.dispose()
        yield url


def test_two_workers_reading_the_results_at_once_record_the_job_once(make_app, fake, database_url):
    """Both find the job unmetered and read the whole file; the unique batch_job lets one record win."""
    from sidecar.core.exchange import Exchange

    workers = [make_app(master_key=MASTER, database_url=database_url) for _ in range(2)]
    client = workers[0].test_client()
    a = new_key(client, "a")
    finished_job(client, fake, a)
    meters = []
    for worker in workers:
        ex = Exchange("r1", "files_api_routes_download_file", "GET", "/v1/files/{file_id}/content", status=200,
                      path_params={"file_id": FILE})
        meters.append(worker.extensions["sidecar"].accountant.output_meter(ex))
    assert all(meter is not None for meter in meters)
    for meter in meters:
        meter.feed(OUTPUT)
    for meter in meters:
        meter.close(complete=True)
    (record,) = batch_records(workers[1])
    assert record["key_hash"] == hash_key(a)
    assert spend_of(workers[0], a) == pytest.approx(BATCH_COST, rel=1e-9)  # charged once, not twice
