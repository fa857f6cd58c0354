"""Upstream response -> WSGI body, relayed chunk by chunk as it arrives, never buffered whole.

A streamed WSGI body is an iterable with ``close()`` (PEP 3333): the server calls it when the
client finishes or disconnects, so that is where the upstream connection is released and the
exchange is finished (accounted) exactly once. An event stream may end with one SSE comment line,
``: x-sidecar-cost=<USD>``, put just before ``data: [DONE]`` (or at the end when there is none):
every SSE parser skips comments, so SDKs read the stream as before.
"""

from __future__ import annotations

import weakref

import requests

from sidecar.clock import SYSTEM, Clock
from sidecar.core import sse
from sidecar.upstream.client import RELAY_ERRORS, upstream_chunks

DONE_LINE = b"data: [DONE]"
SHUTDOWN_MESSAGE = "The sidecar is shutting down; this stream was cut before it finished."


def cut_open_streams() -> int:
    """End every open event stream of this process now, each with an SSE ``error`` event and its
    record (gunicorn_conf runs it just before SIGTERM's grace period ends); returns how many."""
    relays = list(_OPEN)
    for relay in relays:
        relay.cut()
    return len(relays)


class StreamIdle(Exception):
    """No complete event within the stream idle timeout."""


def _lower_read_timeout(response, seconds: float) -> None:
    """Cap the read timeout of the socket under a urllib3 response (replayed answers have none)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        current = sock.gettimeout()
        if current is None or current > seconds:
            sock.settimeout(seconds)


class RelayBody:
    """The WSGI iterable for a relayed body; ``on_chunk`` sees each chunk, ``on_close`` runs once.
    ``chunks`` continues a body the pipeline already started reading (default: read it from the start).
    ``closing`` is asked once, when the stream's last event is due, for bytes to send before it (the
    cost comment); ``first_chunk_at`` is when the first chunk was relayed (time to first chunk);
    ``complete`` says the upstream body was relayed to its end (not cut by either side)."""

    __slots__ = ("response", "chunks", "on_chunk", "on_close", "is_sse", "closing", "error", "first_chunk_at",
                 "clock", "idle_timeout", "complete", "_closed", "_cut", "__weakref__")

    def __init__(self, response: requests.Response, *, chunks=None, on_chunk=None, on_close=None,
                 is_sse: bool = False, closing=None, clock: Clock = SYSTEM, idle_timeout: float | None = None):
        self.response = response
        self.clock = clock
        self.chunks = chunks
        self.on_chunk = on_chunk
        self.on_close = on_close
        self.is_sse = is_sse
        self.closing = closing
        self.error: str | None = None
        self.first_chunk_at: float | None = None
        # SSE: the longest wait for the next complete event. An upstream that trickles bytes without ever
        # finishing an event is cut here; one that sends nothing at all, by the socket's read timeout,
        # which this lowers to the same value for the rest of the stream.
        self.idle_timeout = idle_timeout
        if idle_timeout is not None:
            _lower_read_timeout(response, idle_timeout)
        self.complete = False
        self._closed = False
        self._cut = False

    def __iter__(self):
        on_chunk, closing, idle = self.on_chunk, self.closing, self.idle_timeout
        monotonic = self.clock.monotonic
        last_event = monotonic()
        if self.is_sse:
            _OPEN.add(self)
        try:
            for chunk in self.chunks if self.chunks is not None else upstream_chunks(self.response):
                if self._cut:
                    break
                if idle is not None:
                    now = monotonic()
                    if b"\n\n" in chunk or b"\r\n\r\n" in chunk:
                        last_event = now
                    elif now - last_event > idle:
                        raise StreamIdle()
                if self.first_chunk_at is None:
                    self.first_chunk_at = self.clock.monotonic()
                if on_chunk is not None:
                    on_chunk(chunk)
                if closing is not None:
                    at = chunk.find(DONE_LINE)
                    if at == 0 or at > 0 and chunk[at - 1] in b"\r\n":  # a line of its own, usage already fed
                        extra, closing = closing(), None
                        if extra:
                            if at:
                                yield chunk[:at]
                            yield extra
                            chunk = chunk[at:]
                yield chunk
            self.complete = not self._cut
            if closing is not None and not self._cut:
                extra = closing()
                if extra:
                    yield extra
        except StreamIdle:
            self.error = "upstream stream idle"
            yield sse.error_event(f"The upstream sent no complete event for {idle:g} s (SIDECAR_STREAM_IDLE_TIMEOUT).",
                                  type="upstream_error", code="stream_idle_timeout")
        except Exception as exc:
            if not self._cut and not isinstance(exc, RELAY_ERRORS):
                raise
            if not self._cut:
                self.error = f"upstream stream interrupted: {type(exc).__name__}"
                if self.is_sse:
                    yield sse.error_event("The upstream stream was interrupted before it finished.",
                                          type="upstream_error", code="stream_interrupted")
        if self._cut:
            self.error = "stream cut at shutdown"
            yield sse.error_event(SHUTDOWN_MESSAGE, type="service_unavailable", code="sidecar_shutdown")

    def cut(self) -> None:
        """Stop relaying: closing the upstream wakes a read blocked on it (another greenlet's)."""
        self._cut = True
        self.response.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self.response.close()
        if self.on_close is not None:
            self.on_close(self)


_OPEN: weakref.WeakSet[RelayBody] = weakref.WeakSet()  # open event streams of this process
