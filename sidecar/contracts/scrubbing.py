"""Scrubbing: no secret reaches a recorded contract, not even one an upstream streams in small pieces.

Pure (no Flask, no requests). A stream is scrubbed channel by channel: each string field that recurs from
event to event (``choices[0].delta.content``, a tool call's ``arguments``, plain ``data``) is joined across
the events, scrubbed as one text, and split back at the same places, so a key sent three characters per
event is found and replaced as surely as one sent whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SCRUBBED = "<scrubbed>"
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "set-cookie", "proxy-authorization"})
# The shape of every virtual key the sidecar generates (``keys.new_key``: "sk-" and token_urlsafe(32)); the
# store keeps only their hashes, so a key the sidecar issued is recognised by its shape.
VIRTUAL_KEY = r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"


def secret_pattern(secrets: Iterable[str]) -> re.Pattern:
    """One regex for every secret given (longest first) and for the shape of a virtual key."""
    literal = sorted({s for s in secrets if s}, key=len, reverse=True)
    return re.compile("|".join([*(re.escape(s) for s in literal), VIRTUAL_KEY]))


def scrub(value, secrets: Iterable[str] | re.Pattern):
    """Replace every secret anywhere in a JSON-like value (keys and strings) with ``<scrubbed>``."""
    pattern = secrets if isinstance(secrets, re.Pattern) else secret_pattern(secrets)
    return _scrub(value, pattern)


def _scrub(value, pattern: re.Pattern):
    if isinstance(value, str):
        return pattern.sub(SCRUBBED, value)
    if isinstance(value, dict):
        return {_scrub(k, pattern): _scrub(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, pattern) for v in value]
    return value


def scrub_headers(headers: dict, secrets: Iterable[str] | re.Pattern) -> dict:
    """Headers safe to write: credentials and cookies dropped, any other value holding a secret scrubbed."""
    kept = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
    return scrub(kept, secrets)


def resplit(segments: list[str], pattern: re.Pattern) -> list[str]:
    """Scrub the joined text of ``segments`` and cut it back at the same places: each secret becomes one
    ``<scrubbed>`` in the segment where it started, and its other characters leave the segments after."""
    joined = "".join(segments)
    spans = [found.span() for found in pattern.finditer(joined)]
    if not spans:
        return list(segments)
    out, start = [], 0
    for segment in segments:
        end = start + len(segment)
        pieces, pos = [], start
        for a, b in spans:
            if b <= pos or a >= end:
                continue
            if a >= pos:
                pieces += [joined[pos:a], SCRUBBED]
            pos = min(b, end)
        pieces.append(joined[pos:end])
        out.append("".join(pieces))
        start = end
    return out


def _string_leaves(node, path: tuple, found: list) -> None:
    if isinstance(node, str):
        found.append(path)
    elif isinstance(node, dict):
        for key, value in node.items():
            _string_leaves(value, (*path, key), found)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _string_leaves(value, (*path, i), found)


def _get(node, path: tuple):
    for part in path:
        node = node[part]
    return node


def _set(node, path: tuple, value) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def scrub_events(events: list[dict], secrets: Iterable[str] | re.Pattern) -> list[dict]:
    """A recorded stream with every secret replaced, including secrets split across any number of events."""
    pattern = secrets if isinstance(secrets, re.Pattern) else secret_pattern(secrets)
    events = [_scrub_copy(event) for event in events]
    channels: dict[tuple, list[tuple[int, tuple]]] = {}
    for i, event in enumerate(events):
        leaves: list[tuple] = []
        _string_leaves(event.get("data"), ("data",), leaves)
        for path in leaves:
            channels.setdefault(path, []).append((i, path))
    for places in channels.values():
        texts = resplit([_get(events[i], path) for i, path in places], pattern)
        for (i, path), text in zip(places, texts, strict=True):
            _set(events[i], path, text)
    return [_scrub(event, pattern) for event in events]


def _scrub_copy(node):
    """A deep copy of an event (JSON-like), so scrubbing never changes what the caller holds."""
    if isinstance(node, dict):
        return {k: _scrub_copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub_copy(v) for v in node]
    return node
