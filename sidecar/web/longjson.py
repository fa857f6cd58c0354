"""Parsing a JSON body once: long strings decoded from their bytes, and a body of them held once.

A request body can be a 10 MB data: URI inside a few bytes of JSON (OCR, a pasted document). Scanning it
character by character costs ~5 ms, and keeping both the received buffer and the parsed string doubles
what a worker holds while Mistral answers; here each long string is decoded straight from its bytes, and
a large body made mostly of them is forwarded spliced back from those strings (``Spliced``), its buffer
dropped. Every other body is parsed whole, as ``json.loads`` would.
"""

from __future__ import annotations

import json

LONG_STRING = 64 * 1024  # a JSON string this long (a data: URI, a pasted document) is decoded, not scanned
LONG_WALK = 4096  # strings walked past to find the long ones before the body is scanned whole instead
SPLICE_FROM = 1024 * 1024  # a body this large, at least half long strings, is held as Spliced


class DuplicateKey(ValueError):
    """A JSON object names one key twice: parsers disagree on which value wins (Python keeps the
    last, others the first), so the sidecar's checks and Mistral could read different bodies."""


def unique_keys(pairs: list) -> dict:
    """``object_pairs_hook`` for every body: one C-level ``dict`` plus a length check per object."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _value in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def loads(text):
    return json.loads(text, object_pairs_hook=unique_keys)


SCAN = object()  # loads_long's "scan the whole text instead"


def loads_long(raw):
    """The value of a body whose long strings are decoded straight from their bytes, or ``SCAN``."""
    parsed = parse_long(raw)
    return parsed if parsed is SCAN else parsed[0]


def parse_long(raw, splice_from: int = SPLICE_FROM):
    """(value, its ``Spliced`` bytes or None) of a body with long strings, or ``SCAN``.

    The JSON scanner reads a 10 MB data: URI character by character (~5 ms) into a second 10 MB string
    after the decode of the whole body: here each long string without a backslash stands as the
    constant ``NaN`` in the text it reads, and ``parse_constant`` hands back the string's UTF-8 text.
    Anything unusual (the body's own NaN or Infinity, a malformed body, bad UTF-8) is ``SCAN``, so the
    whole-text path gives its usual answer. Raw control characters inside a long string are not refused
    here (JSON forbids them, lenient parsers read them as text): Mistral judges those. When the long
    strings are most of the body, the body is also returned as ``Spliced``, so its buffer can go.
    """
    spans = long_strings(raw)
    if not spans:
        return SCAN
    around, at, last = [], 0, len(spans)  # the bytes before, between and after the long strings, quotes too
    try:
        with memoryview(raw) as view:
            for start, end in spans:
                around.append(bytes(view[at:start]))
                at = end
            around.append(bytes(view[at:]))
            text = b"NaN".join(piece[1 if i else 0:-1 if i < last else None] for i, piece in enumerate(around)).decode()
            if text.count("NaN") != last or "Infinity" in text:
                return SCAN  # before decoding the long strings: the whole text is scanned instead
            strings = [str(view[start:end], "utf-8") for start, end in spans]
        values = iter(strings)
        value = json.loads(text, object_pairs_hook=unique_keys, parse_constant=lambda _constant: next(values))
    except DuplicateKey:
        raise
    except (ValueError, RecursionError):  # UnicodeDecodeError is one
        return SCAN
    if len(raw) < splice_from or sum(end - start for start, end in spans) * 2 < len(raw):
        return value, None
    segments = [around[0]]
    for string, piece in zip(strings, around[1:], strict=True):
        segments += (string, piece)
    return value, Spliced(segments, len(raw))


class Spliced:
    """A JSON body's bytes as the client sent them, kept as its long strings (the very ``str`` objects of
    the parsed value) between the bytes around them, so a 10 MB data: URI is held once, not as a buffer
    and a string. Read back, file-like and rewindable, in slices of at most ``SLICE`` bytes: a long
    string has no backslash and was decoded strictly, so its UTF-8 is exactly the bytes it came from.
    """

    __slots__ = ("_segments", "_at", "_offset", "_pending", "size")
    SLICE = 128 * 1024  # a slice and its encoding stay in a core's L2: 256 KiB and more measured slower

    def __init__(self, segments: list, size: int):
        self._segments, self.size = segments, size
        self.seek(0)

    def __len__(self) -> int:
        return self.size

    def seek(self, position: int, whence: int = 0) -> int:
        if position != 0 or whence != 0:
            raise OSError("a spliced body rewinds to its start only")
        self._at = self._offset = 0
        self._pending = b""  # encoded bytes of a character slice beyond the last read's size
        return 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(self.SLICE), b""))
        if size == 0:
            return b""
        chunk = self._pending or self._next(min(size, self.SLICE))
        self._pending = chunk[size:]
        return chunk[:size] if self._pending else chunk

    def _next(self, size: int) -> bytes:
        while self._at < len(self._segments):
            segment, start = self._segments[self._at], self._offset
            step = size if not isinstance(segment, str) or segment.isascii() else max(1, size // 4)
            chunk = segment[start:start + step]
            if chunk:
                self._offset += len(chunk)
                return chunk.encode("utf-8") if isinstance(chunk, str) else chunk
            self._at, self._offset = self._at + 1, 0
        return b""


def long_strings(raw) -> list[tuple[int, int]]:
    """Where the string literals of at least ``LONG_STRING`` bytes without a backslash are (quotes
    excluded), walking from quote to quote: outside a string, a quote can only open one.

    The walk runs only when some aligned half-``LONG_STRING`` window holds no quote at all (a few
    hundred ``find`` calls on a 10 MB body), and gives up after ``LONG_WALK`` strings.
    """
    find, size, half = raw.find, len(raw), LONG_STRING // 2
    if size <= LONG_STRING or all(find(b'"', at, at + half) != -1 for at in range(0, size - half + 1, half)):
        return []
    spans, opened = [], find(b'"')
    for _ in range(LONG_WALK):
        if opened == -1:
            return spans
        closed = find(b'"', opened + 1)
        while closed != -1 and _escaped(raw, closed):
            closed = find(b'"', closed + 1)
        if closed == -1:
            return []
        if closed - opened > LONG_STRING and find(b"\\", opened + 1, closed) == -1:
            spans.append((opened + 1, closed))
        opened = find(b'"', closed + 1)
    return []


def _escaped(raw, quote: int) -> bool:
    """Whether the quote at ``quote`` (inside a string) is escaped: an odd run of backslashes before it."""
    at = quote - 1
    while raw[at] == 0x5C:
        at -= 1
    return (quote - 1 - at) % 2 == 1
