"""``GET /metrics``: Prometheus text with requests, latencies, tokens, cost and open streams, low cardinality."""

from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.accounting import metrics

from ..fakes import OCR_ANSWER, OCR_REQUEST, TRANSCRIPT, chat_body, chat_events

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
CHAT_OP = "chat_completion_v1_chat_completions_post"


def samples(text: str) -> dict:
    """(sample name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_cost_and_latency(client, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(prompt=12, completion=5))
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=CHAT, headers={"x-end-user": "alice"}).status_code == 200
    assert client.post("/v1/chat/completions", json={"model": 3}).status_code == 422
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    found = samples(response.get_data(as_text=True))
    assert value(found, "sidecar_requests_total", operation=CHAT_OP, status="2xx") == 3
    assert value(found, "sidecar_requests_total", operation=CHAT_OP, status="4xx") == 1
    assert value(found, "sidecar_tokens_total", operation=CHAT_OP, model="mistral-small-latest", direction="prompt") == 36
    assert value(found, "sidecar_tokens_total", operation=CHAT_OP, model="mistral-small-latest",
                 direction="completion") == 15
    assert value(found, "sidecar_cost_usd_total", operation=CHAT_OP, model="mistral-small-latest") == pytest.approx(
        3 * (12 * 0.15 + 5 * 0.6) / 1e6)
    assert value(found, "sidecar_request_duration_seconds_count", operation=CHAT_OP) == 4
    assert value(found, "sidecar_upstream_duration_seconds_count", operation=CHAT_OP) == 3
    assert "alice" not in response.get_data(as_text=True)


def test_label_values_stay_few(client, fake):
    """Unknown model names (clients choose them) collapse into "other"; keys and users are never labels."""
    fake.on("POST", "/v1/chat/completions", json_body=chat_body())
    for i in range(20):
        client.post("/v1/chat/completions", json=dict(CHAT, model=f"made-up-{i}"), headers={"x-end-user": f"u{i}"})
    text = client.get("/metrics").get_data(as_text=True)
    assert "made-up" not in text and "u7" not in text
    labels = {name for (_, pairs) in samples(text) for name, _ in pairs}
    assert labels <= {"operation", "status", "model", "direction", "le", "deployment", "outcome"}
    assert {v for (name, pairs) in samples(text) for k, v in pairs if k == "deployment"} == {"default"}


def test_open_streams_gauge_goes_up_and_down(client, fake):
    import threading

    gate = threading.Event()
    fake.stream("POST", "/v1/chat/completions", chat_events(3), gate=gate)
    response = client.post("/v1/chat/completions", json=dict(CHAT, stream=True), buffered=False)
    chunks = response.iter_encoded()
    next(chunks)
    assert value(samples(client.get("/metrics").get_data(as_text=True)), "sidecar_open_streams") == 1
    gate.set()
    for _ in chunks:
        pass
    response.close()
    assert value(samples(client.get("/metrics").get_data(as_text=True)), "sidecar_open_streams") == 0


def test_the_multiprocess_directory_is_made_and_cleaned(tmp_path):
    environ = {}
    made = metrics.prepare_multiproc_dir(environ)
    assert made is not None and made.is_dir() and environ[metrics.MULTIPROC_ENV] == str(made)
    metrics.remove_multiproc_dir(made)
    assert not made.exists()
    own = tmp_path / "prom"
    own.mkdir()
    (own / "counter_123.db").write_bytes(b"stale")
    assert metrics.prepare_multiproc_dir({metrics.MULTIPROC_ENV: str(own)}) is None
    assert own.is_dir() and not os.listdir(own)  # emptied, not removed: it is the operator's


def test_ocr_pages_audio_seconds_and_tts_characters_are_counted(client, fake):
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    fake.on("POST", "/v1/audio/transcriptions", json_body=TRANSCRIPT)
    fake.on("POST", "/v1/audio/speech", json_body={"audio_data": "AAAA"})
    for _ in range(2):
        assert client.post("/v1/ocr", json=OCR_REQUEST).status_code == 200
    assert client.post("/v1/audio/transcriptions", content_type="multipart/form-data",
                       data={"model": "voxtral-mini-latest", "file_url": "https://x/a.mp3"}).status_code == 200
    assert client.post("/v1/audio/speech", json={"model": "voxtral-mini-tts-latest", "input": "Bonjour"}).status_code == 200
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "sidecar_ocr_pages_total", operation="ocr_v1_ocr_post", model="mistral-ocr-latest") == 6
    transcribe = "audio_api_v1_transcriptions_post"
    assert value(found, "sidecar_audio_seconds_total", operation=transcribe, model="voxtral-mini-latest") == 90
    assert value(found, "sidecar_tts_characters_total", operation="speech_v1_audio_speech_post", model="voxtral-mini-tts-latest") == 7


def test_estimated_costs_and_deployments_are_counted(app):
    from sidecar.core.exchange import Exchange
    from sidecar.core.usage import Usage

    m = app.extensions["sidecar"].accountant.metrics
    ex = Exchange("r1", "chat_completion_v1_chat_completions_post", "POST", "/v1/chat/completions",
                  model="mistral-small-latest", status=200, usage=Usage(completion_tokens=3, estimated=True), cost=0.001)
    m.observe(ex, 0.1)
    m.deployment_attempt("eu-west", "ok")
    m.deployment_attempt("eu-west", "retry")
    m.deployment_cooldown("eu-west")
    found = samples(m.scrape().decode())
    assert value(found, "sidecar_estimated_cost_records_total", operation=ex.operation_id,
                 model="mistral-small-latest") == 1
    assert value(found, "sidecar_deployment_attempts_total", deployment="eu-west", outcome="retry") == 1
    assert value(found, "sidecar_deployment_cooldowns_total", deployment="eu-west") == 1


def test_the_grafana_dashboard_reads_only_metrics_the_sidecar_exposes(app):
    """docs/grafana-dashboard.json cannot drift from /metrics: every series it queries is one we define."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bsidecar_[a-z_]+", target["expr"])}
    registry = app.extensions["sidecar"].accountant.metrics.registry
    exposed = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        exposed.update(family.name + s for s in suffixes)
    assert queried and queried <= exposed, queried - exposed
    for new in ("sidecar_ocr_pages_total", "sidecar_audio_seconds_total", "sidecar_tts_characters_total",
                "sidecar_estimated_cost_records_total", "sidecar_deployment_attempts_total"):
        assert new in queried
