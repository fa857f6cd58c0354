"""Routes generated from the spec table: one URL rule per (path, prefix), one generic view.

Every operation is served at its own path (``/v1/...``, ``/v2/...``) and under ``/mistral``, where
LiteLLM-style clients call. Werkzeug's 404/405 are rendered in Mistral's error shape.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from . import errors, passthrough
from .dialect import OPENAI_PATHS
from .spec import Endpoint, flask_rule

PREFIXES = ("", "/mistral")


def _view(pipeline, by_method: dict[str, Endpoint]):
    def view(**path_params) -> Response:
        return pipeline.handle(by_method[request.method], path_params)
    return view


def register(app: Flask, pipeline) -> None:
    """Add one rule per path and prefix; the view picks the endpoint by method.

    Configured pass-through routes go first (the first matching rule wins, so they win over the
    spec at the same path); the OpenAI dialect's paths without /v1 serve the same endpoints.
    """
    config = getattr(pipeline.settings, "config", None)
    passthrough.register(app, pipeline, config.pass_through if config is not None else ())
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in pipeline.spec.endpoints:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    for path, by_method in by_path.items():
        view = _view(pipeline, by_method)
        own = all(e.plain.handler is not None for e in by_method.values())
        for prefix in ("",) if own else PREFIXES:
            app.add_url_rule(prefix + flask_rule(path), endpoint=f"{prefix}{path}", view_func=view,
                             methods=list(by_method), provide_automatic_options=False)
    for alias, path in OPENAI_PATHS.items():
        if path in by_path:
            app.add_url_rule(alias, endpoint=f"openai:{alias}", view_func=_view(pipeline, by_path[path]),
                             methods=list(by_path[path]), provide_automatic_options=False)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


_WERKZEUG = {404: errors.NotFound, 405: errors.MethodNotAllowed, 413: errors.PayloadTooLarge,
             415: errors.UnsupportedMediaType}


def _http_error(exc: HTTPException) -> Response:
    kind = _WERKZEUG.get(exc.code or 500)
    if kind is None:
        error = errors.BadRequest(exc.description or exc.name)
        error.status = exc.code or 400
    else:
        message = {404: f"No route for {request.method} {request.path}.",
                   405: f"Method {request.method} is not allowed on {request.path}."}.get(exc.code, exc.description)
        error = kind(message)
    body, status, headers = errors.render(error)
    if exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return Response(body, status, headers)


def _unexpected(exc: Exception) -> Response:
    import logging
    logging.getLogger("sidecar").exception("unhandled error on %s %s", request.method, request.path)
    body, status, headers = errors.render(errors.SidecarError("Internal error in the sidecar."))
    return Response(body, status, headers)
