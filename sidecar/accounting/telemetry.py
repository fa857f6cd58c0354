"""OpenTelemetry: one span per request following the GenAI semantic conventions, and the GenAI client metrics.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set; the SDK and its OTLP/HTTP
exporter are the ``[otel]`` extra, imported only then. The exporters' background threads are started in
each gunicorn worker, after the fork and after gevent has patched threads and sockets (``install``),
never in the master. The accountant is the one caller: ``begin`` when a request arrives, ``inject`` on
the way upstream (the incoming ``traceparent`` is continued), ``end`` when the exchange is finished.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import urlsplit

from sidecar.core import usage as usage_mod

log = logging.getLogger("sidecar.accounting.telemetry")
PROVIDER = "mistral_ai"
# The GenAI conventions' operation names, by the usage kind of a Mistral operation; others keep their kind.
OPERATION_NAMES = {usage_mod.CHAT: "chat", usage_mod.FIM: "text_completion", usage_mod.AGENTS: "invoke_agent",
                   usage_mod.CONVERSATION: "invoke_agent", usage_mod.EMBEDDINGS: "embeddings"}
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class Telemetry:
    """Spans and GenAI metrics for exchanges, on the providers it is given (tests give in-memory ones)."""

    def __init__(self, tracer_provider, meter_provider, *, server_url: str, log_bodies: bool = False):
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer_provider.get_tracer("mistral-sidecar")
        meter = meter_provider.get_meter("mistral-sidecar")
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request, by type.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Time from request to last byte.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time from request to the first chunk of a streamed answer.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
        self.propagator = TraceContextTextMapPropagator()
        self.kind = SpanKind.CLIENT
        url = urlsplit(server_url)
        self.server = {"server.address": url.hostname or "", "server.port": url.port or (443 if url.scheme == "https" else 80)}
        self.log_bodies = log_bodies

    def begin(self, ex, headers) -> None:
        """Start the request's span, a child of the caller's ``traceparent`` when it sent one."""
        carrier = {"traceparent": headers.get("traceparent"), "tracestate": headers.get("tracestate")}
        parent = self.propagator.extract({k: v for k, v in carrier.items() if v})
        ex.span = self.tracer.start_span(ex.operation_id, context=parent, kind=self.kind,
                                         start_time=int(ex.wall_time * 1e9))

    def inject(self, ex, headers: dict) -> None:
        """``traceparent`` (and ``tracestate``) of this request's span, replacing the caller's, for Mistral."""
        from opentelemetry.trace import set_span_in_context

        for name in [h for h in headers if h.lower() in ("traceparent", "tracestate")]:
            del headers[name]
        self.propagator.inject(headers, context=set_span_in_context(ex.span))

    def end(self, ex) -> None:
        """Name the span ``{operation} {model}``, set the GenAI and sidecar attributes, record the metrics."""
        span, ex.span = ex.span, None
        kind = usage_mod.kind_for(ex.operation_id)
        operation = OPERATION_NAMES.get(kind, kind if kind != usage_mod.NONE else ex.operation_id)
        u = ex.usage
        common = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER, **self.server}
        if ex.model:
            common["gen_ai.request.model"] = ex.model
        response_model = (u.model if u is not None else None) or ex.model
        if response_model:
            common["gen_ai.response.model"] = response_model
        error = ex.error or (str(ex.status) if ex.status >= 400 or not ex.status else None)
        if error:
            common["error.type"] = error
        duration = ex.latency
        self.duration.record(duration, common)
        if ex.first_chunk_at is not None:
            self.first_chunk.record(max(0.0, ex.first_chunk_at - ex.started), common)
        if u is not None:
            for token_type, count in (("input", u.prompt_tokens), ("output", u.completion_tokens)):
                if count:
                    self.token_usage.record(count, {**common, "gen_ai.token.type": token_type})
        if span is None:
            return
        attributes = dict(common)
        attributes.update(self._own(ex, u))
        span.update_name(f"{operation} {ex.model}" if ex.model else operation)
        span.set_attributes(attributes)
        if error:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=int((ex.wall_time + duration) * 1e9))

    def _own(self, ex, u) -> dict:
        """The GenAI usage attributes and the sidecar's own (key alias, end user, cost, units, request id)."""
        found = {"http.response.status_code": ex.status, "sidecar.request_id": ex.request_id,
                 "sidecar.operation_id": ex.operation_id, "gen_ai.request.stream": bool(ex.stream)}
        if u is not None:
            found.update({"gen_ai.usage.input_tokens": u.prompt_tokens, "gen_ai.usage.output_tokens": u.completion_tokens})
            if u.finish_reasons:
                found["gen_ai.response.finish_reasons"] = list(u.finish_reasons)
            if u.pages:
                found["sidecar.ocr.pages"] = u.pages
            if u.audio_seconds:
                found["sidecar.audio.seconds"] = u.audio_seconds
            if u.characters:
                found["sidecar.tts.characters"] = u.characters
            if u.estimated:
                found["sidecar.cost.estimated"] = True
        alias = ex.key_alias
        if alias:
            found["sidecar.key_alias"] = alias
        if ex.end_user:
            found["sidecar.end_user"] = ex.end_user
        if ex.cost is not None:
            found["sidecar.cost_usd"] = ex.cost
        if ex.deployment:
            found["sidecar.deployment"] = ex.deployment
        if self.log_bodies:  # prompts and answers only when asked for, as for the log line
            if ex.request_json is not None:
                found["gen_ai.input.messages"] = json.dumps(_messages(ex.request_json), default=str)
            if ex.response_json is not None:
                found["gen_ai.output.messages"] = json.dumps(ex.response_json, default=str)
        return found


def _messages(request_json):
    if isinstance(request_json, dict):
        for name in ("messages", "inputs", "input", "prompt"):
            if name in request_json:
                return request_json[name]
    return request_json


_INSTALLED: dict[int, tuple] = {}  # pid -> (tracer provider, meter provider): once per worker process


def install(settings):
    """The process's providers with OTLP/HTTP exporters, made on first use in this process.

    Called when the worker builds its app (gunicorn's ``post_fork`` runs before gevent patches the
    worker, too early for the exporters' thread and sockets). Fails loudly without the ``[otel]`` extra.
    """
    found = _INSTALLED.get(os.getpid())
    if found is not None:
        return found
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc}): "
                           "pip install 'mistral-sidecar[otel]', or unset the variable") from None
    resource = Resource.create({"service.name": settings.otel_service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_traces_endpoint)))
    readers = []
    if settings.otel_metrics_endpoint:
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=settings.otel_metrics_endpoint)))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    _INSTALLED[os.getpid()] = (tracer_provider, meter_provider)
    log.info("OpenTelemetry on: traces to %s, metrics to %s", settings.otel_traces_endpoint,
             settings.otel_metrics_endpoint or "nowhere")
    return tracer_provider, meter_provider


def for_settings(settings) -> Telemetry | None:
    """The app's telemetry when settings name an OTLP endpoint, else None (no cost per request)."""
    if not settings.otel_traces_endpoint:
        return None
    tracer_provider, meter_provider = install(settings)
    return Telemetry(tracer_provider, meter_provider, server_url=settings.mistral_api_base,
                     log_bodies=settings.log_bodies)


def flush() -> None:
    """Export what this process still holds (worker exit): spans of the last requests must not be lost."""
    found = _INSTALLED.pop(os.getpid(), None)
    if found is not None:
        for provider in found:
            provider.shutdown()
