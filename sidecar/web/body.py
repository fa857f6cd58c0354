"""Reading request bodies within limits: JSON read and parsed once, multipart spooled and scanned.

Limits are checked against Content-Length before a byte is read, and again while reading (for
chunked bodies), so an oversized body gets 413 without being held whole in memory.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected
from werkzeug.http import parse_options_header

from sidecar.core.errors import (
    BadRequest,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from sidecar.core.validation import SMALL_FIELD
from sidecar.multipart import PartScan
from sidecar.worker import read_body

from .longjson import SCAN, DuplicateKey, Spliced, loads, loads_long, parse_long

CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024
REPAIR_LIMIT = 1024 * 1024
FORM_LIMIT = 1024 * 1024  # an url-encoded form holds text fields only (a file goes as multipart)
# A JSON string, or a comma whose next non-blank character closes an object or array.
_STRING_OR_TRAILING_COMMA = re.compile(r'"(?:\\.|[^"\\])*"|,(\s*[}\]])')


@dataclass(slots=True)
class Body:
    """A request body as the pipeline forwards it: raw bytes or a spooled file, plus what was parsed."""

    raw: bytes | bytearray | None = None  # a bytearray when received straight from the socket (worker.read_body)
    file: object | None = None  # spooled multipart body
    spliced: Spliced | None = None  # a JSON body mostly of long strings, held as its parsed strings (no ``raw``)
    size: int = 0
    json: object = None
    parts: frozenset[str] = frozenset()
    fields: dict | None = None  # small multipart text fields
    edited: bool = False  # a step changed ``json``: forward it re-serialised, not the bytes as sent

    def edit_json(self, name: str, value) -> None:
        self.json[name] = value
        self.edited = True

    @property
    def payload(self):
        """What is forwarded: the spooled file, the edited JSON, or the bytes as the client sent them."""
        if self.file is not None:
            self.file.seek(0)
            return self.file
        if self.edited:
            return json.dumps(self.json).encode()
        if self.spliced is not None:
            self.spliced.seek(0)
            return self.spliced
        return self.raw

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _duplicate(exc: DuplicateKey) -> BadRequest:
    return BadRequest(f"Malformed JSON body: the key '{str(exc)[:100]}' appears twice in one object.",
                      code="duplicate_json_key")


def loads_lenient(raw: bytes):
    """A pass-through body's JSON, to learn its model: None when it is not JSON (relayed as sent),
    but a key given twice is refused, since the allowlist and the target could read different models."""
    try:
        if _blank(raw):
            return None
        value = loads_long(raw)
        return loads(raw) if value is SCAN else value
    except DuplicateKey as exc:
        raise _duplicate(exc) from None
    except (ValueError, RecursionError):
        return None


def read_some(request, size: int) -> bytes:
    """Up to ``size`` bytes of the client's body; the server's framing errors become the client's 4xx.

    gunicorn raises its parse errors (a bad chunk size, a missing chunk terminator, bad trailers) and
    ``NoMoreData`` (the client left mid-body) from ``wsgi.input``, werkzeug ``ClientDisconnected`` (a
    body shorter than its Content-Length), the worker ``TimeoutError`` (a body that stopped arriving:
    ``sidecar/worker.py``). None of them is the sidecar's fault, and none may become a 500.
    """
    return _framed(request.stream.read, size)


def read_exactly(request, length: int) -> bytes | bytearray:
    """A body of known ``length`` in one buffer: under the sidecar's worker received straight into it
    (``worker.read_body``), elsewhere read from the server's ``wsgi.input`` in one call.

    Not werkzeug's ``request.stream``, which reads through ``RawIOBase.read``: a zeroed buffer of the
    whole length, a copy into it and a copy out of it. The server bounds ``wsgi.input`` by
    Content-Length itself (PEP 3333), so only a short body is left to check, and that is the same 400
    werkzeug's ``ClientDisconnected`` becomes.
    """
    stream = request.environ["wsgi.input"]
    raw = _framed(lambda size: read_body(stream, size), length)
    if raw is None:
        raw = _framed(stream.read, length)
    if len(raw) != length:
        raise BadRequest("Malformed request body framing: the body ended before it was complete.",
                         code="invalid_body_framing")
    return raw


def _framed(read, size: int) -> bytes:
    try:
        return read(size)
    except TimeoutError:
        raise RequestTimeout("The request body stopped arriving before it was complete.") from None
    except (ParseException, ClientDisconnected, OSError) as exc:
        raise BadRequest(f"Malformed request body framing: {_framing_reason(exc)}.", code="invalid_body_framing") from None


def _framing_reason(exc: Exception) -> str:
    if isinstance(exc, (ClientDisconnected, OSError)):
        return "the body ended before it was complete"
    return type(exc).__name__  # InvalidChunkSize, ChunkMissingTerminator...: never the client's bytes


def _blank(raw) -> bool:
    """Empty or only whitespace, without ``strip()``, which copies a bytearray whole."""
    return not raw or raw.isspace()


def _check_length(request, limit: int) -> None:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Request body of {length} bytes exceeds the limit of {limit} bytes.")


def read_bytes(request, limit: int) -> bytes | bytearray:
    """The whole body in memory, 413 past ``limit``.

    With a length, read just that; without (chunked), read in chunks: ``read(limit + 1)`` on
    werkzeug's LimitedStream allocates (and zeroes) a buffer of the whole limit, 32 MiB by default.
    """
    _check_length(request, limit)
    length = request.content_length
    if length is not None:
        return read_exactly(request, length)
    raw = bytearray()
    while chunk := read_some(request, CHUNK):
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
    return bytes(raw)


def read_json(request, limit: int, required: bool) -> Body:
    """Read and parse a JSON body; malformed JSON is a 400, a missing required body a 422."""
    mimetype = request.mimetype
    raw = read_bytes(request, limit)
    if _blank(raw):
        if required:
            raise InvalidRequest([{"loc": ["body"], "msg": "Field required", "type": "missing"}])
        return Body(raw=None)
    # text/plain too: it is what a cross-site "simple" request from a web page would send (see web/guard.py).
    if mimetype and "json" not in mimetype:
        raise UnsupportedMediaType(f"Expected a JSON body (Content-Type: application/json), got '{mimetype}'.")
    try:
        parsed = parse_long(raw)
    except DuplicateKey as exc:
        raise _duplicate(exc) from None
    if parsed is not SCAN:
        value, spliced = parsed
        return Body(raw=raw if spliced is None else None, spliced=spliced, size=len(raw), json=value)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Request body is not valid UTF-8.", code="invalid_utf8") from None
    try:
        return Body(raw=raw, size=len(raw), json=loads(text))
    except DuplicateKey as exc:
        raise _duplicate(exc) from None
    except (ValueError, RecursionError) as exc:
        repaired = _without_trailing_commas(text)
        if repaired is None:
            raise BadRequest(f"Malformed JSON body: {_json_reason(exc)}", code="invalid_json") from None
        return Body(size=len(raw), json=repaired, edited=True)


def _without_trailing_commas(text: str):
    """Parse JSON whose only fault is trailing commas (``{"a": 1,}``), as in hand-written curl
    examples such as LiteLLM's; anything else stays malformed. Returns the value or None."""
    if len(text) > REPAIR_LIMIT:
        return None
    fixed = _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(0), text)
    if fixed == text:
        return None
    try:
        return loads(fixed)
    except DuplicateKey as exc:
        raise _duplicate(exc) from None
    except (ValueError, RecursionError):
        return None


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "nesting too deep" if isinstance(exc, RecursionError) else "not JSON"


def spool(request, limit: int, on_chunk=None) -> tuple[tempfile.SpooledTemporaryFile, int]:
    """The body spooled (memory up to 1 MiB, then disk) within ``limit``, each chunk also given to
    ``on_chunk``; returns the file and its size. The file is closed if anything fails."""
    _check_length(request, limit)
    file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    try:
        while chunk := read_some(request, CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            file.write(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    except BaseException:
        file.close()
        raise
    return file, size


def read_multipart(request, limit: int) -> Body:
    """Spool a multipart body and note its part names and small text fields."""
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary")
    if mimetype == "application/x-www-form-urlencoded":  # the SDK's transcription by file_url: fields, no file
        raw = read_bytes(request, min(limit, FORM_LIMIT))
        try:
            fields = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw.strip())))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("Malformed form body.", code="invalid_form") from None
        return Body(raw=raw or None, size=len(raw), parts=frozenset(fields), fields=fields)
    if mimetype != "multipart/form-data" or not boundary:
        raise UnsupportedMediaType("Expected a multipart/form-data body with a boundary "
                                   "(or application/x-www-form-urlencoded fields).")
    scan = PartScan(boundary, SMALL_FIELD)
    try:
        file, size = spool(request, limit, scan.feed)
    except ValueError as exc:
        raise BadRequest(f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    try:
        scan.feed(None)
    except ValueError as exc:
        file.close()
        raise BadRequest(f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    return Body(file=file, size=size, parts=frozenset(scan.names), fields=scan.fields)


def read_unchecked(request, json_limit: int, upload_limit: int) -> Body:
    """A pass-through body: JSON read whole (its model is accounted), parsed if it parses, else relayed
    as sent; anything else spooled. Nothing is refused for its content: the target judges it."""
    if request.mimetype and "json" in request.mimetype:
        raw = read_bytes(request, json_limit)
        return Body(raw=raw or None, size=len(raw), json=loads_lenient(raw))  # a key given twice: 400
    file, size = spool(request, upload_limit)
    if not size:
        file.close()
        return Body()
    return Body(file=file, size=size)
