"""The one generic view: route -> auth -> validate -> forward -> account -> respond.

Every operation of the spec, proxied or the sidecar's own, goes through ``Pipeline.handle``;
the differences between operations are data on ``Operation``, not branches per route. Config
pass-through routes are a mode of it (``web/passthrough.py``): no validation, their own target.
"""

from __future__ import annotations

import itertools
import logging

import urllib3
from flask import Response, request

from sidecar.clock import SYSTEM, Clock
from sidecar.core import dialect
from sidecar.core.errors import (
    NotFound,
    SidecarError,
    UpstreamTimeout,
    UpstreamUnavailable,
    observability_render,
    render,
)
from sidecar.core.exchange import Exchange, request_id
from sidecar.core.fields import model_of, wants_stream
from sidecar.core.redact import Redactor
from sidecar.core.router import ModelRouter
from sidecar.core.spec import Endpoint, Operation, body_fields, observability_statuses
from sidecar.deadline import Deadline, DeadlineExceeded
from sidecar.store.health import STORE_ERRORS
from sidecar.upstream.client import _retry_after_seconds, inbound_headers, outbound_headers, path_segment
from sidecar.upstream.clouds import Outbound, transport_for
from sidecar.web import body as bodies
from sidecar.web.answer import Answer
from sidecar.web.handlers import OwnRequest
from sidecar.web.relay import RELAY_ERRORS, RelayBody, upstream_chunks
from sidecar.web.scope import Scope

log = logging.getLogger("sidecar.web.pipeline")
NO_STREAM_HEADERS = frozenset({"x-model-deprecation-timestamp"})  # breaks SDK 1.x on SSE responses
# JSON answers up to this size are read whole to account usage; larger ones (file listings, exports)
# are relayed as a stream without usage, so one answer cannot hold a worker's memory.
JSON_ACCOUNT_LIMIT = 16 * 1024 * 1024


def _clipped(user: str | None) -> str | None:
    """An end user as recorded: at most 256 characters, None when empty."""
    return user[:256] if user else None


class Pipeline:
    """Holds the collaborators built once at start-up and runs each request through them."""

    def __init__(self, settings, spec, validators, upstream, authenticator, accountant, handlers, router=None,
                 clock: Clock = SYSTEM, redactor=None, store=None, auth_overrides=None):
        self.settings = settings
        # operation id -> security decided at start-up where a setting changes the spec's (SIDECAR_METRICS_AUTH)
        self.auth_overrides = dict(auth_overrides or {})
        self.clock = clock
        self.store = store  # store.health.StoreWatch: a request that finds the store down gets 503, logged once
        # Secrets out of what an upstream echoes back: relayed headers and JSON answers (streams are not read).
        self.redactor = redactor or Redactor(settings.secrets())
        self.spec = spec
        # Operations whose body declares ``user`` (else it is OpenAI's end-user field): read once, not per request.
        self._declares_user = frozenset(op.id for op in spec.operations
                                        if "user" in body_fields(spec.document, op.body_schema))
        self.validators = validators
        self.upstream = upstream
        self.auth = authenticator
        self.accountant = accountant
        self.handlers = handlers
        # model -> (Target, upstream model name): config.yaml aliases, provider prefixes, else the default
        self.router = router or ModelRouter.from_config(getattr(settings, "config", None), upstream.default_target,
                                                         lambda entry: transport_for(entry, clock), clock=clock)
        accountant.sinks.append(self.router.settle)  # a finished answer frees its deployment, counts its tokens
        self.drop_outbound = frozenset({settings.end_user_header, "x-request-id"})
        self.observability_errors = observability_statuses(spec.document)

    # -- the view ---------------------------------------------------------------------------------
    def handle(self, endpoint: Endpoint, path_params: dict, req=None, passthrough=None) -> Response:
        """Serve one request; ``req`` is the Werkzeug request (Flask's ``request`` when not given:
        the spec dispatcher in routes.py calls without a Flask request context). ``passthrough``
        (a ``web.passthrough.PassThroughRoute``): a configured pass-through, its body neither
        translated nor validated, sent to its own target with its own headers."""
        req = request._get_current_object() if req is None else req
        headers = req.headers
        op = endpoint.plain
        ex = self.exchange(headers, op.id, op.method, endpoint.path)
        scope = Scope()
        try:
            security = self.auth_overrides.get(op.id, op.auth)
            caller = ex.caller = self.auth.authenticate(headers) if security != "none" else None
            if security == "master":  # before the body: only the master key learns what the route accepts
                self.auth.require_master(caller)
            body = scope.body = self._read_body(op, req)
            if passthrough is None:
                op = self._spec_steps(endpoint, ex, body, path_params, req)
            else:
                ex.end_user = self._end_user(headers)
            ex.model = self._model(op, body, path_params)  # the one place a request's model is settled
            ex.request_json = body.json
            if caller is not None:
                self.auth.authorize_model(caller, ex.model)
            scope.release = self.accountant.admit(ex)
            if op.handler is not None:
                response = self.handlers[op.handler](OwnRequest(ex, body, path_params, req.args))
                scope.close()
                return self._finish_plain(ex, response)
            if passthrough is not None:
                return self._pass_through(passthrough, op, ex, body, path_params, scope, req)
            return self._forward(op, ex, body, path_params, scope, req)
        except SidecarError as error:
            scope.close()
            return self.refuse(ex, error)
        except STORE_ERRORS as exc:  # keys, budgets or reports could not be read: not this request's fault
            scope.close()
            if self.store is None:
                raise
            return self.refuse(ex, self.store.down(exc))
        except BaseException:
            scope.close()
            raise

    def exchange(self, headers, operation_id: str, method: str, route: str) -> Exchange:
        """A new exchange, timed from now by the app's clock (and traced from now, when tracing is on)."""
        ex = Exchange(request_id(headers.get("x-request-id", "")), operation_id, method, route,
                      started=self.clock.monotonic(), wall_time=self.clock.wall())
        self.accountant.begin(ex, headers)
        return ex

    def refuse(self, ex: Exchange, error) -> Response:
        shaped = error.status in self.observability_errors.get(ex.operation_id, ())
        payload, status, headers = (observability_render if shaped else render)(error)
        headers["x-request-id"] = ex.request_id
        ex.status, ex.error = status, error.code or "invalid_request"
        self.accountant.finish(ex)
        return Response(payload, status, headers)

    # -- steps --------------------------------------------------------------------------------------
    def _read_body(self, op: Operation, req) -> bodies.Body:
        if op.body_kind == "json":
            return bodies.read_json(req, self.settings.max_body_bytes, op.body_required)
        if op.body_kind == "multipart":
            return bodies.read_multipart(req, self.settings.max_upload_bytes)
        if op.body_kind == "unchecked":
            return bodies.read_unchecked(req, self.settings.max_body_bytes, self.settings.max_upload_bytes)
        return bodies.Body()

    def _spec_steps(self, endpoint: Endpoint, ex: Exchange, body: bodies.Body, path_params: dict,
                    req) -> Operation:
        """What the spec says of the request: OpenAI fields translated, the stream twin picked, the
        end user taken, then validation; returns the operation that serves it."""
        self._translate(endpoint.plain, body, req.path)
        stream = self._wants_stream(body)
        op = endpoint.pick(stream)
        ex.operation_id, ex.stream = op.id, op.stream_twin or stream
        ex.end_user = self._take_end_user(op, body, req.headers)
        self._validate(op, path_params, body, req.args)
        ex.path_params = path_params
        return op

    @staticmethod
    def _wants_stream(body: bodies.Body) -> bool:
        return wants_stream(body.json, body.fields)

    @staticmethod
    def _translate(op: Operation, body: bodies.Body, path: str) -> None:
        """OpenAI-style fields Mistral would refuse -> Mistral's (dialect.py); untouched bodies stay byte for byte."""
        if dialect.applies(path) and dialect.translate(op.id, body.json):
            body.edited = True

    def _take_end_user(self, op: Operation, body: bodies.Body, headers) -> str | None:
        """End user from the configured header, else an OpenAI-style ``user`` field Mistral would refuse."""
        data = body.json
        if isinstance(data, dict) and "user" in data and op.proxied and op.id not in self._declares_user:
            value = data.pop("user")
            body.edited = True
            if headers.get(self.settings.end_user_header) is None and isinstance(value, str):
                return _clipped(value)
        return self._end_user(headers)

    def _end_user(self, headers) -> str | None:
        return _clipped(headers.get(self.settings.end_user_header))


    def _validate(self, op: Operation, path_params: dict, body: bodies.Body, args) -> None:
        validator = self.validators[op.id]
        validator.check_params(path_params, args)
        if op.body_kind == "json" and (body.json is not None or body.raw is not None):  # a JSON null is checked too
            validator.check_body(body.json)
        elif op.body_kind == "multipart":
            validator.check_parts(body.parts, body.fields)

    @staticmethod
    def _model(op: Operation, body: bodies.Body, path_params: dict) -> str | None:
        """The model the request names where its operation declares one (``Operation.model_in``): what
        the caller is authorized for, routed by, reserved and priced as (``ex.model``)."""
        if op.model_in == "body":
            return model_of(json=body.json)
        if op.model_in == "form":
            return model_of(form=body.fields)
        if op.model_in == "path":
            model = path_params.get("model_id")
            return model if isinstance(model, str) else None
        return None

    def _forward(self, op: Operation, ex: Exchange, body: bodies.Body, path_params: dict, scope: Scope,
                 req) -> Response:
        """Try the model's deployments in the router's order until one answers with something other
        than 429, 5xx or a connection failure, all before a byte reaches the client and within one
        total deadline; the last answer is relayed whatever it is."""
        path = op.path.format(**{k: path_segment(k, v) for k, v in path_params.items()})
        query = req.query_string.decode("latin-1")
        plan = self.router.plan(ex.model, lambda d: d.serves(op)) if ex.model else [(self.router.default, None)]
        if not plan:
            providers = sorted({d.provider for d, _m in self.router.candidates(ex.model)})
            raise NotFound(f"Model '{ex.model}' is deployed on {', '.join(providers)} only, which does not offer "
                           f"{op.method} {op.path}: that operation exists only on Mistral's own API.",
                           param="model", code="operation_not_on_deployment")
        deadline = Deadline(self.settings.total_timeout, self.clock)
        try:
            with deadline.bounded():  # until the answer is read whole, or its relay starts
                for n, (deployment, model) in enumerate(plan):
                    upstream, sent = self._attempt(op, ex, body, path, query, req, deployment, model,
                                                   n == len(plan) - 1, len(plan))
                    if upstream is None:
                        continue
                    scope.upstream = upstream
                    ex.deployment, ex.priced_as = deployment.name, deployment.priced_as
                    ex.upstream_latency = self.clock.monotonic() - sent
                    return self.respond(ex, upstream, scope, deadline)
        except DeadlineExceeded:
            raise self._too_late(deadline) from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, op: Operation, ex: Exchange, body: bodies.Body, path: str, query: str, req, deployment,
                 model: str | None, last: bool, planned: int):
        """One deployment tried: (its answer, when it was sent), or (None, _) to go on to the next."""
        if model and isinstance(body.json, dict) and body.json.get("model") != model:
            body.edit_json("model", model)
        sent = self.clock.monotonic()
        self.router.balancer.started(deployment)
        try:
            upstream = self._send(deployment, op, path, query, body, req.headers, ex, model)
        except (UpstreamUnavailable, UpstreamTimeout) as error:
            self._attempted(ex, deployment, error.code, last or not error.failover, planned, failed=True)
            if last or not error.failover:
                raise
            return None, sent
        except BaseException:  # refused before it was sent (a field Bedrock cannot take...), or the deadline
            self.router.balancer.finished(deployment.name)
            raise
        status = upstream.status_code
        failed = status == 429 or status >= 500
        self._attempted(ex, deployment, status, last, planned, failed=failed,
                        retry_after=upstream.headers.get("Retry-After"))
        if failed and not last:
            upstream.close()
            return None, sent
        return upstream, sent

    def _send(self, deployment, op: Operation, path: str, query: str, body: bodies.Body, client_headers,
              ex: Exchange, model: str | None):
        """One attempt: Mistral's own API through the upstream client, or a cloud's transport."""
        if deployment.transport is None:
            headers = self._upstream_headers(op, deployment.target, body, client_headers)
            self.accountant.trace_headers(ex, headers)
            return self.upstream.send(deployment.target, op.method, path, query, headers, body.payload)
        headers = self._upstream_headers(op, None, body, client_headers)
        self.accountant.trace_headers(ex, headers)
        call = Outbound(op, path, query, headers, body.payload, body.json, ex.stream, model or "")
        return deployment.transport.send(self.upstream, call)

    def _pass_through(self, route, op: Operation, ex: Exchange, body: bodies.Body, path_params: dict,
                      scope: Scope, req) -> Response:
        """A configured pass-through: one attempt at its own target, its own headers over (with
        ``forward_headers``) the client's after the outbound policy, relayed like any answer."""
        target = route.target(path_params, req)
        forwarded = self._upstream_headers(op, target, body, req.headers) if route.config.forward_headers else None
        upstream = scope.upstream = self.upstream.send(target, req.method, "", req.query_string.decode("latin-1"),
                                                       route.headers(forwarded, req.headers, body), body.payload)
        return self.respond(ex, upstream, scope)

    def _attempted(self, ex: Exchange, deployment, outcome, last: bool, planned: int, *, failed: bool,
                   retry_after=None) -> None:
        """One attempt's end: the balancer learns it, metrics count it, a failure is logged when there
        was another way to go (a lone attempt is the access log's line). An attempt whose answer is
        relayed stays in flight until the exchange finishes (``ModelRouter.settle``)."""
        balancer = self.router.balancer
        cooled = 0.0
        if failed:
            cooled = balancer.failed(deployment.name, rate_limited=outcome == 429,
                                     retry_after=_retry_after_seconds(retry_after, self.clock.wall()))
            if not last or not isinstance(outcome, int):  # not relayed: no longer in flight
                balancer.finished(deployment.name)
        metrics = self.accountant.metrics
        if metrics is not None:
            metrics.deployment_attempt(deployment.name, "error" if failed and last else "retry" if failed else "ok")
            if cooled:
                metrics.deployment_cooldown(deployment.name)
        if failed and planned > 1:
            log.warning("request %s: deployment %s failed (%s)%s; %s", ex.request_id, deployment.name, outcome,
                        f", cooling down {cooled:g} s" if cooled else "",
                        "no deployment left to try" if last else "trying the next one")

    @staticmethod
    def _too_late(deadline: Deadline) -> UpstreamTimeout:
        return UpstreamTimeout(f"Upstream did not finish its answer within {deadline.seconds:g} s "
                               "(SIDECAR_TOTAL_TIMEOUT).", code="upstream_total_timeout")

    def _upstream_headers(self, op: Operation, target, body: bodies.Body, client_headers) -> dict:
        """The outbound headers; ``target`` None leaves credentials to a cloud transport."""
        headers = outbound_headers(client_headers, target, op.auth, drop=self.drop_outbound)
        if body.file is not None:
            headers["Content-Length"] = str(body.size)
        elif body.edited:
            headers["Content-Type"] = "application/json"
        return headers

    def respond(self, ex: Exchange, upstream, scope: Scope, deadline: Deadline | None = None) -> Response:
        """Relay the upstream answer: SSE and non-JSON bodies streamed, JSON read to account usage (within
        ``deadline``, SIDECAR_TOTAL_TIMEOUT); ``scope`` is closed when the answer has been sent (or cut)."""
        ex.status = upstream.status_code
        ctype = upstream.headers.get("Content-Type", "")
        is_sse = "text/event-stream" in ctype
        if not is_sse and "json" in ctype:
            return self._respond_json(ex, upstream, scope, deadline or Deadline(self.settings.total_timeout, self.clock))
        return self._relay(ex, upstream, scope, is_sse)

    def _relay(self, ex: Exchange, upstream, scope: Scope, is_sse: bool, chunks=None) -> Response:
        meter = self.accountant.stream_meter(ex) if is_sse else None
        outputs = None if is_sse else self.accountant.output_meter(ex)  # a batch job's results, read as relayed

        def finish(relay: RelayBody) -> None:
            scope.close()
            ex.error = relay.error or ex.error
            ex.first_chunk_at = relay.first_chunk_at
            self.accountant.finish(ex, meter)
            if outputs is not None:
                outputs.close(relay.complete)

        headers = self._relay_headers(ex, upstream, NO_STREAM_HEADERS if is_sse else frozenset())
        length = upstream.headers.get("Content-Length")
        if not is_sse and length and not upstream.headers.get("Content-Encoding"):
            headers.append(("Content-Length", length))
        closing = (lambda: self.accountant.cost_comment(ex, meter)) if meter is not None and ex.status < 400 else None
        on_chunk = meter.feed if meter else outputs.feed if outputs else None
        relay = RelayBody(upstream, chunks=chunks, on_chunk=on_chunk, on_close=finish,
                          is_sse=is_sse, closing=closing, clock=self.clock,
                          idle_timeout=self.settings.stream_idle_timeout if is_sse else None)
        return Response(relay, upstream.status_code, headers, direct_passthrough=True)

    def _respond_json(self, ex: Exchange, upstream, scope: Scope, deadline: Deadline) -> Response:
        chunks, read = upstream_chunks(upstream), bytearray()
        try:
            for chunk in chunks:
                if deadline.passed():  # where nothing can interrupt a read (not gevent), between reads
                    raise DeadlineExceeded()
                read += chunk
                if len(read) > JSON_ACCOUNT_LIMIT:
                    log.info("JSON answer above %d bytes relayed as a stream, unaccounted", JSON_ACCOUNT_LIMIT)
                    return self._relay(ex, upstream, scope, False, itertools.chain((bytes(read),), chunks))
        except (*RELAY_ERRORS, DeadlineExceeded) as exc:
            scope.close()
            if isinstance(exc, DeadlineExceeded):
                return self.refuse(ex, self._too_late(deadline))
            if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
                return self.refuse(ex, UpstreamTimeout("Upstream stopped sending its answer midway."))
            return self.refuse(ex, UpstreamUnavailable("Upstream response was cut before it finished."))
        scope.close()
        content = bytes(read)
        if ex.operation_id == dialect.LIST_MODELS and ex.status == 200 and self.router.aliases:
            content = dialect.with_models(content, self.router.model_cards())
        content = self.redactor.data(content)
        self.accountant.account_body(ex, content)
        headers = self._relay_headers(ex, upstream)
        headers.extend(self.accountant.response_headers(ex))
        self.accountant.finish(ex)
        return Answer(content, upstream.status_code, headers)

    def _relay_headers(self, ex: Exchange, upstream, drop=frozenset()) -> list[tuple[str, str]]:
        headers = self.redactor.headers(inbound_headers(upstream.headers, drop))
        headers.append(("x-request-id", ex.request_id))
        return headers

    def _finish_plain(self, ex: Exchange, response: Response) -> Response:
        ex.status = response.status_code
        response.headers["x-request-id"] = ex.request_id
        self.accountant.finish(ex)
        return response

