"""Custom pass-through endpoints from config.yaml: a local path relayed as-is to a configured target URL.

They share the pipeline's collaborators (auth, limits, upstream with its retries, relay, accounting)
but skip validation: the body is the client's, forwarded untouched. A configured path wins over a
spec route at the same path; when it shadows a spec operation, the exchange is accounted as that
operation (so an OCR pass-through is still priced per page).
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from flask import Flask, Response, request

from sidecar.access.auth import bearer
from sidecar.core.config import PassThroughEndpoint
from sidecar.core.errors import BadRequest, SidecarError
from sidecar.core.fields import model_of
from sidecar.core.router import Target
from sidecar.core.spec import flask_rule
from sidecar.upstream.client import outbound_headers
from sidecar.web import body as bodies
from sidecar.web.scope import Scope

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CHUNK = 64 * 1024
UNSAFE_IN_RAW_PATH = ("%2f", "%5c")  # encoded "/" and "\": werkzeug decodes them before routing


def safe_subpath(subpath: str, raw_uri: str) -> str:
    """The subpath, percent-encoded for the target; 400 if it could climb above the target."""
    if any(token in raw_uri.split("?", 1)[0].lower() for token in UNSAFE_IN_RAW_PATH):
        raise BadRequest("Encoded slashes are not allowed in a pass-through path.", code="unsafe_path")
    for segment in subpath.split("/"):
        decoded, seen = segment, None
        while decoded != seen:  # undo double (and deeper) encoding: %252e%252e -> %2e%2e -> ..
            seen, decoded = decoded, unquote(decoded)
        if decoded in ("", ".", "..") or any(c in decoded for c in "/\\\x00"):
            raise BadRequest("A pass-through subpath may not contain empty, '.' or '..' segments.",
                             code="unsafe_path")
    return quote(subpath, safe="/")


class PassThrough:
    """The view for one configured endpoint."""

    def __init__(self, pipeline, endpoint: PassThroughEndpoint, operation_id: str | None):
        self.pipeline = pipeline
        self.endpoint = endpoint
        self.operation_id = operation_id or "sidecar_pass_through"
        self.fixed = {name.lower(): (name, value) for name, value in endpoint.headers}

    def view(self, subpath: str | None = None) -> Response:
        pipeline = self.pipeline
        ex = pipeline.exchange(request.headers, self.operation_id, request.method, self.endpoint.path)
        scope = Scope()
        try:
            caller = ex.caller = pipeline.auth.authenticate(request.headers) if self.endpoint.auth else None
            url = self.endpoint.target + (f"/{safe_subpath(subpath, _raw_uri())}" if subpath is not None else "")
            body = scope.body = bodies.read_unchecked(request, pipeline.settings.max_body_bytes,
                                                      pipeline.settings.max_upload_bytes)
            ex.request_json = body.json
            ex.model = model_of(body.json)
            ex.end_user = request.headers.get(pipeline.settings.end_user_header)
            if caller is not None:
                pipeline.auth.authorize_model(caller, ex.model)
            scope.release = pipeline.accountant.admit(ex)
            target = Target(url)  # no credentials: only the configured headers authenticate
            upstream = scope.upstream = pipeline.upstream.send(target, request.method, "",
                                                               request.query_string.decode("latin-1"),
                                                               self._headers(body, target), body.payload)
            return pipeline.respond(ex, upstream, scope)  # the pipeline's relay + accounting
        except SidecarError as error:
            scope.close()
            return pipeline.refuse(ex, error)
        except BaseException:
            scope.close()
            raise

    def _headers(self, body: bodies.Body, target: Target) -> dict:
        """Configured headers; with ``forward_headers`` also the client's (the pipeline's outbound
        policy), never a header carrying its sidecar credential."""
        headers: dict[str, str] = {}
        if self.endpoint.forward_headers:
            never = {s for s in (bearer(request.headers), self.pipeline.settings.master_key) if s}
            forwarded = outbound_headers(request.headers, target, "bearer", drop=self.pipeline.drop_outbound)
            headers = {name: value for name, value in forwarded.items()
                       if not any(secret in value for secret in never)}
        elif request.content_type:
            headers["Content-Type"] = request.content_type
        for low, (name, value) in self.fixed.items():
            for existing in [k for k in headers if k.lower() == low]:
                del headers[existing]
            headers[name] = value
        if body.file is not None or body.raw is not None:
            headers["Content-Length"] = str(body.size)
        return headers


def _raw_uri() -> str:
    environ = request.environ
    return environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.path


def register(app: Flask, pipeline, endpoints: tuple[PassThroughEndpoint, ...]) -> None:
    """Add the configured routes; call before the spec's routes so that a configured path wins."""
    by_path = {}
    for prefix in ("", "/mistral"):
        for e in pipeline.spec.endpoints:
            by_path.setdefault(prefix + e.path, e.plain.id)
    for endpoint in endpoints:
        view = PassThrough(pipeline, endpoint, by_path.get(endpoint.path)).view
        app.add_url_rule(flask_rule(endpoint.path), endpoint=f"passthrough:{endpoint.path}", view_func=view,
                         methods=METHODS, provide_automatic_options=False)
        if endpoint.include_subpath:
            app.add_url_rule(flask_rule(endpoint.path).rstrip("/") + "/<path:subpath>",
                             endpoint=f"passthrough:{endpoint.path}/*", view_func=view, methods=METHODS,
                             provide_automatic_options=False)
