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

import urllib3
from requests.adapters import HTTPAdapter
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder

from sidecar.contracts import index as contracts
from sidecar.contracts.index import Asked, Contract, ContractIndex
from sidecar.core import sse
from sidecar.core.spec import Spec
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
    elif body:
        raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else b""
        try:
            features["json"] = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            features["json"] = None
    return Asked.from_url(request.method, request.url, **features)


def form_fields(body, boundary: str) -> dict:
    """Text fields of a multipart body (file parts as ``<file NAME>``); a file body is rewound after."""
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_form_memory_size=None)
    fields: dict[str, str] = {}
    current, value = None, bytearray()
    chunks = [body] if isinstance(body, bytes) else iter(lambda: body.read(64 * 1024), b"")
    for chunk in [*chunks, None]:
        decoder.receive_data(chunk)
        while (event := decoder.next_event()) is not None and event.__class__.__name__ != "NeedData":
            if isinstance(event, File):
                fields[event.name] = f"<file {event.filename or ''}>".replace(" >", ">")
                current = None
            elif isinstance(event, Field):
                current, value = event.name, bytearray()
            elif isinstance(event, Data) and current is not None:
                value += event.data[: FORM_FIELD_LIMIT - len(value)]
                if not event.more_data:
                    fields[current] = value.decode("utf-8", "replace")
                    current = None
            elif isinstance(event, Epilogue):
                break
    if hasattr(body, "seek"):
        body.seek(0)
    return fields


# -- replay --------------------------------------------------------------------------------------------

class ReplayAdapter(HTTPAdapter):
    """Answers every request from the contract index; no socket is ever opened."""

    def __init__(self, index: ContractIndex):
        super().__init__(max_retries=0)
        self.index = index

    @classmethod
    def from_directory(cls, directory: Path | str, spec: Spec) -> ReplayAdapter:
        return cls(ContractIndex.load(directory, spec))

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        contract = self.index.answer(asked_from(request))  # NoContract (501) when none applies
        headers = {k: str(v) for k, v in (contract.response.get("headers") or {}).items()
                   if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")}
        if contract.content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = contract.content_type
        headers["x-sidecar-contract"] = _header_safe(f"{contract.operation}: {contract.name}")
        if contract.streams:
            body = ChunkStream(contract.chunks())
        else:
            content = contract.body()
            headers["Content-Length"] = str(len(content))
            body = ChunkStream(iter((content,)))
        return self.build_response(request, raw_response(request, contract.status, headers, body))

    def close(self) -> None:
        super().close()


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:200]


# -- record --------------------------------------------------------------------------------------------

class RecordAdapter(HTTPAdapter):
    """Sends through the real adapter and writes each new exchange, scrubbed, into the contracts directory."""

    def __init__(self, writer: ContractWriter, inner: HTTPAdapter):
        super().__init__(max_retries=0)
        self.writer = writer
        self.inner = inner

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        asked = asked_from(request)
        real = self.inner.send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        is_sse = "text/event-stream" in real.headers.get("Content-Type", "")
        tee = _Tee(self.writer, asked, real, is_sse, _request_secrets(request))
        headers = {k: v for k, v in real.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")}
        body = ChunkStream(tee.chunks(), on_close=real.close)
        response = self.build_response(request, raw_response(request, real.status_code, headers, body))
        response.reason = real.reason
        return response

    def close(self) -> None:
        self.inner.close()
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

    def __init__(self, writer: ContractWriter, asked: Asked, real, is_sse: bool, secrets: tuple[str, ...]):
        self.writer, self.asked, self.real, self.is_sse, self.secrets = writer, asked, real, is_sse, secrets
        self.events: list[dict] = []
        self.body = bytearray()
        self.splitter = sse.EventSplitter()

    def chunks(self) -> Iterator[bytes]:
        for chunk in upstream_chunks(self.real):
            self._keep(chunk)
            yield chunk
        self._finish()  # only reached when the whole body went through: a cut stream is not recorded

    def _keep(self, chunk: bytes) -> None:
        if self.is_sse:
            self.events += [contracts.unframe(block) for block in self.splitter.feed(chunk) if block.strip()]
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
            return {"events": self.events + ([contracts.unframe(tail)] if tail else [])}
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
    """Appends recorded exchanges to ``<dir>/<operationId>.yaml``; skips requests already on file."""

    def __init__(self, directory: Path | str, spec: Spec, secrets: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.index = ContractIndex(spec, ())
        self.secrets = tuple(secrets)

    def write(self, asked: Asked, real, body: dict, request_secrets: tuple[str, ...] = ()) -> Path | None:
        found = self.index.route(asked.method, asked.path)
        if found is None:
            return None
        operation = found[0].endpoint.pick(asked.stream).id
        secrets = tuple(sorted({*self.secrets, *request_secrets}, key=len, reverse=True))
        contract = self.contract(operation, asked, real, body, secrets)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{operation}.yaml"
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # gunicorn workers may record the same operation at once
            fh.seek(0)
            existing = fh.read()
            if existing and _already_recorded(path, contract):
                return None
            if not existing:
                fh.write(contracts.dump({"operation": operation, "source": "recorded", "exchanges": []})
                         .replace("exchanges: []\n", "exchanges:\n"))
            fh.write(contracts.dump([contracts.exchange_document(contract)]))
        return path

    @staticmethod
    def contract(operation: str, asked: Asked, real, body: dict, secrets: tuple[str, ...]) -> Contract:
        request: dict = {"method": asked.method, "path": asked.path}
        if asked.query:
            request["query"] = {k: v[-1] if len(v) == 1 else v for k, v in asked.query.items()}
        if asked.json is not None:
            request["json"] = asked.json
        if asked.form:
            request["form"] = asked.form
        headers = {k: v for k, v in real.headers.items()
                   if k.lower() in RECORDED_HEADERS or k.lower().startswith("x-ratelimit-")}
        response = {"status": real.status_code, "headers": contracts.scrub_headers(headers, secrets), **body}
        name = f"recorded {asked.method} {asked.path}" + (f" ({asked.model})" if asked.model else "")
        return Contract(operation, name, "recorded", contracts.scrub(request, secrets),
                        contracts.scrub(response, secrets))


def _already_recorded(path: Path, contract: Contract) -> bool:
    new = contract.recorded_request()
    return any(old.recorded_request() == new for old in contracts.load_file(path))


# -- choosing the transport ----------------------------------------------------------------------------

def adapter_for(settings, spec: Spec) -> HTTPAdapter | None:
    """The transport for ``settings.upstream_mode``: None (the real one, built by ``Upstream``), replay or record."""
    if settings.upstream_mode == "replay":
        return ReplayAdapter.from_directory(settings.contracts_dir, spec)
    if settings.upstream_mode == "record":
        real = PooledAdapter(pool_connections=4, pool_maxsize=settings.pool_size, max_retries=0)
        return RecordAdapter(ContractWriter(settings.contracts_dir, spec, settings.secrets()), real)
    return None
