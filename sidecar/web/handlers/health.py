"""The sidecar's own health routes: answered locally, never by calling upstream."""

from __future__ import annotations

from flask import jsonify


def liveliness(pipeline, ex, body, path_params):
    return jsonify(status="ok")


def readiness(pipeline, ex, body, path_params):
    checks = {"spec_operations": len(pipeline.spec.operations), "upstream_mode": pipeline.settings.upstream_mode}
    ready = getattr(pipeline, "ready", lambda: True)()
    response = jsonify(status="ready" if ready else "not_ready", **checks)
    response.status_code = 200 if ready else 503
    return response


HANDLERS = {"health.liveliness": liveliness, "health.readiness": readiness}
