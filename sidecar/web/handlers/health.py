"""The sidecar's own health routes: answered locally, never by calling upstream.

Readiness asks a ``Readiness`` built by the factory: named probes (the store, and Redis when limits are
shared through it), each bounded in time and saying why the sidecar cannot serve (``None`` when it can).
Liveness only says the worker answers.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import jsonify

from sidecar.core.config import PROVIDERS
from sidecar.deadline import Deadline, DeadlineExceeded
from sidecar.web.handlers import OwnRequest

Probe = Callable[[], "str | None"]  # None: ready; else why not (no secret: the answer is public)
PROBE_SECONDS = 2.0
# What a Redis outage means, shown in the readiness answer as it is documented (README, SECURITY.md).
REDIS_DOWN = ("fail closed: keys with rpm, tpm or parallel limits get 503 limiter_unavailable; "
              "keys without limits are still served")


class Readiness:
    """The probes ``/health/readiness`` runs, in order; ``add`` is the seam for store, limiter, upstream checks."""

    def __init__(self, probes: dict[str, Probe] | None = None):
        self.probes: dict[str, Probe] = dict(probes or {})

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe

    def failing(self) -> dict[str, str]:
        """Probe name -> why it fails; empty when ready. Each probe gets ``PROBE_SECONDS`` (under gevent)."""
        found = {}
        for name, probe in self.probes.items():
            try:
                with Deadline(PROBE_SECONDS).bounded():
                    reason = probe()
            except DeadlineExceeded:
                reason = f"no answer within {PROBE_SECONDS:g} s"
            except Exception as exc:  # a probe that cannot even run is the clearest "not ready"
                reason = f"{type(exc).__name__}"
            if reason is not None:
                found[name] = reason
        return found

def endpoints(settings) -> list[dict]:
    """Each place calls can go (the default Mistral upstream, then config.yaml's aliases), with the reason it
    cannot serve when the sidecar lacks what a call needs; decided from settings, never by calling upstream."""
    found = [({"model": "mistral/*", "model_name": "*", "api_base": settings.mistral_api_base},
              settings.mistral_api_key, "MISTRAL_API_KEY")]
    for entry in getattr(settings.config, "models", ()) or ():
        fallback = settings.mistral_api_key if entry.provider == "mistral" else None
        found.append(({"model": f"{entry.provider}/{entry.model}", "model_name": entry.alias,
                       "api_base": entry.api_base or settings.mistral_api_base},
                      entry.api_key or fallback, f"litellm_params.api_key or {PROVIDERS[entry.provider][1]}"))
    for endpoint, key, where in found:
        if settings.upstream_mode != "replay" and not key:
            endpoint["error"] = f"no key: set {where}"
    return [endpoint for endpoint, _key, _where in found]


def handlers(readiness: Readiness, spec_operations: int, settings) -> dict:
    """Liveness, readiness (``readiness``'s probes) and LiteLLM's ``GET /health`` (from ``settings``)."""
    checks = {"spec_operations": spec_operations, "upstream_mode": settings.upstream_mode}
    if "limiter" in readiness.probes:
        checks["limiter_down_policy"] = REDIS_DOWN

    def liveliness(call: OwnRequest):
        return jsonify(status="ok")

    def ready(call: OwnRequest):
        failing = readiness.failing()
        if failing:
            response = jsonify(status="not_ready", failing=failing, **checks)
            response.status_code = 503
            return response
        return jsonify(status="ready", **checks)

    def models(call: OwnRequest):
        """LiteLLM's ``GET /health`` answer, from what the sidecar holds; replay needs no key."""
        found = endpoints(settings)
        healthy = [e for e in found if "error" not in e]
        unhealthy = [e for e in found if "error" in e]
        checked = ("replay: answered from contracts, no key needed" if settings.upstream_mode == "replay"
                   else "configuration only: each endpoint has its key; Mistral is not called")
        return jsonify(healthy_endpoints=healthy, unhealthy_endpoints=unhealthy, healthy_count=len(healthy),
                       unhealthy_count=len(unhealthy), checked=checked)

    return {"health.liveliness": liveliness, "health.readiness": ready, "health.models": models}
