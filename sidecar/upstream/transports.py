"""Replay and record transports: ``requests`` adapters over ``contracts/``, mounted by ``Upstream``.

The pipeline never knows which transport answers: ``ReplayAdapter`` builds responses from contracts
(streams as one chunk per event), ``RecordAdapter`` wraps the real ``HTTPAdapter`` and tees each answer
into a contract file as it passes, without holding back the client's stream.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import urllib3
from requests.adapters import HTTPAdapter
from werkzeug.http import parse_options_header

from sidecar.clock import SYSTEM, Clock
from sidecar.contracts import fileformat, scrubbing
from sidecar.contracts.checking import check_directory
from sidecar.contracts.fileformat import Asked, Contract
from sidecar.contracts.matching import ContractIndex
from sidecar.contracts.responder import Responder
from sidecar.core import sse
from sidecar.core.errors import NoContract
from sidecar.core.spec import Spec
from sidecar.multipart import PartScan
from sidecar.settings import DEFAULT_CONTRACTS
from sidecar.upstream.client import PooledAdapter, upstream_chunks

log = logging.getLogger("sidecar.upstream.transports")
MAX_RECORDED_BODY = 8 * 1024 * 1024
RECORDED_HEADERS = ("content-type", "mistral-correlation-id", "retry-after", "x-model-deprecation-timestamp")
FORM_FIELD_LIMIT = 4096


class ChunkStream(io.BufferedIOBase):
    """A file-like body over an iterator of chunks: each ``read1`` returns at most one chunk, as it arrives."""

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None] | None = None):
        self._chunks = chunks
        self._left = b""
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            out, self._left = self._left + b"".join(self._chunks), b""
            return out
        if not self._left:
            self._left = next(self._chunks, b"")
        out, self._left = self._left[:size], self._left[size:]
        return out

    read1 = read

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            if self._on_close is not None:
                self._on_close()
        super().close()


def raw_response(request, status: int, headers: dict, body: io.BufferedIOBase) -> urllib3.HTTPResponse:
    """A urllib3 response over ``body`` that ``relay.upstream_chunks`` and ``Response.content`` both read."""
    return urllib3.HTTPResponse(body=body, headers=headers, status=status, preload_content=False,
                                decode_content=True, request_method=request.method, request_url=request.url)


# -- what a prepared request asks -----------------------------------------------------------------------

def asked_from(request) -> Asked:
    """Reduce a ``requests.PreparedRequest`` to the features contracts match on."""
    ctype, options = parse_options_header(request.headers.get("Content-Type", ""))
    headers = {k.lower(): v for k, v in request.headers.items()}
    body = request.body
    features: dict = {"headers": headers}
    if ctype == "multipart/form-data" and options.get("boundary") and body is not None:
        features["form"] = form_fields(body, options["boundary"])
    elif ctype == "application/x-www-form-urlencoded" and body:
        features["form"] = dict(parse_qsl(_bytes_of(body).decode("utf-8", "replace"), keep_blank_values=True))
    elif body:
        raw = _bytes_of(body, files="json" in ctype)  # a spliced JSON body; never a spooled upload read whole
        try:
            features["json"] = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            features["json"] = None
    return Asked.from_url(request.method, request.url, **features)


def _bytes_of(body, files: bool = False) -> bytes | bytearray:
    """A request body's bytes: as given, encoded, or (with ``files``) read from a file-like one, rewound after."""
    if isinstance(body, (bytes, bytearray)):
        return body
    if isinstance(body, str):
        return body.encode()
    if files and hasattr(body, "read"):
        body.seek(0)
        data = body.read()
        body.seek(0)
        return data
    return b""


def form_fields(body, boundary: str) -> dict:
    """Text fields of a multipart body (file parts as ``<file NAME>``); a file body is rewound after."""
    scan = PartScan(boundary, FORM_FIELD_LIMIT, lambda part: f"<file {part.filename or ''}>".replace(" >", ">"))
    chunks = [body] if isinstance(body, (bytes, bytearray)) else iter(lambda: body.read(64 * 1024), b"")
    for chunk in [*chunks, None]:
        scan.feed(chunk)
    if hasattr(body, "seek"):
        body.seek(0)
    return scan.fields


# -- replay --------------------------------------------------------------------------------------------

class ReplayAdapter(HTTPAdapter):
    """Answers every request from the contract index; no socket is ever opened.

    Streams keep their recorded pace: each event waits its recorded ``delay`` divided by ``speed`` (0: all at
    once). Generic answers (and shipped fallbacks) go through the responder; matched ones are served as written.
    """

    def __init__(self, index: ContractIndex, *, speed: float = 1.0, clock: Clock = SYSTEM,
                 responder: Responder | None = None):
        super().__init__(max_retries=0)
        self.index = index
        self.speed = speed
        self.clock = clock
        self.responder = responder or Responder()

    @classmethod
    def from_directory(cls, directory: Path | str, spec: Spec, *, strict: bool = False,
                       fallback: Path | str | None = None, speed: float = 1.0, clock: Clock = SYSTEM) -> ReplayAdapter:
        """Load and check ``directory`` (``ContractError`` naming every problem), with an optional fallback."""
        spare = ContractIndex(spec, check_directory(fallback, spec), Path(fallback)) if fallback else None
        index = ContractIndex(spec, check_directory(directory, spec), Path(directory), strict=strict, fallback=spare)
        return cls(index, speed=speed, clock=clock)

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        asked = asked_from(request)
        contract, how = self.index.answer(asked)  # NoContract (501) when none applies
        headers = {k: str(v) for k, v in (contract.response.get("headers") or {}).items()
                   if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")}
        if contract.content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = contract.content_type
        label = f"{contract.operation}: {contract.name}"
        headers["x-sidecar-contract"] = _header_safe(f"fallback (shipped) {label}" if how == "fallback" else label)
        fitted = how in ("generic", "fallback")
        params = (self.index.route(asked.method, asked.path) or (None, {}))[1]
        if contract.streams:
            events = contract.events()
            if fitted:
                events = self.responder.fit_events(events, asked, params)
            body = ChunkStream(self._paced(events, contract.response.get("cut", False)))
        else:
            content = contract.body()
            if fitted and "json" in contract.response:
                content = json.dumps(self.responder.fit_json(contract.response["json"], asked, params),
                                     ensure_ascii=False).encode()
            headers["Content-Length"] = str(len(content))
            body = ChunkStream(iter((content,)))
        return self.build_response(request, raw_response(request, contract.status, headers, body))

    def _paced(self, events: list[dict], cut: bool) -> Iterator[bytes]:
        """The events as recorded, each after its delay; a ``cut`` stream then breaks as a dropped connection."""
        start, due = self.clock.monotonic(), 0.0
        for delay, chunk in fileformat.chunks(events):
            if delay and self.speed:  # waits until each event's due time, so lag between events never adds up
                due += delay / self.speed
                wait = due - (self.clock.monotonic() - start)
                if wait > 0:
                    self.clock.sleep(wait)
            yield chunk
        if cut:
            raise urllib3.exceptions.ProtocolError("replayed cut: the connection was dropped mid-stream")

    def close(self) -> None:
        super().close()


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:200]


# -- record --------------------------------------------------------------------------------------------

class RecordAdapter(HTTPAdapter):
    """Sends through the real adapter and writes each new exchange, scrubbed, into the contracts directory."""

    def __init__(self, writer: ContractWriter, inner: HTTPAdapter, first: ReplayAdapter | None = None,
                 clock: Clock = SYSTEM):
        super().__init__(max_retries=0)
        self.writer = writer
        self.inner = inner
        self.first = first
        self.clock = clock

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        if self.first is not None:
            try:
                return self.first.send(request, stream=stream, timeout=timeout)
            except NoContract:
                pass  # a new episode: forwarded and recorded below
        asked = asked_from(request)
        real = self.inner.send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        is_sse = "text/event-stream" in real.headers.get("Content-Type", "")
        tee = _Tee(self.writer, asked, real, is_sse, _request_secrets(request), self.clock)
        headers = {k: v for k, v in real.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")}
        body = ChunkStream(tee.chunks(), on_close=real.close)
        response = self.build_response(request, raw_response(request, real.status_code, headers, body))
        response.reason = real.reason
        return response

    def close(self) -> None:
        self.inner.close()
        if self.first is not None:
            self.first.close()
        super().close()


def _request_secrets(request) -> tuple[str, ...]:
    """Credentials on the outgoing request itself (the Mistral key of whichever target it goes to)."""
    found = []
    auth = request.headers.get("Authorization", "")
    if auth:
        found += [auth, auth.partition(" ")[2]]
    if request.headers.get("x-api-key"):
        found.append(request.headers["x-api-key"])
    return tuple(s for s in found if len(s) >= 8)


class _Tee:
    """Passes the upstream body on chunk by chunk and keeps a copy (events, or bytes) for the contract."""

    def __init__(self, writer: ContractWriter, asked: Asked, real, is_sse: bool, secrets: tuple[str, ...],
                 clock: Clock = SYSTEM):
        self.writer, self.asked, self.real, self.is_sse, self.secrets = writer, asked, real, is_sse, secrets
        self.clock = clock
        self.events: list[dict] = []
        self.body = bytearray()
        self.splitter = sse.EventSplitter()
        self.last = clock.monotonic()  # the request was just sent: the first event's delay counts from here

    def chunks(self) -> Iterator[bytes]:
        for chunk in upstream_chunks(self.real):
            self._keep(chunk)
            yield chunk
        self._finish()  # only reached when the whole body went through: a cut stream is not recorded

    def _keep(self, chunk: bytes) -> None:
        if self.is_sse:
            for block in self.splitter.feed(chunk):
                if block.strip():
                    now = self.clock.monotonic()
                    self.events.append({**fileformat.unframe(block), "delay": round(now - self.last, 3)})
                    self.last = now
        elif len(self.body) <= MAX_RECORDED_BODY:
            self.body += chunk

    def _finish(self) -> None:
        try:
            self.writer.write(self.asked, self.real, self._response_body(), self.secrets)
        except OSError:
            log.exception("could not record %s %s", self.asked.method, self.asked.path)

    def _response_body(self) -> dict:
        if self.is_sse:
            tail = self.splitter.close()
            return {"events": self.events + ([{**fileformat.unframe(tail), "delay": 0.0}] if tail else [])}
        if len(self.body) > MAX_RECORDED_BODY:
            return {"body": f"<{len(self.body)}+ bytes not recorded>"}
        if "json" in self.real.headers.get("Content-Type", ""):
            try:
                return {"json": json.loads(bytes(self.body).decode("utf-8"))} if self.body else {}
            except ValueError:
                pass
        try:
            return {"body": bytes(self.body).decode("utf-8")} if self.body else {}
        except UnicodeDecodeError:
            return {"body_base64": base64.b64encode(bytes(self.body)).decode()}


class ContractWriter:
    """Appends recorded exchanges to ``<dir>/<operationId>.yaml``; skips requests already on file, or with
    ``overwrite`` (vcrpy's ``all``) replaces them."""

    def __init__(self, directory: Path | str, spec: Spec, secrets: tuple[str, ...] = (), overwrite: bool = False):
        self.directory = Path(directory)
        self.index = ContractIndex(spec, ())
        self.secrets = tuple(secrets)
        self.overwrite = overwrite

    def write(self, asked: Asked, real, body: dict, request_secrets: tuple[str, ...] = ()) -> Path | None:
        found = self.index.route(asked.method, asked.path)
        if found is None:
            return None
        operation = found[0].endpoint.pick(asked.stream).id
        contract = self.contract(operation, asked, real, body, (*self.secrets, *request_secrets))
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{operation}.yaml"
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # gunicorn workers may record the same operation at once
            fh.seek(0)
            existing = fh.read()
            kept = [c for c in fileformat.load_file(path)] if existing else []
            same = [c for c in kept if c.recorded_request() == contract.recorded_request()]
            if same and not self.overwrite:
                return None
            if same:  # re-recording: the file is written again without the exchange this one replaces
                fh.seek(0)
                fh.truncate()
                existing = ""
                kept = [c for c in kept if c not in same]
            if not existing:
                fh.write(fileformat.dump({"operation": operation, "source": "recorded", "exchanges": []})
                         .replace("exchanges: []\n", "exchanges:\n"))
                fh.write(fileformat.dump([fileformat.exchange_document(c) for c in kept]) if kept else "")
            fh.write(fileformat.dump([fileformat.exchange_document(contract)]))
        return path

    @staticmethod
    def contract(operation: str, asked: Asked, real, body: dict, secrets: tuple[str, ...]) -> Contract:
        """The exchange as written: every secret scrubbed from the path, name, query, bodies and stream."""
        pattern = scrubbing.secret_pattern(secrets)
        request: dict = {"method": asked.method, "path": asked.path}
        if asked.query:
            request["query"] = {k: v[-1] if len(v) == 1 else v for k, v in asked.query.items()}
        if asked.json is not None:
            request["json"] = asked.json
        if asked.form:
            request["form"] = asked.form
        headers = {k: v for k, v in real.headers.items()
                   if k.lower() in RECORDED_HEADERS or k.lower().startswith("x-ratelimit-")}
        if "events" in body:
            body = {"events": scrubbing.scrub_events(body["events"], pattern)}
        response = {"status": real.status_code, "headers": scrubbing.scrub_headers(headers, pattern),
                    **scrubbing.scrub(body, pattern)}
        name = f"recorded {asked.method} {asked.path}" + (f" ({asked.model})" if asked.model else "")
        return Contract(operation, scrubbing.scrub(name, pattern), "recorded", scrubbing.scrub(request, pattern),
                        response)


# -- choosing the transport ----------------------------------------------------------------------------

def replay_adapter(settings, spec: Spec, clock: Clock = SYSTEM) -> ReplayAdapter:
    """Replay ``settings.contracts_dir``: strict unless it is the shipped directory, with the shipped contracts
    behind it when ``contracts_fallback`` is ``shipped``."""
    shipped = Path(DEFAULT_CONTRACTS).resolve()
    own = Path(settings.contracts_dir).resolve() != shipped
    fallback = shipped if own and settings.contracts_fallback == "shipped" else None
    return ReplayAdapter.from_directory(settings.contracts_dir, spec, strict=own, fallback=fallback,
                                        speed=settings.replay_speed, clock=clock)


def record_adapter(settings, spec: Spec, *, overwrite: bool = False, replay_first: bool = False,
                   clock: Clock = SYSTEM) -> RecordAdapter:
    """Forward to Mistral and record; ``replay_first`` answers what is on file first (vcrpy's ``new_episodes``)."""
    real = PooledAdapter.for_settings(settings)
    first = replay_adapter(settings, spec, clock) if replay_first else None
    writer = ContractWriter(settings.contracts_dir, spec, settings.secrets(), overwrite)
    return RecordAdapter(writer, real, first, clock)


def adapter_for(settings, spec: Spec, clock: Clock = SYSTEM) -> HTTPAdapter:
    """The transport for ``settings.upstream_mode``: the real one, replay or record."""
    if settings.upstream_mode == "replay":
        return replay_adapter(settings, spec, clock)
    if settings.upstream_mode == "record":
        return record_adapter(settings, spec, clock=clock)
    return PooledAdapter.for_settings(settings)
