"""Prometheus metrics: what every finished exchange adds to the counters, and the ``/metrics`` scrape.

Under gunicorn each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape
(answered by any one worker) merges every worker's files, so counts are the service's, not one
worker's. Labels are operation, status class and model only: no keys, users or paths with ids.
``prometheus_client`` is imported lazily because it picks single- or multi-process mode from the
environment at import time, and ``gunicorn_conf`` must set that variable first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def prepare_multiproc_dir(environ) -> Path | None:
    """Make sure ``environ`` names a clean multiprocess directory; returns it if the sidecar created it.

    Called by ``gunicorn_conf`` in the master before any worker exists, so the workers inherit the
    variable. An operator's own directory is emptied of stale files from a previous run, not removed.
    """
    given = environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    directory = Path(tempfile.mkdtemp(prefix="mistral-sidecar-metrics-"))
    environ[MULTIPROC_ENV] = str(directory)
    return directory


def remove_multiproc_dir(directory: Path | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def mark_process_dead(pid: int, directory: str | None) -> None:
    """Drop a dead worker's live gauges (open streams) so the sum counts living workers only."""
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if status else "none"


class Metrics:
    """The sidecar's metric families; ``observe(ex)`` is the one call per finished exchange."""

    def __init__(self, multiproc_dir: str | None = None, known_models=frozenset()):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiproc_dir = multiproc_dir
        # Model names come from clients: only priced models become label values, the rest are "other".
        self.known_models = frozenset(known_models)
        # Multiprocess values live in files whatever registry holds them; a registry of our own keeps
        # several apps in one process (tests) from colliding in the global one.
        self.registry = CollectorRegistry(auto_describe=True)
        on = {"registry": self.registry}
        self.requests = Counter("sidecar_requests", "Requests answered, by operation and status class.",
                                ["operation", "status"], **on)
        self.latency = Histogram("sidecar_request_duration_seconds", "Time from request to last byte sent.",
                                 ["operation"], buckets=LATENCY_BUCKETS, **on)
        self.upstream_latency = Histogram("sidecar_upstream_duration_seconds",
                                          "Time until Mistral's response headers arrived.",
                                          ["operation"], buckets=LATENCY_BUCKETS, **on)
        self.tokens = Counter("sidecar_tokens", "Tokens metered, by operation, model and direction.",
                              ["operation", "model", "direction"], **on)
        self.cost = Counter("sidecar_cost_usd", "Cost in USD of the answered requests.", ["operation", "model"], **on)
        self.unpriced = Counter("sidecar_unpriced_requests", "Requests whose model has no price (cost null).",
                                ["model"], **on)
        self.ocr_pages = Counter("sidecar_ocr_pages", "OCR pages processed, by operation and priced model.",
                                 ["operation", "model"], **on)
        self.audio_seconds = Counter("sidecar_audio_seconds", "Audio seconds transcribed, by operation and priced model.",
                                     ["operation", "model"], **on)
        self.tts_characters = Counter("sidecar_tts_characters", "Characters spoken (TTS), by operation and priced model.",
                                      ["operation", "model"], **on)
        self.estimated = Counter("sidecar_estimated_cost_records",
                                 "Requests whose cost was estimated (a cut stream), not read from usage.",
                                 ["operation", "model"], **on)
        # Deployments are the operator's named upstreams (config.yaml): few, chosen, safe as labels.
        self.deployment_attempts = Counter("sidecar_deployment_attempts",
                                           "Upstream attempts per deployment, by outcome (ok, retry, error).",
                                           ["deployment", "outcome"], **on)
        self.deployment_cooldowns = Counter("sidecar_deployment_cooldowns",
                                            "Times a deployment was put in cooldown after failures.",
                                            ["deployment"], **on)
        self.open_streams = Gauge("sidecar_open_streams", "Streamed responses being relayed now.",
                                  multiprocess_mode="livesum", **on)
        self._children: dict[tuple, tuple] = {}
        self._attempt_children: dict[tuple[str, str], object] = {}  # (deployment, outcome) -> counter child
        self._requests: dict[tuple, object] = {}  # (operation, status) -> its sidecar_requests child

    def _family(self, operation: str, model: str) -> tuple:
        """Label children are resolved once per (operation, model): ``labels()`` is the costly part."""
        found = self._children.get((operation, model))
        if found is None:
            found = (self.latency.labels(operation), self.upstream_latency.labels(operation),
                     self.tokens.labels(operation, model, "prompt"), self.tokens.labels(operation, model, "completion"),
                     self.cost.labels(operation, model))
            self._children[(operation, model)] = found
        return found

    def observe(self, ex, latency: float) -> None:
        model = ex.model if ex.model in self.known_models else ("other" if ex.model else "none")
        latency_h, upstream_h, prompt_c, completion_c, cost_c = self._family(ex.operation_id, model)
        requests_c = self._requests.get((ex.operation_id, ex.status))
        if requests_c is None:  # per status, not class: no string to build on the way to the cache
            requests_c = self.requests.labels(ex.operation_id, _status_class(ex.status))
            self._requests[(ex.operation_id, ex.status)] = requests_c
        requests_c.inc()
        latency_h.observe(latency)
        if ex.upstream_latency is not None:
            upstream_h.observe(ex.upstream_latency)
        usage = ex.usage
        if usage is not None:
            if usage.prompt_tokens:
                prompt_c.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                completion_c.inc(usage.completion_tokens)
            if usage.pages or usage.audio_seconds or usage.characters:  # rare units: labels resolved when used
                self._units(ex.operation_id, model, usage)
            if usage.estimated:
                self.estimated.labels(ex.operation_id, model).inc()
        if ex.cost:
            cost_c.inc(ex.cost)
        elif ex.cost is None and usage is not None and ex.status < 400:
            self.unpriced.labels(model).inc()

    def _units(self, operation: str, model: str, usage) -> None:
        if usage.pages:
            self.ocr_pages.labels(operation, model).inc(usage.pages)
        if usage.audio_seconds:
            self.audio_seconds.labels(operation, model).inc(usage.audio_seconds)
        if usage.characters:
            self.tts_characters.labels(operation, model).inc(usage.characters)

    def deployment_attempt(self, deployment: str, outcome: str) -> None:
        """One upstream attempt on a named deployment; ``outcome`` is ``ok``, ``retry`` or ``error``.
        Called for every proxied request, so the label child is cached like ``sidecar_requests``'s."""
        child = self._attempt_children.get((deployment, outcome))
        if child is None:
            child = self._attempt_children[(deployment, outcome)] = self.deployment_attempts.labels(deployment, outcome)
        child.inc()

    def deployment_cooldown(self, deployment: str) -> None:
        self.deployment_cooldowns.labels(deployment).inc()

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def scrape(self) -> bytes:
        """The exposition text: every worker's files merged in multiprocess mode, else this registry."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.multiproc_dir and os.path.isdir(self.multiproc_dir):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def handlers(metrics: Metrics) -> dict:
    """``GET /metrics``: open like the probes, or for the master key only (``SIDECAR_METRICS_AUTH``,
    applied by the pipeline as the operation's security)."""
    from flask import Response

    def scrape(call):
        return Response(metrics.scrape(), 200, {"Content-Type": CONTENT_TYPE})
    return {"metrics.scrape": scrape}
