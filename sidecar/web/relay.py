"""Upstream response -> WSGI body, relayed chunk by chunk as it arrives, never buffered whole.

A streamed WSGI body is an iterable with ``close()`` (PEP 3333): the server calls it when the
client finishes or disconnects, so that is where the upstream connection is released and the
exchange is finished (accounted) exactly once.
"""

from __future__ import annotations

import requests

from sidecar.core import sse
from sidecar.upstream.client import RELAY_ERRORS, upstream_chunks


class RelayBody:
    """The WSGI iterable for a relayed body; ``on_chunk`` sees each chunk, ``on_close`` runs once.
    ``chunks`` continues a body the pipeline already started reading (default: read it from the start)."""

    __slots__ = ("response", "chunks", "on_chunk", "on_close", "is_sse", "error", "_closed")

    def __init__(self, response: requests.Response, *, chunks=None, on_chunk=None, on_close=None,
                 is_sse: bool = False):
        self.response = response
        self.chunks = chunks
        self.on_chunk = on_chunk
        self.on_close = on_close
        self.is_sse = is_sse
        self.error: str | None = None
        self._closed = False

    def __iter__(self):
        on_chunk = self.on_chunk
        try:
            for chunk in self.chunks if self.chunks is not None else upstream_chunks(self.response):
                if on_chunk is not None:
                    on_chunk(chunk)
                yield chunk
        except RELAY_ERRORS as exc:
            self.error = f"upstream stream interrupted: {type(exc).__name__}"
            if self.is_sse:
                yield sse.error_event("The upstream stream was interrupted before it finished.",
                                      type="upstream_error", code="stream_interrupted")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.response.close()
        if self.on_close is not None:
            self.on_close(self)
