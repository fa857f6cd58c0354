"""Redaction: every secret the sidecar knows, and the one way to take them out of what leaves it.

Used on what a client receives from an upstream that echoes a credential (relayed headers, JSON
answers read whole) and on what the sidecar writes down (log lines, spend records), where a client
may have put a key anywhere it could (a path, a model name, a request id, an end-user header).
Virtual keys are known only by their hash, so they are recognised by their shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "<scrubbed>"
VIRTUAL_KEY_SHAPE = r"sk-[A-Za-z0-9_-]{43}"  # keys.new_key(): "sk-" + 32 random bytes, url-safe base64
MIN_SECRET = 8  # shorter "secrets" (test words, placeholders) would redact ordinary text


class Redactor:
    """Holds the known secrets as one compiled pattern (longest first, so no secret is half-replaced)."""

    def __init__(self, secrets: Iterable[str] = ()):
        known = sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True)
        self.secrets = tuple(known)
        alternatives = [re.escape(s) for s in known] + [VIRTUAL_KEY_SHAPE]
        self._text = re.compile("|".join(alternatives))
        self._bytes = tuple(s.encode() for s in known)
        self._data = re.compile(b"|".join(re.escape(s) for s in self._bytes)) if known else None

    def text(self, value):
        """A string with every secret replaced; anything else unchanged."""
        if isinstance(value, str) and value:
            return self._text.sub(REDACTED, value)
        return value

    def data(self, content: bytes) -> bytes:
        """Bytes (a JSON answer read whole) with every known secret replaced.

        Only the known secrets are searched for here (a fast substring test first): an answer may
        legitimately show a virtual key's shape, e.g. the sidecar's own ``/key/generate`` answer.
        """
        if self._data is None or not any(secret in content for secret in self._bytes):
            return content
        return self._data.sub(REDACTED.encode(), content)

    def headers(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Relayed response headers with every known secret replaced in their values."""
        if not self.secrets:
            return pairs
        return [(name, self._known(value)) for name, value in pairs]

    def _known(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
