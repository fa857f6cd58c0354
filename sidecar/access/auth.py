"""Who is calling: the bearer credential -> ``Caller`` (master, virtual key or open), and what it may do.

Keys are compared in constant time. Virtual keys are resolved by a ``KeyStore`` (see ``keys.py``)
when one is configured; without a store only the master key (or nothing, on loopback) is accepted.
"""

from __future__ import annotations

import hmac

from sidecar.core.errors import Forbidden, Unauthorized
from sidecar.core.exchange import Caller

OPEN = Caller("open")
MASTER = Caller("master", alias="master")


def bearer(headers) -> str | None:
    """The credential a client sent: ``Authorization: Bearer X``, else ``x-api-key``."""
    value = headers.get("Authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return headers.get("x-api-key") or None


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


class Authenticator:
    """Resolves callers; ``keys`` is the virtual-key store (None: master key only)."""

    def __init__(self, master_key: str | None, keys=None):
        self.master_key = master_key
        self.keys = keys

    def authenticate(self, headers) -> Caller:
        """Master key, else a virtual key, else 401; with no master key (loopback only) the sidecar is open:
        a virtual key still carries its limits, a deleted/blocked/expired one is still refused, any other
        token (clients send ``Bearer anything``) is let through as ``OPEN``."""
        token = bearer(headers)
        if token is None:
            if self.master_key is None:
                return OPEN
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        if self.master_key is not None and same_secret(token, self.master_key):
            return MASTER
        if self.keys is not None:
            caller = self.keys.caller_for(token)  # raises 401 for deleted, blocked or expired keys
            if caller is not None:
                return caller
        if self.master_key is None:
            return OPEN
        raise Unauthorized("Invalid API key.")

    def require_master(self, caller: Caller) -> None:
        if not caller.is_master:
            raise Unauthorized("This route needs the master key.", code="master_key_required")

    @staticmethod
    def authorize_model(caller: Caller, model: str | None) -> None:
        if not caller.allows(model):
            raise Forbidden(f"This key may not use model '{model}'.", param="model")
