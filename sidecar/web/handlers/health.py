"""The sidecar's own health routes: answered locally, never by calling upstream.

Readiness asks a ``Readiness`` built by the factory: named probes, each saying why the sidecar
cannot serve yet (``None`` when it can). A probe that raises counts as failing, named by its error.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import jsonify

Probe = Callable[[], "str | None"]  # None: ready; else why not (no secret: the answer is public)


class Readiness:
    """The probes ``/health/readiness`` runs, in order; ``add`` is the seam for store, limiter, upstream checks."""

    def __init__(self, probes: dict[str, Probe] | None = None):
        self.probes: dict[str, Probe] = dict(probes or {})

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe

    def failing(self) -> dict[str, str]:
        """Probe name -> why it fails; empty when ready."""
        found = {}
        for name, probe in self.probes.items():
            try:
                reason = probe()
            except Exception as exc:  # a probe that cannot even run is the clearest "not ready"
                reason = f"{type(exc).__name__}"
            if reason is not None:
                found[name] = reason
        return found


def liveliness(pipeline, ex, body, path_params):
    return jsonify(status="ok")


def readiness(pipeline, ex, body, path_params):
    checks = {"spec_operations": len(pipeline.spec.operations), "upstream_mode": pipeline.settings.upstream_mode}
    failing = pipeline.readiness.failing()
    if failing:
        response = jsonify(status="not_ready", failing=failing, **checks)
        response.status_code = 503
        return response
    return jsonify(status="ready", **checks)


HANDLERS = {"health.liveliness": liveliness, "health.readiness": readiness}
