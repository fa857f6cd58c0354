"""The account step: usage read from each answer, priced, and handed to the spend sinks once.

``Accountant`` is the pipeline's single accounting collaborator: admission (limits), usage
metering for plain and streamed answers, cost headers, and the one ``finish`` per exchange that
writes the log line and the spend record.
"""

from __future__ import annotations

import json
import logging

from sidecar.accounting.batches import DOWNLOAD
from sidecar.accounting.batches import OPERATIONS as BATCH_OPERATIONS
from sidecar.clock import SYSTEM, Clock
from sidecar.core import estimate
from sidecar.core import usage as usage_mod
from sidecar.core.exchange import Exchange
from sidecar.core.sse import UsageWatcher
from sidecar.store.health import STORE_ERRORS

access_log = logging.getLogger("sidecar.access")
# One encoder for every access-log line: json.dumps with options builds a new one per call (~5 us).
_LINE = json.JSONEncoder(separators=(",", ":"), default=str).encode
log = logging.getLogger("sidecar.accounting.accountant")


def _no_release() -> None:
    return None


class Accountant:
    """Meters, prices and records exchanges; ``sinks`` receive each finished exchange."""

    def __init__(self, prices=None, limits=None, sinks=(), *, metrics=None,
                 spend=None, log_bodies=False, clock: Clock = SYSTEM, telemetry=None, redactor=None,
                 output_reserve: int = 1024, batches=None):
        self.prices = prices
        self.telemetry = telemetry  # telemetry.Telemetry (OpenTelemetry spans and GenAI metrics), or None
        self.clock = clock
        self.limits = limits
        self.sinks = list(sinks)
        self.metrics = metrics  # metrics.Metrics, or None
        self.spend = spend  # spend.SpendLog: the key's running spend for x-sidecar-key-spend
        self.log_bodies = log_bodies  # prompts and answers in the log line: off unless asked for
        self.redactor = redactor  # core.redact.Redactor: secrets out of every log line and spend record
        self.output_reserve = output_reserve  # output tokens reserved when a request gives no max_tokens
        self.batches = batches  # batches.BatchLedger: batch jobs' creators, and their cost once their results are read
        self._unpriced_warned: set[str] = set()

    def begin(self, ex: Exchange, headers) -> None:
        """A request arrived: its span starts here (continuing the caller's ``traceparent``), when tracing is on."""
        if self.telemetry is not None:
            self.telemetry.begin(ex, headers)

    def trace_headers(self, ex: Exchange, headers: dict) -> None:
        """Put this request's trace context in the headers going upstream (the caller's is replaced)."""
        if ex.span is not None:
            self.telemetry.inject(ex, headers)

    def admit(self, ex: Exchange):
        """Apply the caller's limits, reserving the request's worst case; returns the callable that
        gives the reservation back if the exchange ends before it is recorded."""
        if self.limits is None:
            return _no_release
        if ex.caller is None or not ex.caller.is_virtual:
            return self.limits.admit(ex)
        return self.limits.admit(ex, *self.reserve(ex))

    def reserve(self, ex: Exchange) -> tuple[float, int]:
        """(USD, tokens) the request may cost at most: its prompt estimate plus ``max_tokens`` (or the
        configured output reserve) at its model's prices; 0 for what cannot be known before (OCR pages)."""
        kind = usage_mod.kind_for(ex.operation_id)
        if kind not in estimate.RESERVED_KINDS:
            return 0.0, 0
        prompt = estimate.prompt_tokens(ex.request_json)
        output = estimate.output_reserve(ex.request_json, self.output_reserve) if kind in estimate.GENERATING_KINDS else 0
        cost = None
        if self.prices is not None:
            cost = self.prices.cost(ex.model, usage_mod.Usage(prompt_tokens=prompt, completion_tokens=output))
        return (cost or 0.0), prompt + output

    def stream_meter(self, ex: Exchange):
        """Called once per relayed event stream: counts it as open, and watches it for usage."""
        if self.metrics is not None and not ex.open_stream:
            ex.open_stream = True
            self.metrics.stream_opened()
        ex.stream = True
        kind = usage_mod.kind_for(ex.operation_id)
        if kind == "none":
            return None
        return UsageWatcher(kind, ex.request_json)

    def output_meter(self, ex: Exchange):
        """For a relayed download of a batch job's output file: the meter that reads its usage, else None."""
        return self.batches.output_meter(ex) if self.batches is not None and ex.operation_id == DOWNLOAD else None

    def account_body(self, ex: Exchange, content: bytes) -> None:
        if self.batches is not None and ex.operation_id in BATCH_OPERATIONS:
            self.batches.answered(ex, content)
        kind = usage_mod.kind_for(ex.operation_id)
        if kind == "none" or ex.status >= 400:
            return
        data = None
        if len(content) > usage_mod.TAIL_READ_ABOVE and not self.log_bodies:
            data = usage_mod.closing_fields(content)  # usage without parsing megabytes of vectors
        if data is None:
            try:
                data = json.loads(content)
            except (ValueError, RecursionError):  # relayed as is; an upstream's bad JSON is no sidecar 500
                return
        if isinstance(data, dict):
            if self.log_bodies:
                ex.response_json = data
            self._price(ex, usage_mod.from_body(kind, data, ex.request_json))

    def _price(self, ex: Exchange, usage) -> None:
        ex.usage = usage
        if usage is None or self.prices is None:
            return
        if not ex.model:  # the request named none (an agent, a conversation continued): its answer does
            ex.model = usage.model
        model = ex.model if ex.priced_as is None else ex.priced_as  # a deployment bills under its own name
        ex.cost = self.prices.cost(model, usage)
        if ex.cost is None and model not in self._unpriced_warned:
            # Once per model and process: an unpriced model in heavy use must not flood the log.
            self._unpriced_warned.add(model)
            log.warning("no price for model %r; its cost is recorded as null (give it one with model_info: "
                        "{input_cost_per_token, output_cost_per_token} in its model_list entry of config.yaml)", model)

    def response_headers(self, ex: Exchange) -> list[tuple[str, str]]:
        """``x-sidecar-cost`` of this answer and, for a virtual key, ``x-sidecar-key-spend`` including it."""
        self._settle_cost(ex)
        if ex.cost is None:
            return []
        headers = [("x-sidecar-cost", _usd(ex.cost))]
        caller = ex.caller
        if self.spend is not None and caller is not None and caller.is_virtual:
            try:
                headers.append(("x-sidecar-key-spend", _usd(self.spend.key_spend(caller.key_hash) + ex.cost)))
            except STORE_ERRORS:  # the answer is paid for and in hand: it goes out without the running spend
                pass
        return headers

    def cost_comment(self, ex: Exchange, meter) -> bytes | None:
        """The SSE comment ``: x-sidecar-cost=<USD>`` that ends a priced stream (headers left long ago).

        Priced from what the stream has shown, which is all of it: the relay asks just before
        ``[DONE]``, after the usage-bearing event; ``finish`` then keeps this price.
        """
        if ex.usage is None:
            self._price(ex, meter.usage)
        if ex.cost is None:
            return None
        return b": x-sidecar-cost=" + _usd(ex.cost).encode() + b"\n\n"

    def _settle_cost(self, ex: Exchange) -> None:
        """Cost 0, not null, where nothing billable happened: free operations, refusals, upstream errors.

        Null stays for what should have been priced and could not be (unpriced model, usage missing).
        """
        if ex.cost is None and (ex.status >= 400 or not ex.status or ex.usage is None
                                and usage_mod.kind_for(ex.operation_id) == usage_mod.NONE):
            ex.cost = 0.0

    def finish(self, ex: Exchange, meter=None) -> None:
        """Record the exchange exactly once: usage from the meter, log line, spend sinks."""
        if ex.finished:
            return
        ex.finished = True
        if meter is not None and ex.usage is None:
            usage = meter.usage
            if usage is None and ex.status < 400 and usage_mod.kind_for(ex.operation_id) in estimate.GENERATING_KINDS:
                usage = meter.estimate()  # cut before its usage event: Mistral bills it all the same
            self._price(ex, usage)
        self._settle_cost(ex)
        if self.redactor is not None:
            self._redact(ex)
        latency = ex.latency = self.clock.monotonic() - ex.started
        if self.metrics is not None:
            if ex.open_stream:
                self.metrics.stream_closed()
            self.metrics.observe(ex, latency)
        if access_log.isEnabledFor(logging.INFO):
            line = self.log_line(ex)
            if self.log_bodies:
                line["request_body"], line["response_body"] = ex.request_json, ex.response_json
            text = _LINE(line)
            if self.log_bodies and self.redactor is not None:  # a prompt may quote a key: the whole line
                text = self.redactor.text(text)
            # The record made directly: ``info`` would walk the stack for a caller no format prints.
            access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0,
                                                    text,
                                                    None, None, "finish"))
        for sink in self.sinks:
            try:
                sink(ex)
            except Exception:  # a failing sink must not break the response; it is logged loudly
                log.exception("spend sink %r failed for request %s", sink, ex.request_id)
        if self.telemetry is not None:
            try:
                self.telemetry.end(ex)
            except Exception:  # like a sink: telemetry must never break an answer, and says so when it fails
                log.exception("telemetry failed for request %s", ex.request_id)

    def _redact(self, ex: Exchange) -> None:
        """The exchange's strings a client chose (a request id, a model or file id from the path, an end
        user, a route) lose any secret before they reach the log line and the sinks."""
        text = self.redactor.text
        ex.request_id, ex.model, ex.end_user, ex.route, ex.error = (
            text(ex.request_id), text(ex.model), text(ex.end_user), text(ex.route), text(ex.error))

    def log_line(self, ex: Exchange) -> dict:
        """The access-log record: what happened and what it cost, never a key, a prompt or an answer.

        The key appears as its alias (a name an operator chose) and the first 12 hex digits of its
        sha256, enough to find it in ``/key/list`` and useless to anyone else.
        """
        key_hash = ex.key_hash
        counts = usage_mod.counts(ex.usage)
        for unit in ("pages", "audio_seconds", "characters"):  # shown only where the operation bills them
            counts[unit] = counts[unit] or None
        return {
            "ts": round(self.clock.wall(), 3), "request_id": ex.request_id, "method": ex.method, "route": ex.route,
            "operation": ex.operation_id, "status": ex.status, "latency_ms": round(ex.latency * 1000, 2),
            "upstream_ms": round(ex.upstream_latency * 1000, 2) if ex.upstream_latency is not None else None,
            "model": ex.model, "deployment": ex.deployment, "stream": ex.stream, "key_alias": ex.key_alias,
            "key": key_hash[:12] if key_hash else None, "end_user": ex.end_user,
            **counts, "cost": ex.cost, "error": ex.error, "estimated": ex.usage is not None and ex.usage.estimated,
        }


def _usd(cost: float) -> str:
    return f"{cost:.10f}".rstrip("0").rstrip(".") or "0"
