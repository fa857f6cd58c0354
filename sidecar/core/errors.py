"""The error hierarchy and its one renderer.

    SidecarError (status, type, code)           -> {"object":"error","message","type","param","code"}
    ├── BadRequest 400        malformed JSON, unreadable body
    ├── Unauthorized 401      missing, unknown, expired or blocked key
    ├── Forbidden 403         model outside the key's allowlist
    ├── NotFound 404 / MethodNotAllowed 405
    ├── RequestTimeout 408    a request body that stopped arriving
    ├── MisdirectedRequest 421  a Host the sidecar does not answer for
    ├── PayloadTooLarge 413 / UnsupportedMediaType 415
    ├── BudgetExceeded 400    the key's max_budget is spent
    ├── RateLimited 429       rpm / tpm / parallel limits (carries Retry-After)
    ├── UpstreamUnavailable 502 / UpstreamTimeout 504 / NoContract 501
    ├── ServiceUnavailable 503  the store (or the limiter) cannot be reached
    └── InvalidRequest 422    -> {"detail":[{"loc","msg","type"}]} (Mistral's HTTPValidationError)
"""

from __future__ import annotations

import json


class SidecarError(Exception):
    """An error the sidecar answers itself, in Mistral's documented error shape."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"object": "error", "message": self.message, "type": self.type,
                "param": self.param, "code": self.code}


class BadRequest(SidecarError):
    status, type, code = 400, "invalid_request_error", "bad_request"


class Unauthorized(SidecarError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(SidecarError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class NotFound(SidecarError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(SidecarError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(SidecarError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class MisdirectedRequest(SidecarError):
    status, type, code = 421, "invalid_request_error", "misdirected_request"


class PayloadTooLarge(SidecarError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class UnsupportedMediaType(SidecarError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class BudgetExceeded(SidecarError):
    status, type, code = 400, "budget_exceeded", "budget_exceeded"


class RateLimited(SidecarError):
    status, type, code = 429, "rate_limit_error", "rate_limited"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs):
        super().__init__(message, **kwargs)
        self.headers["Retry-After"] = str(max(1, int(retry_after)))


class UpstreamUnavailable(SidecarError):
    status, type, code = 502, "upstream_error", "upstream_unavailable"
    failover = True  # nothing reached the upstream: another deployment may be tried


class UpstreamTimeout(SidecarError):
    status, type, code = 504, "upstream_error", "upstream_timeout"
    failover = False  # the upstream may be working on it (and billing it); set True for connect timeouts


class NoContract(SidecarError):
    status, type, code = 501, "replay_error", "no_matching_contract"


class ServiceUnavailable(SidecarError):
    status, type, code = 503, "server_error", "unavailable"


class InvalidRequest(SidecarError):
    """A request that does not conform to the spec: Mistral's 422 ``HTTPValidationError`` (its own body shape)."""

    status, type, code = 422, "invalid_request_error", "invalid_request"

    def __init__(self, detail: list[dict]):
        super().__init__(detail[0]["msg"] if detail else "invalid request")
        self.detail = detail

    def body(self) -> dict:
        return {"detail": self.detail}


def render(error: SidecarError) -> tuple[bytes, int, dict[str, str]]:
    """Serialise an error into (body, status, headers) for a WSGI response."""
    headers = {"Content-Type": "application/json", **error.headers}
    return json.dumps(error.body()).encode(), error.status, headers


def observability_render(error: SidecarError) -> tuple[bytes, int, dict[str, str]]:
    """An error in the ``ObservabilityError`` shape Mistral declares for its observability operations
    (``{"detail": {"message", "error_code"}}``), so their SDK models parse the sidecar's refusals too."""
    message = error.message
    if isinstance(error, InvalidRequest):  # the field-level detail, folded into the one message
        message = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in error.detail)
    code = "VALIDATION_ERROR" if error.status in (400, 422) else "UNKNOWN_ERROR"
    body = {"detail": {"message": message, "error_code": code}}
    return json.dumps(body).encode(), error.status, {"Content-Type": "application/json", **error.headers}
