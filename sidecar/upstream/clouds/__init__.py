"""Mistral models on the clouds: one transport per provider, behind the same ``send`` as Mistral's API.

A transport takes the request the pipeline would send to Mistral (``Outbound``) and returns a
``requests.Response`` the pipeline relays as if Mistral had answered: Azure and Vertex speak
Mistral's format on their own URLs and auth; Bedrock is translated both ways (``converse.py``).
Cloud libraries (botocore, google-auth) are imported when a deployment needs them, not before.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import requests
from requests.structures import CaseInsensitiveDict

from sidecar.clock import SYSTEM, Clock
from sidecar.core.config import ModelEntry
from sidecar.core.spec import Operation

CHAT = "/v1/chat/completions"
FIM = "/v1/fim/completions"
OCR = "/v1/ocr"


@dataclass
class Outbound:
    """One attempt's request as the pipeline would send it to Mistral's API (credentials not yet added)."""

    op: Operation
    path: str  # Mistral's path, parameters filled in
    query: str
    headers: dict  # the client's headers after the outbound policy, without credentials
    payload: object  # bytes, a file, or None
    json: object  # the parsed JSON body (with the deployment's model set), or None
    stream: bool
    model: str  # the upstream model name of this deployment


class CloudTransport(Protocol):
    """How one cloud deployment is reached; ``upstream`` is the process's ``Upstream`` (pool, timeouts)."""

    provider: str

    def supports(self, op: Operation) -> bool: ...

    def send(self, upstream, call: Outbound) -> requests.Response: ...


class MissingExtra(RuntimeError):
    """A configured cloud needs a library that is not installed; the message names the extra."""


def transport_for(entry: ModelEntry, clock: Clock = SYSTEM) -> CloudTransport:
    """The transport of a cloud ``model_list`` entry, built once at start-up (fails loudly); ``clock``
    is the app's (token expiries, the ``created`` of translated answers)."""
    if entry.provider == "azure_ai":
        from .azure import AzureTransport
        return AzureTransport(entry)
    if entry.provider == "vertex_ai":
        from .vertex import VertexTransport
        return VertexTransport(entry, clock)
    if entry.provider == "bedrock":
        from .bedrock import BedrockTransport
        return BedrockTransport(entry, clock)
    raise ValueError(f"no cloud transport for provider {entry.provider!r}")


def require(module: str, extra: str):
    """Import ``module`` or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{module} is not installed: pip install 'mistral-sidecar[{extra}]'") from None


class _GeneratedBody(io.RawIOBase):
    """A response body produced by a generator, read the way ``upstream_chunks`` reads urllib3's."""

    chunked = False

    def __init__(self, chunks: Iterable[bytes], on_close=None):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1, decode_content: bool = True) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    def read(self, size: int = -1, decode_content: bool = True) -> bytes:
        return b"".join(self._chunks)

    def stream(self, size: int = 65536, decode_content: bool = True):
        yield from self._chunks

    def close(self) -> None:
        if not self.closed:
            super().close()
            if self._on_close is not None:
                self._on_close()


def translated_response(status: int, content_type: str, chunks: Iterable[bytes], *, source: requests.Response,
                        headers: dict | None = None) -> requests.Response:
    """A ``requests.Response`` whose body is ``chunks``; closing it closes the cloud's ``source``."""
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict({"Content-Type": content_type, **(headers or {})})
    response.raw = _GeneratedBody(chunks, on_close=source.close)
    response.url = source.url
    response.reason = source.reason
    return response


def mistral_error(status: int, message: str, *, type: str, code: str | None, source: requests.Response,
                  headers: dict | None = None) -> requests.Response:
    """A cloud's error as Mistral shapes its own: ``{"object": "error", "message", "type", "param", "code"}``."""
    body = json.dumps({"object": "error", "message": message, "type": type, "param": None, "code": code}).encode()
    source.close()
    return translated_response(status, "application/json", [body], source=source, headers=headers)


def read_all(response: requests.Response, limit: int = 16 * 1024 * 1024) -> bytes:
    """The whole (small) body of a cloud's answer; an answer past ``limit`` is cut, not held."""
    data = bytearray()
    for chunk in response.raw.stream(65536, decode_content=True):
        data += chunk
        if len(data) > limit:
            break
    response.close()
    return bytes(data)
