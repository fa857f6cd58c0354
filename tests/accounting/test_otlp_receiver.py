"""OpenTelemetry end to end: gunicorn workers export spans and metrics over OTLP/HTTP to a local receiver.

The receiver is a loopback HTTP server started here that decodes what the SDK's exporter posts
(protobuf, as a collector would); the workers start their exporters themselves, after the fork.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

pytest.importorskip("opentelemetry.exporter.otlp.proto.http",
                    reason="the [otel] extra is not installed: pip install 'mistral-sidecar[otel]'")

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

from ..conftest import MISTRAL_KEY  # noqa: E402
from ..fakes import OCR_ANSWER, OCR_REQUEST, chat_body, chat_events  # noqa: E402
from ..servers import gunicorn_sidecar  # noqa: E402

pytestmark = pytest.mark.slow
CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}


class Receiver:
    """An OTLP/HTTP receiver on loopback: keeps every span and metric name it is sent."""

    def __init__(self):
        self.spans: list[dict] = []
        self.metrics: set[str] = set()
        self.paths: list[str] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        self.paths.append(request.path)
        assert request.content_type == "application/x-protobuf"
        if request.path == "/v1/traces":
            message = ExportTraceServiceRequest.FromString(request.get_data())
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans.append({"name": span.name, **{kv.key: _value(kv.value) for kv in span.attributes}})
        elif request.path == "/v1/metrics":
            message = ExportMetricsServiceRequest.FromString(request.get_data())
            for resource in message.resource_metrics:
                for scope in resource.scope_metrics:
                    self.metrics.update(m.name for m in scope.metrics)
        return Response(b"", 200, {"Content-Type": "application/x-protobuf"})(environ, start_response)

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def _value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def test_spans_and_metrics_reach_an_otlp_receiver_from_gunicorn_workers(fake, tmp_path):
    receiver = Receiver()
    fake.on("POST", "/v1/chat/completions", json_body=chat_body(prompt=12, completion=5))
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    env = {"MISTRAL_API_BASE": fake.url, "MISTRAL_API_KEY": MISTRAL_KEY,
           "SIDECAR_DB_PATH": str(tmp_path / "sidecar.sqlite3"), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300"}
    try:
        with gunicorn_sidecar(env, workers=1, log_path=tmp_path / "sidecar.log") as (url, _process):
            assert requests.post(url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
            fake.stream("POST", "/v1/chat/completions", chat_events(3))
            with requests.post(url + "/v1/chat/completions", json=dict(CHAT, stream=True), stream=True,
                               timeout=10) as streamed:
                assert streamed.status_code == 200 and b"[DONE]" in streamed.content
            assert requests.post(url + "/v1/ocr", json=OCR_REQUEST, timeout=10).status_code == 200
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (len(receiver.spans) < 3 or "gen_ai.client.token.usage"
                                                   not in receiver.metrics):
                time.sleep(0.1)
        by_name = {}
        for span in receiver.spans:
            by_name.setdefault(span["name"], []).append(span)
        assert len(by_name["chat mistral-small-latest"]) == 2, receiver.spans
        plain, stream = sorted(by_name["chat mistral-small-latest"], key=lambda s: s["gen_ai.request.stream"])
        assert plain["gen_ai.provider.name"] == "mistral_ai" and plain["gen_ai.usage.input_tokens"] == 12
        assert stream["gen_ai.request.stream"] is True and stream["gen_ai.usage.output_tokens"] == 3
        assert stream["gen_ai.response.finish_reasons"] == ["stop"]
        (ocr,) = by_name["ocr mistral-ocr-latest"]
        assert ocr["sidecar.ocr.pages"] == 3 and ocr["sidecar.cost_usd"] > 0
        assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration",
                "gen_ai.client.operation.time_to_first_chunk"} <= receiver.metrics
    finally:
        receiver.close()
