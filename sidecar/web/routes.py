"""Routes generated from the spec table: one URL rule per (path, prefix), one generic view.

Every operation is served at its own path (``/v1/...``, ``/v2/...``) and under ``/mistral``, where
LiteLLM-style clients call. Werkzeug's 404/405 are rendered in Mistral's error shape.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

from sidecar.core import errors
from sidecar.core.dialect import OPENAI_PATHS
from sidecar.core.spec import Endpoint, flask_rule
from sidecar.web import passthrough
from sidecar.web.guard import HostGuard

PREFIXES = ("", "/mistral")


def _view(pipeline, by_method: dict[str, Endpoint]):
    """The view of one path. HEAD (which werkzeug adds to every GET rule) is served as the GET, and the
    server sends no body: gunicorn drops it, and werkzeug closes the relayed one unread."""
    if "GET" in by_method:
        by_method = {**by_method, "HEAD": by_method["GET"]}

    def view(**path_params) -> Response:
        return pipeline.handle(by_method[request.method], path_params, request._get_current_object())
    return view


class LazyBuildRule(Rule):
    """A URL rule whose URL builders are compiled the first time a URL is built from it.

    Werkzeug compiles two builders (generated Python code) per rule when it is added, for ``url_for``;
    the sidecar builds no URL from its ~430 spec rules, and compiling them took ~0.2 s and ~1 MB of
    every worker's start-up. Matching is untouched."""

    def _compile_builder(self, append_unknown: bool = True):
        compile_builder, built = super()._compile_builder, None

        def build(rule, *args, **kwargs):
            nonlocal built
            if built is None:
                built = compile_builder(append_unknown)
            return built(rule, *args, **kwargs)
        return build


class SpecDispatcher:
    """WSGI middleware in front of Flask for the proxied operations at fixed paths (chat, embeddings...).

    Those requests need nothing Flask adds per request (contexts, URL routing, session, response
    finalising: about 60 us), so they go straight to the pipeline with a plain request object; every
    other request (path parameters, the sidecar's own handlers, pass-through routes, 404s) takes
    Flask's way. The table is checked against Flask's own URL map, so both ways answer a path alike.
    """

    def __init__(self, app: Flask, wsgi_app, pipeline, routes: dict[tuple[str, str], Endpoint]):
        self.app, self.wsgi_app, self.pipeline, self.routes = app, wsgi_app, pipeline, routes
        self.guard = HostGuard(pipeline.settings)  # first, on every request: see web/guard.py

    def __call__(self, environ, start_response):
        refused = self.guard.refusal(environ)
        if refused is not None:
            body, status, headers = errors.render(refused)
            return Response(body, status, headers)(environ, start_response)
        endpoint = self.routes.get((environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")))
        if endpoint is None:
            return self.wsgi_app(environ, start_response)
        req = self.app.request_class(environ)
        try:
            response = self.pipeline.handle(endpoint, {}, req)
        except HTTPException as exc:
            response = _http_error(exc, req)
        except Exception as exc:  # what Flask's handler for Exception would answer
            response = _unexpected(exc, req)
        return response(environ, start_response)


def _fast_routes(app: Flask, candidates: dict[tuple[str, str], tuple[str, Endpoint]]) -> dict:
    """The (method, path) -> Endpoint table of ``SpecDispatcher``: fixed paths whose Flask rule is the
    spec's own rule (a configured pass-through route at the same path wins in Flask, so stays there)."""
    adapter = app.url_map.bind("localhost")
    table = {}
    for (method, path), (rule_endpoint, endpoint) in candidates.items():
        try:
            matched, _args = adapter.match(path, method)
        except HTTPException:
            continue
        if matched == rule_endpoint:
            table[(method, path)] = endpoint
    return table


def register(app: Flask, pipeline) -> None:
    """Add one rule per path and prefix; the view picks the endpoint by method.

    Configured pass-through routes go first (the first matching rule wins, so they win over the
    spec at the same path); the OpenAI dialect's paths without /v1 serve the same endpoints.
    """
    app.url_rule_class = LazyBuildRule
    config = getattr(pipeline.settings, "config", None)
    passthrough.register(app, pipeline, config.pass_through if config is not None else ())
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in pipeline.spec.endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    fast: dict[tuple[str, str], tuple[str, Endpoint]] = {}
    for path, by_method in by_path.items():
        view = _view(pipeline, by_method)
        own = all(e.plain.handler is not None for e in by_method.values())
        for prefix in ("",) if own else PREFIXES:
            app.add_url_rule(prefix + flask_rule(path), endpoint=f"{prefix}{path}", view_func=view,
                             methods=list(by_method), provide_automatic_options=False)
            fast.update(_candidates(prefix + path, f"{prefix}{path}", by_method))
    for alias, path in OPENAI_PATHS.items():
        if path in by_path:
            app.add_url_rule(alias, endpoint=f"openai:{alias}", view_func=_view(pipeline, by_path[path]),
                             methods=list(by_path[path]), provide_automatic_options=False)
            fast.update(_candidates(alias, f"openai:{alias}", by_path[path]))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.wsgi_app = SpecDispatcher(app, app.wsgi_app, pipeline, _fast_routes(app, fast))


def _candidates(path: str, rule_endpoint: str, by_method: dict[str, Endpoint]) -> dict:
    """Proxied endpoints at a path without parameters, where no handler of the sidecar's own answers."""
    if "{" in path:
        return {}
    return {(method, path): (rule_endpoint, endpoint) for method, endpoint in by_method.items()
            if endpoint.plain.handler is None and (endpoint.stream is None or endpoint.stream.handler is None)}


_WERKZEUG = {404: errors.NotFound, 405: errors.MethodNotAllowed, 413: errors.PayloadTooLarge,
             415: errors.UnsupportedMediaType}


def _http_error(exc: HTTPException, req=None) -> Response:
    req = request if req is None else req
    kind = _WERKZEUG.get(exc.code or 500)
    if kind is None:
        error = errors.BadRequest(exc.description or exc.name)
        error.status = exc.code or 400
    else:
        message = {404: f"No route for {req.method} {req.path}.",
                   405: f"Method {req.method} is not allowed on {req.path}."}.get(exc.code, exc.description)
        error = kind(message)
    body, status, headers = errors.render(error)
    if exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return Response(body, status, headers)


def _unexpected(exc: Exception, req=None) -> Response:
    req = request if req is None else req
    rule = getattr(req, "url_rule", None)  # the rule, not the path: a client may have put a key in the path
    logging.getLogger("sidecar").exception("unhandled error on %s %s", req.method, rule.rule if rule else req.path)
    body, status, headers = errors.render(errors.SidecarError("Internal error in the sidecar."))
    return Response(body, status, headers)
