"""gunicorn's gevent worker with deadlines on what a client sends, and a connection cap a flood cannot fill.

Deadlines: gunicorn bounds only the whole wait for the next request (``keepalive``), and not at all a
client that sends its headers or body a byte at a time. Here every connection's socket is wrapped so
that each read knows its deadline: the request headers must be complete within
``SIDECAR_HEADER_TIMEOUT`` of the first byte (of the connection, or of the next request on a kept-alive
one; a random half to all of it, so a flood is not closed in one wave); an idle kept-alive connection is
closed after ``SIDECAR_KEEPALIVE_TIMEOUT``; a body that pauses longer than ``SIDECAR_HEADER_TIMEOUT``
raises ``TimeoutError`` in the body reader (a 408, see ``web/body.py``). Writes are never bounded here.
Deadlines read the system clock (``clock.SYSTEM``), not the app's: socket timeouts enforce them in real time.

The cap: gevent's server stops accepting while a worker holds ``worker_connections``, so once slow
clients hold every slot a new connection waits in the kernel's listen queue until a deadline frees one
(up to ``SIDECAR_HEADER_TIMEOUT``), and behind every reconnection of the flood queued before it. So a
worker that takes its last slot sheds the connection that has waited longest for its client: one that
has not finished its request headers, or is idle between requests (nginx reuses its idle connections
the same way when it runs out). Accepting never stops while any slot is waiting on a client, and a
connection whose request is being served is never shed: only requests in progress can fill a worker.

Turns: a greenlet yields to the loop only when a read would block, so a kept-alive connection whose
next request is already there (a fast client beside a fast upstream, or pipelining) was served again
and again while the others' answers waited in their sockets: 50-250 ms runs of one connection under
load, the loaded p99. A request served without the loop having run once meanwhile (it never waited:
the loop's iteration count did not move) now ends its connection's turn when others are open; one
that waited on its upstream, as every real Mistral call does, already gave the others theirs.
"""

from __future__ import annotations

import io
import random
import socket

import gevent
from gunicorn.http.body import Body, LengthReader
from gunicorn.workers.ggevent import GeventWorker

from sidecar import heap
from sidecar.clock import SYSTEM
from sidecar.settings import Settings

HEADERS, BODY, IDLE, SHED = "headers", "body", "idle", "shed"
SHED_LOG_INTERVAL = 60.0  # seconds between the lines that say a worker is shedding
HOLD_MAX = 16 * 1024  # a response header block larger than this is sent at once
TURN = 1e-6  # any wait above 0 resumes after the loop has polled: behind the connections already ready


def _spread(timeout: float) -> float:
    """A headers deadline between half and all of ``timeout``: connections a flood opened together are
    closed over a span of time, not in one wave whose reconnections would fill the listen backlog."""
    return timeout * random.uniform(0.5, 1.0)


class DeadlineSocket:
    """A connected socket whose ``recv`` applies the deadline of the current phase of the connection.

    Headers: one deadline for all of them (a timeout reads as the end of the connection, which gunicorn
    closes quietly). Body: the longest pause between reads (a timeout raises). Idle (between requests):
    the keep-alive timeout until the next request's first byte, which starts a new headers deadline.
    Shed: the worker took the slot back; every read is the end of the connection.
    """

    __slots__ = ("_sock", "header_timeout", "keepalive_timeout", "phase", "_deadline", "_held")

    def __init__(self, sock, header_timeout: float, keepalive_timeout: float):
        self._sock = sock
        self.header_timeout, self.keepalive_timeout = header_timeout, keepalive_timeout
        self.phase = HEADERS
        self._deadline = SYSTEM.monotonic() + _spread(header_timeout)
        self._held: bytes | None = None

    def __getattr__(self, name):
        return getattr(self._sock, name)

    # -- writes: a response's header block leaves with its first body bytes --------------------------
    def sendall(self, data, *flags) -> None:
        """gunicorn sends a response's header block, then each body write: two sends (two syscalls, two
        segments) for every plain answer. The header block is held here and sent with what follows it
        (the body, or the end of a chunked one); ``flush`` sends it alone when nothing follows (HEAD,
        204), and any read, ``sendfile`` or ``fileno`` flushes first, so nothing can overtake it."""
        held = self._held
        if held is not None:
            self._held = None
            data = held + bytes(data)
        elif self.phase == BODY and data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n" and len(data) <= HOLD_MAX:
            self._held = bytes(data)
            return None
        return self._sock.sendall(data, *flags)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._sock.sendall(held)

    def sendfile(self, *args, **kwargs):
        self.flush()
        return self._sock.sendfile(*args, **kwargs)

    def fileno(self) -> int:
        self.flush()
        return self._sock.fileno()

    def recv(self, size: int, *flags) -> bytes:
        if self._held is not None:
            self.flush()
        sock = self._sock
        if self.phase == BODY:
            sock.settimeout(self.header_timeout)
            try:
                return sock.recv(size, *flags)
            finally:
                sock.settimeout(None)
        if self.phase == SHED:
            return b""
        if self.phase == IDLE:
            wait = self.keepalive_timeout
        else:
            wait = self._deadline - SYSTEM.monotonic()
            if wait <= 0:
                return b""
        sock.settimeout(wait)
        try:
            data = sock.recv(size, *flags)
        except TimeoutError:
            return b""  # gunicorn closes a connection that ends before its request does, without a log line
        except OSError:
            if self.phase == SHED:  # gevent cancels the wait of a socket shut down by another greenlet
                return b""
            raise
        finally:
            sock.settimeout(None)
        if self.phase == SHED:  # shed while this read was ready to return: the request is not served
            return b""
        if self.phase == IDLE and data:
            self.phase, self._deadline = HEADERS, SYSTEM.monotonic() + _spread(self.header_timeout)
        return data

    def recv_body_into(self, view: memoryview) -> int:
        """Fill ``view`` with body bytes until it is full or the client stops sending; the bytes received.
        A pause longer than ``header_timeout`` raises ``TimeoutError``, as ``recv`` does in the body phase."""
        if self._held is not None:
            self.flush()
        sock, got, size = self._sock, 0, len(view)
        sock.settimeout(self.header_timeout)
        try:
            while got < size:
                n = sock.recv_into(view[got:])
                if not n:
                    break
                got += n
        finally:
            sock.settimeout(None)
        return got

    def serving(self) -> None:
        """The headers are in: the application now reads the body, pausing at most ``header_timeout``."""
        self.phase = BODY

    def served(self) -> None:
        self.phase = IDLE

    def shed(self) -> None:
        """Take the slot back: the pending read ends (gevent wakes it) and the client sees the end of the
        connection, as after a deadline. Only for a connection waiting on its client (headers or idle)."""
        self.phase = SHED
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client has already gone: its read ends by itself


class SidecarWorker(GeventWorker):
    """The production worker (``gunicorn_conf.worker_class``)."""

    def init_process(self) -> None:
        settings = Settings.from_env()
        self.header_timeout, self.keepalive_timeout = settings.header_timeout, settings.keepalive_timeout
        # The connections open in this worker, and those waiting on their client in the order they began
        # to wait (a dict keeps insertion order): the first is the one to shed.
        self.held = 0
        self.waiting: dict[DeadlineSocket, None] = {}
        self._shed_count, self._shed_said = 0, -SHED_LOG_INTERVAL
        heap.keep_large_buffers()
        super().init_process()

    def timeout_ctx(self):
        # The sockets bound each phase themselves; this outer bound only backs them up.
        return gevent.Timeout(self.keepalive_timeout + self.header_timeout + 1, False)

    def handle(self, listener, client, addr) -> None:
        sock = DeadlineSocket(client, self.header_timeout, self.keepalive_timeout)
        self.held += 1
        if self.held >= self.worker_connections and self.waiting:
            self._shed_oldest()
        self.waiting[sock] = None
        try:
            super().handle(listener, sock, addr)
        finally:
            self.held -= 1
            self.waiting.pop(sock, None)

    def handle_request(self, listener_name, req, sock, addr):
        self.waiting.pop(sock, None)
        sock.serving()
        loop = gevent.get_hub().loop
        began = loop.iteration
        try:
            keep_alive = super().handle_request(listener_name, req, sock, addr)
        finally:
            try:
                sock.flush()  # a header block with no body after it (HEAD, 204, an empty answer)
            except OSError:
                pass  # the client left: gunicorn sees it on its next read
            sock.served()
            self.waiting[sock] = None
        if loop.iteration == began and self.held > 1:  # never waited: the others have not had a turn since
            gevent.sleep(TURN)
        return keep_alive

    def _shed_oldest(self) -> None:
        oldest = next(iter(self.waiting))
        del self.waiting[oldest]
        oldest.shed()
        self._shed_count += 1
        now = SYSTEM.monotonic()
        if now - self._shed_said >= SHED_LOG_INTERVAL:  # one line a minute, not one per connection of a flood
            self.log.warning("worker %s holds its cap of %d connections (SIDECAR_WORKER_CONNECTIONS): shedding "
                             "those waiting longest on their clients, %d since the last such line",
                             self.pid, self.worker_connections, self._shed_count)
            self._shed_count, self._shed_said = 0, now


def read_body(stream, length: int) -> bytes | bytearray | None:
    """A request body of known ``length`` read straight from the connection into one buffer; None when
    ``stream`` (``wsgi.input``) is not this worker's untouched body of that length (tests, other servers).

    gunicorn's ``Body.read`` passes each megabyte through two ``BytesIO`` buffers and their slices, five
    copies of a 10 MB upload (~9 ms). Here the bytes gunicorn already holds are taken, the rest received
    with ``recv_into``, and gunicorn's reader is left knowing how much of the body is still unread, so
    it drains or closes the connection as it would have.
    """
    reader = getattr(stream, "reader", None)
    if not (isinstance(stream, Body) and isinstance(reader, LengthReader) and reader.length == length
            and not stream.buf.tell() and isinstance(getattr(reader.unreader, "sock", None), DeadlineSocket)):
        return None
    unreader = reader.unreader
    held = unreader.buf.getvalue()  # read ahead with the headers: the body's start, maybe a pipelined request
    taken = min(len(held), length)
    unreader.buf = io.BytesIO()
    unreader.buf.write(held[taken:])
    if taken == length:  # a small body comes whole with its headers: no buffer to fill
        reader.length = 0
        return held[:length]
    body = bytearray(length)
    got = taken
    with memoryview(body) as view:
        view[:taken] = memoryview(held)[:taken]
        try:
            got += unreader.sock.recv_body_into(view[taken:])
        except BaseException:
            stream.failed = True  # where the next request starts is unknown: gunicorn closes the connection
            raise
        finally:
            reader.length = length - got
    if got < length:  # the client left mid-body: the caller refuses it
        stream.failed = True
        del body[got:]
    return body
