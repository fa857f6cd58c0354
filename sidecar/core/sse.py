"""Incremental Server-Sent Events framing: upstream bytes in, complete events out.

The relay forwards every chunk untouched; this module only *watches* the stream, so it holds
at most one partial event and never the stream itself (memory per stream stays constant).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from sidecar.core import estimate
from sidecar.core import usage as usage_mod

DONE = "[DONE]"

_LF2, _CRLF2, _CR2 = b"\n\n", b"\r\n\r\n", b"\r\r"
_TERMINATORS = (_LF2, _CRLF2, _CR2)


class Event(NamedTuple):
    """One dispatched SSE event; ``data`` joins several ``data:`` lines with ``\\n``."""

    event: str | None
    data: str
    id: str | None


class EventSplitter:
    """Cuts a byte stream into raw event blocks as soon as each block's blank line arrives.

    Blocks end with ``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r`` (what the Mistral SDKs accept);
    a terminator may straddle two chunks, so the unterminated tail is kept until the next feed.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._tail + chunk if self._tail else chunk
        term = _only_terminator(data)
        if term is None:
            blocks, self._tail = _split_mixed(data)
            return blocks
        # One framing in this data (the usual case): one C-level split, no Python loop over events.
        blocks = data.split(term)
        self._tail = blocks.pop()
        return blocks

    def close(self) -> bytes | None:
        """The unterminated trailing block, if the stream ended without its blank line."""
        tail, self._tail = self._tail, b""
        return tail if tail.strip(b"\r\n") else None

    @property
    def tail(self) -> bytes:
        """The bytes held back waiting for a terminator (at most one partial event)."""
        return self._tail


def _only_terminator(data: bytes) -> bytes | None:
    """The one terminator that can occur in ``data``, or None if several kinds could."""
    if b"\r" not in data:
        return _LF2
    if b"\n" not in data:
        return _CR2
    if _LF2 not in data and _CR2 not in data:
        return _CRLF2
    return None


def _split_mixed(data: bytes) -> tuple[list[bytes], bytes]:
    """Split on whichever of the three terminators comes first, repeatedly (CR or CRLF framing)."""
    blocks: list[bytes] = []
    pos = 0
    found = [data.find(term) for term in _TERMINATORS]
    while True:
        hits = [(at, len(term)) for at, term in zip(found, _TERMINATORS, strict=True) if at >= 0]
        if not hits:
            return blocks, data[pos:]
        at, size = min(hits)
        blocks.append(data[pos:at])
        pos = at + size
        # Only terminators that were consumed or overlapped need searching again.
        found = [f if f < 0 or f >= pos else data.find(term, pos)
                 for f, term in zip(found, _TERMINATORS, strict=True)]


def parse_event(raw: bytes) -> Event:
    """Parse one raw block per the SSE spec: fields ``event``, ``data``, ``id``; ``:`` lines are comments."""
    if raw.startswith(b"data:") and b"\n" not in raw and b"\r" not in raw:
        value = raw[5:]  # fast path: Mistral's chat chunks are a single data line
        if value.startswith(b" "):
            value = value[1:]
        return Event(None, value.decode("utf-8", "replace"), None)
    event = id_ = None
    data: list[str] = []
    for line in raw.splitlines():
        if not line or line.startswith(b":"):
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            id_ = value.decode("utf-8", "replace")
    return Event(event, "\n".join(data), id_)


def error_event(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """The data-only event sent when an upstream stream breaks: SDKs parse it as a JSON error body."""
    body = {"object": "error", "message": message, "type": type, "param": None, "code": code}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class UsageWatcher:
    """Per-stream meter for the relay: ``feed`` every chunk, read ``usage`` when the stream ends.

    Only the latest usage-bearing event is kept (as a ``Usage``), and ``json.loads`` runs only on
    blocks that contain ``b"usage"``, so a stream of token deltas costs one split per chunk. For a
    stream cut before its usage event, ``estimate`` counts what was relayed: the first events that
    carry text are parsed to learn the size of an event's envelope, later ones only add their length.
    """

    __slots__ = ("kind", "request_json", "_splitter", "_usage", "_bytes", "_events", "_samples", "_text",
                 "_envelope")

    SAMPLES = 3  # events parsed to learn the envelope (the first one also carries the role)

    def __init__(self, kind: str, request_json: object = None) -> None:
        self.kind = kind
        self.request_json = request_json if isinstance(request_json, dict) else None
        self._splitter = EventSplitter()
        self._usage: usage_mod.Usage | None = None
        self._bytes = self._events = self._samples = self._text = 0  # unsampled events: bytes and count
        self._envelope: int | None = None

    def feed(self, chunk: bytes) -> None:
        for raw in self._splitter.feed(chunk):
            if b"usage" in raw:
                self._usage = self._read(raw) or self._usage
            elif self._samples < self.SAMPLES:
                self._sample(raw)
            else:
                self._bytes += len(raw)
                self._events += 1

    def _read(self, raw: bytes) -> usage_mod.Usage | None:
        event, payload = self._payload(raw)
        if payload is None:
            return None
        return usage_mod.from_event(self.kind, payload, event.event, self.request_json)

    @staticmethod
    def _payload(raw: bytes) -> tuple[Event, dict | None]:
        event = parse_event(raw)
        if event.data == DONE:
            return event, None
        try:
            payload = json.loads(event.data)
        except ValueError:
            return event, None  # a malformed event is the client's to see, never a reason to crash accounting
        return event, (payload if isinstance(payload, dict) else None)

    def _sample(self, raw: bytes) -> None:
        """Count one event's text exactly and learn the smallest envelope (bytes that are not text)."""
        self._samples += 1
        _event, payload = self._payload(raw)
        if payload is None:
            return
        text = _generated_text(payload)
        self._text += text
        envelope = len(raw) - text
        if text and (self._envelope is None or envelope < self._envelope):
            self._envelope = envelope

    @property
    def usage(self) -> usage_mod.Usage | None:
        """Usage seen so far (an unterminated last event counts too), else what the request implies."""
        found = self._usage
        tail = self._splitter.tail
        if b"usage" in tail:
            found = self._read(tail) or found
        if found is None:
            return usage_mod.from_request(self.kind, self.request_json)
        return found

    def estimate(self) -> usage_mod.Usage:
        """Tokens of a stream that ended without its usage: the prompt from the request, the completion
        from the text relayed so far (``estimated=True``: the sidecar counted it, Mistral did not say)."""
        envelope = self._envelope if self._envelope is not None else 0
        unsampled = max(0, self._bytes - envelope * self._events) if self._envelope is not None else 0
        prompt = estimate.prompt_tokens(self.request_json)
        completion = estimate.completion_tokens(self._text + unsampled)
        return usage_mod.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                               estimated=True)


def _generated_text(payload: dict) -> int:
    """Characters of generated text in one event: chat/FIM/agents deltas, conversation output deltas."""
    choices = payload.get("choices")
    if isinstance(choices, list):
        return sum(estimate.text_chars(choice.get("delta")) for choice in choices if isinstance(choice, dict))
    if "content" in payload:
        return estimate.text_chars(payload.get("content"))
    return 0
