"""Custom pass-through endpoints from config.yaml: a local path relayed as-is to a configured target URL.

A mode of the one pipeline (``Pipeline.handle`` with a ``PassThroughRoute``): the same auth, body
reading, limits, outbound header policy, upstream (with its retries), relay and accounting, but no
validation: the body is the client's, forwarded untouched. What differs is here: the target, the
configured headers, the operation it is accounted as. A configured path wins over a spec route at the
same path; when it shadows a spec operation, the exchange is accounted as that operation (so an OCR
pass-through is still priced per page).
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from flask import Flask, Response, request

from sidecar.access.auth import bearer
from sidecar.core.config import PassThroughEndpoint
from sidecar.core.errors import BadRequest
from sidecar.core.router import Target
from sidecar.core.spec import Endpoint, Operation, flask_rule

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
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


class PassThroughRoute:
    """One configured endpoint as the pipeline serves it: an ``Endpoint`` per method (its operation
    read as sent, the model from a JSON body, no validator), its target and its header rules."""

    def __init__(self, config: PassThroughEndpoint, operation_id: str | None, master_key: str | None):
        self.config = config
        self.master_key = master_key
        self.fixed = {name.lower(): (name, value) for name, value in config.headers}
        operation_id = operation_id or "sidecar_pass_through"
        # HEAD: werkzeug adds it to every GET rule; it is relayed as a HEAD.
        self.endpoints = {method: Endpoint(method, config.path, Operation(
            id=operation_id, method=method, path=config.path, tag="pass-through", body_kind="unchecked",
            body_required=False, body_schema=None, params=(), streams=False, stream_twin=False,
            auth="bearer" if config.auth else "none", handler=None, model_in="body"), None)
            for method in (*METHODS, "HEAD")}

    def target(self, path_params: dict, req) -> Target:
        """The configured URL (and the subpath below it); no credentials: only configured headers authenticate."""
        subpath = path_params.get("subpath")
        if subpath is None:
            return Target(self.config.target)
        raw_uri = req.environ.get("RAW_URI") or req.environ.get("REQUEST_URI") or req.path
        return Target(f"{self.config.target}/{safe_subpath(subpath, raw_uri)}")

    def headers(self, forwarded: dict | None, client_headers, body) -> dict:
        """Configured headers over ``forwarded`` (the client's, after the pipeline's outbound policy, when
        ``forward_headers``) less any header carrying the caller's sidecar credential; else the content type."""
        if forwarded is not None:
            never = {s for s in (bearer(client_headers), self.master_key) if s}
            headers = {name: value for name, value in forwarded.items() if not any(s in value for s in never)}
        else:
            content_type = client_headers.get("Content-Type")
            headers = {"Content-Type": content_type} if content_type else {}
        for low, (name, value) in self.fixed.items():
            for existing in [k for k in headers if k.lower() == low]:
                del headers[existing]
            headers[name] = value
        if body.file is not None or body.raw is not None:
            headers["Content-Length"] = str(body.size)
        return headers


def _view(pipeline, route: PassThroughRoute):
    def view(subpath: str | None = None) -> Response:
        req = request._get_current_object()
        params = {} if subpath is None else {"subpath": subpath}
        return pipeline.handle(route.endpoints[req.method], params, req, passthrough=route)
    return view


def register(app: Flask, pipeline, endpoints: tuple[PassThroughEndpoint, ...]) -> None:
    """Add the configured routes; call before the spec's routes so that a configured path wins."""
    by_path = {}
    for prefix in ("", "/mistral"):
        for e in pipeline.spec.endpoints:
            by_path.setdefault(prefix + e.path, e.plain.id)
    for endpoint in endpoints:
        view = _view(pipeline, PassThroughRoute(endpoint, by_path.get(endpoint.path), pipeline.settings.master_key))
        app.add_url_rule(flask_rule(endpoint.path), endpoint=f"passthrough:{endpoint.path}", view_func=view,
                         methods=METHODS, provide_automatic_options=False)
        if endpoint.include_subpath:
            app.add_url_rule(flask_rule(endpoint.path).rstrip("/") + "/<path:subpath>",
                             endpoint=f"passthrough:{endpoint.path}/*", view_func=view, methods=METHODS,
                             provide_automatic_options=False)
