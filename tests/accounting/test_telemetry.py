"""OpenTelemetry: one GenAI span per request, the caller's trace continued upstream, the GenAI client metrics.

In-memory exporters here; ``test_otlp_receiver`` sends to a real OTLP/HTTP receiver from gunicorn workers.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed: pip install 'mistral-sidecar[otel]'")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from sidecar.accounting.telemetry import Telemetry  # noqa: E402

from ..apps import build_app  # noqa: E402
from ..fakes import OCR_ANSWER, OCR_REQUEST, chat_body, chat_events  # noqa: E402

MASTER = "sk-sidecar-master-telemetry-01"
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Tell me a secret recipe"}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Traced:
    def __init__(self, settings, log_bodies=False):
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        telemetry = Telemetry(tracer_provider, MeterProvider(metric_readers=[self.reader]),
                              server_url=settings.mistral_api_base, log_bodies=log_bodies)
        self.app = build_app(settings.with_(master_key=MASTER, log_bodies=log_bodies), telemetry=telemetry)
        self.client = self.app.test_client()

    def key(self, alias: str) -> str:
        answer = self.client.post("/key/generate", json={"key_alias": alias},
                                  headers={"Authorization": f"Bearer {MASTER}"})
        return answer.get_json()["key"]

    def span(self, operation_id: str):
        found = [s for s in self.spans.get_finished_spans() if s.attributes.get("sidecar.operation_id") == operation_id]
        assert len(found) == 1, [s.name for s in self.spans.get_finished_spans()]
        return found[0]

    def points(self, metric: str) -> list:
        data = self.reader.get_metrics_data()
        return [point for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                if m.name == metric for point in m.data.data_points]


@pytest.fixture
def traced(settings):
    return Traced(settings)


def test_a_chat_span_has_the_genai_attributes_and_continues_the_callers_trace(traced, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(prompt=12, completion=5))
    key = traced.key("billing-service")
    response = traced.client.post("/v1/chat/completions", json=CHAT, headers={
        "Authorization": f"Bearer {key}", "x-end-user": "alice", "traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    assert response.status_code == 200
    span = traced.span("chat_completion_v1_chat_completions_post")
    a = span.attributes
    assert span.name == "chat mistral-small-latest"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "mistral_ai"
    assert a["gen_ai.request.model"] == "mistral-small-latest" and a["gen_ai.response.model"] == "mistral-small-latest"
    assert a["gen_ai.usage.input_tokens"] == 12 and a["gen_ai.usage.output_tokens"] == 5
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["server.address"] == "127.0.0.1" and "error.type" not in a
    assert a["sidecar.key_alias"] == "billing-service" and a["sidecar.end_user"] == "alice"
    assert a["sidecar.cost_usd"] == pytest.approx(float(response.headers["x-sidecar-cost"]))
    assert "gen_ai.input.messages" not in a and "secret recipe" not in json.dumps(dict(a))  # bodies are off
    assert key not in json.dumps(dict(a))
    # the caller's trace goes on: this span is its child, and Mistral sees this span as its parent
    assert format(span.context.trace_id, "032x") == TRACE_ID and format(span.parent.span_id, "016x") == PARENT
    sent = fake.last.headers["Traceparent"]
    assert sent == f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01"
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in traced.points("gen_ai.client.token.usage")}
    assert tokens == {"input": 12, "output": 5}
    (duration,) = [p for p in traced.points("gen_ai.client.operation.duration")
                   if p.attributes["gen_ai.operation.name"] == "chat"]  # /key/generate has its own
    assert duration.count == 1 and duration.attributes["gen_ai.request.model"] == "mistral-small-latest"


def test_a_streamed_chat_span_has_usage_and_time_to_first_chunk(traced, fake):
    fake.stream("POST", "/v1/chat/completions", chat_events(3, prompt=10, completion=3))
    response = traced.client.post("/v1/chat/completions", json=dict(CHAT, stream=True),
                                  headers={"Authorization": f"Bearer {MASTER}"})
    response.get_data()
    response.close()
    a = traced.span("chat_completion_v1_chat_completions_post").attributes
    assert a["gen_ai.request.stream"] is True and a["gen_ai.usage.output_tokens"] == 3
    assert a["gen_ai.response.finish_reasons"] == ("stop",) and a["sidecar.cost_usd"] > 0
    (first,) = traced.points("gen_ai.client.operation.time_to_first_chunk")
    (whole,) = traced.points("gen_ai.client.operation.duration")
    assert first.count == 1 and 0 <= first.sum <= whole.sum


def test_an_ocr_span_counts_pages_and_an_upstream_error_has_its_type(traced, fake):
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    fake.on("POST", "/v1/embeddings", json_body={"object": "error", "message": "slow down"}, status=429)
    auth = {"Authorization": f"Bearer {MASTER}"}
    assert traced.client.post("/v1/ocr", json=OCR_REQUEST, headers=auth).status_code == 200
    assert traced.client.post("/v1/embeddings", json={"model": "mistral-embed", "input": ["a"]},
                              headers=auth).status_code == 429
    ocr = traced.span("ocr_v1_ocr_post")
    assert ocr.name == "ocr mistral-ocr-latest" and ocr.attributes["sidecar.ocr.pages"] == 3
    failed = traced.span("embeddings_v1_embeddings_post")
    assert failed.attributes["error.type"] == "429" and failed.status.status_code.name == "ERROR"
    assert failed.attributes["gen_ai.operation.name"] == "embeddings"


def test_a_refused_request_is_traced_with_its_error_code(traced):
    response = traced.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-nope"})
    assert response.status_code == 401
    a = traced.span("chat_completion_v1_chat_completions_post").attributes
    assert a["error.type"] == response.get_json()["code"]


def test_bodies_only_when_asked_for(settings, fake):
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(content="Here it is"))
    traced = Traced(settings, log_bodies=True)
    traced.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {MASTER}"})
    a = traced.span("chat_completion_v1_chat_completions_post").attributes
    assert json.loads(a["gen_ai.input.messages"]) == CHAT["messages"]
    assert "Here it is" in a["gen_ai.output.messages"]


def test_without_an_endpoint_there_is_no_telemetry(app):
    assert app.extensions["sidecar"].accountant.telemetry is None


def test_the_endpoints_follow_the_opentelemetry_variables():
    from sidecar.settings import Settings

    base = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"})
    assert base.otel_traces_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert base.otel_metrics_endpoint == "http://127.0.0.1:4318/v1/metrics"
    traces_only = Settings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert traces_only.otel_traces_endpoint == "http://collector:4318/v1/traces"
    assert traces_only.otel_metrics_endpoint is None
    assert Settings.from_env({}).otel_traces_endpoint is None
