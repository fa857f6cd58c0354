"""The upstream connection: one pooled transport adapter per process, and the outbound header policy.

The ``requests`` transport adapter is the only seam between real traffic, contract replay and
recording (see ``transports.py``): the pipeline never branches on the mode. Requests go straight
to ``adapter.send`` with a prepared request built here, without a ``Session``: the session's
per-call merging of settings, hooks and cookie jars cost about 200 us a request and bought nothing
(no cookies, redirects, proxies or environment lookups belong in a proxy).
"""

from __future__ import annotations

import random
import re
import select
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from sidecar.clock import SYSTEM, Clock
from sidecar.core.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable
from sidecar.core.router import Target
from sidecar.settings import Settings

# RFC 9110 7.6.1 hop-by-hop headers, plus those the sidecar recomputes or must never pass on.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-connection",
})
DROP_OUTBOUND = HOP_BY_HOP | {"host", "authorization", "x-api-key", "content-length", "cookie", "accept-encoding"}
DROP_INBOUND = HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie", "server", "date"}
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CONTROL = re.compile(r"[\r\n\x00]")  # never valid in a header value



def outbound_headers(client_headers, target: Target, auth: str, drop: frozenset[str] = frozenset()) -> dict:
    """The client's headers (a mapping, or (name, value) pairs) minus hop-by-hop, client credentials
    and sidecar-only ones (``drop`` in lower case), plus ours; 400 for a value with CR, LF or NUL,
    which would split the forwarded header."""
    headers = {}
    pairs = list(client_headers.items() if hasattr(client_headers, "items") else client_headers)
    for name, value in pairs:
        if _CONTROL.search(value):
            raise BadRequest(f"Header '{name}' contains a CR, LF or NUL character.", code="invalid_header")
    for name, value in pairs:
        low = name.lower()
        if low in DROP_OUTBOUND or low in drop or low.startswith("x-sidecar-"):
            continue
        headers[name] = value
    if target is not None:  # None: a cloud transport adds its own credentials
        headers.update(target.credentials(auth))
    return headers


def path_segment(name: str, value) -> str:
    """A path parameter as one upstream path segment: quoted, and never a dot segment, which the
    HTTP client would resolve (``/v1/files/../content`` is ``/v1/content``)."""
    value = str(value)
    if value in (".", ".."):
        raise BadRequest(f"Path parameter '{name}' may not be '{value}'.", param=name, code="invalid_path_parameter")
    return quote(value, safe="")


def inbound_headers(upstream_headers, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Upstream response headers safe to relay (bodies are re-framed by the WSGI server)."""
    return [(k, v) for k, v in upstream_headers.items() if k.lower() not in DROP_INBOUND and k.lower() not in drop]


def _rewindable(body) -> bool:
    return body is None or isinstance(body, (bytes, bytearray, str)) or (
        hasattr(body, "seek") and hasattr(body, "read"))


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _original_poll():
    """The kernel's ``poll``, even when gevent patched ``select``: a zero-timeout poll never blocks,
    and gevent's version builds and tears down a watcher per call."""
    try:
        from gevent.monkey import get_original
    except ImportError:  # pragma: no cover - gevent is a dependency; plain select then
        return select.poll
    return get_original("select", "poll")


_POLL = _original_poll()
_DROPPED = select.POLLIN | select.POLLERR | select.POLLHUP


def _still_open(sock) -> bool:
    """What urllib3's ``is_connected`` asks before reusing a pooled connection (nothing readable:
    no early EOF or stray bytes), asked with one direct zero-timeout poll."""
    if sock is None:
        return False
    poller = _POLL()
    poller.register(sock, _DROPPED)
    return not poller.poll(0)


ONE_SEND_MAX = 64 * 1024  # bodies up to this size go out with the request's header block
# A file-like body (an upload, a spliced JSON body) is read and sent in blocks of this size. urllib3's
# 16 KiB made a 10 MB body 615 sends, each also asking the socket its buffer size (gevent's sendall);
# blocks of 256 KiB and more were slower than 128 KiB (copies that no longer stay in a core's L2).
BLOCK_SIZE = 128 * 1024


class _OneSend:
    """A request's header block and its body (bytes of a known length, up to ``ONE_SEND_MAX``) leave in
    one ``send``: urllib3 sends them in two, each a syscall that delivers a segment (on loopback, in the
    sender's time), and a second packet for the upstream to wake up for. Larger bodies are not copied."""

    _with_headers: bytes | None = None

    def request(self, method, url, body=None, headers=None, **kwargs):
        if (isinstance(body, (bytes, bytearray)) and 0 < len(body) <= ONE_SEND_MAX and headers is not None
                and "Content-Length" in headers):
            self._with_headers, body = bytes(body), None
        try:
            return super().request(method, url, body, headers, **kwargs)
        finally:
            self._with_headers = None

    def send(self, data) -> None:
        body = self._with_headers
        if body is not None and isinstance(data, bytes):
            self._with_headers = None
            data += body
        super().send(data)


class _Connection(_OneSend, HTTPConnection):
    is_connected = property(lambda self: _still_open(self.sock))


class _TLSConnection(_OneSend, HTTPSConnection):
    is_connected = property(lambda self: _still_open(self.sock))


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class PooledAdapter(HTTPAdapter):
    """``HTTPAdapter`` with the pool lookup cached per origin and a cheap liveness check.

    ``send`` stays requests' own (so ``responses`` and the replay/record adapters see the same
    seam); what changes is what it calls per request: finding the pool (URL parsing, proxy
    selection, pool-key building, about 20 us) now happens once per origin, and the check for a
    dropped connection is one real ``poll`` instead of gevent's watcher-based one (about 25 us).
    """

    def __init__(self, *args, **kwargs):
        self._pools: dict[str, HTTPConnectionPool] = {}
        super().__init__(*args, **kwargs)

    @classmethod
    def for_settings(cls, settings: Settings) -> PooledAdapter:
        """The real transport: ``SIDECAR_POOL_SIZE`` kept-alive connections per origin, and no retries
        of its own (``Upstream.send`` retries, where the answer can still be read)."""
        return cls(pool_connections=4, pool_maxsize=settings.pool_size, max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs.setdefault("blocksize", BLOCK_SIZE)
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if proxies or cert is not None or verify is not True:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        url = request.url
        end = url.find("/", url.find("//") + 2)
        origin = url if end < 0 else url[:end]
        pool = self._pools.get(origin)
        if pool is None or pool.pool is None:  # a new origin, or its pool was closed
            pool = self._pools[origin] = super().get_connection_with_tls_context(request, verify, proxies, cert)
        return pool

    def request_url(self, request, proxies):
        if proxies:
            return super().request_url(request, proxies)
        path = request.path_url
        return f"/{path.lstrip('/')}" if path.startswith("//") else path

    def build_response(self, req, resp) -> requests.Response:
        """``HTTPAdapter.build_response`` without reading ``Set-Cookie`` into a cookie jar (about
        5 us): the sidecar never relays upstream cookies (``DROP_INBOUND``) nor reads the jar."""
        response = requests.Response()
        response.status_code = getattr(resp, "status", None)
        response.headers = CaseInsensitiveDict(getattr(resp, "headers", {}))
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url.decode("utf-8") if isinstance(req.url, bytes) else req.url
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self._pools.clear()
        super().close()


class Upstream:
    """Owns the pooled transport to Mistral and turns transport failures into sidecar errors."""

    def __init__(self, settings: Settings, adapter: HTTPAdapter | None = None, clock: Clock = SYSTEM):
        self.settings = settings
        self.clock = clock
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self.default_target = Target(settings.mistral_api_base, settings.mistral_api_key,
                                     settings.mistral_admin_api_key)
        self.adapter = adapter or PooledAdapter.for_settings(settings)

    @staticmethod
    def prepare(method: str, url: str, headers: dict, body) -> PreparedRequest:
        """What ``Session.prepare_request`` would build for a proxy: no cookies, auth, hooks or env."""
        prepared = PreparedRequest()
        prepared.method = method
        prepared.url = requote_uri(url)
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.headers["Accept-Encoding"] = "gzip, deflate"
        if isinstance(body, (bytes, bytearray)) or hasattr(body, "__len__"):  # bytes, or a spliced JSON body
            prepared.headers["Content-Length"] = str(len(body))
        elif body is None and method not in ("GET", "HEAD"):
            prepared.headers["Content-Length"] = "0"
        prepared.body = body
        prepared.hooks = {"response": []}
        return prepared

    def send(self, target: Target, method: str, path: str, query: str, headers: dict, body) -> requests.Response:
        """Send one request; the response body is left unread (``stream=True``) for the relay.

        Retries (``SIDECAR_RETRIES``, off by default) cover 429/5xx answers and connection errors,
        waiting ``Retry-After`` or an exponential backoff, capped. They happen before a byte is
        relayed, so a stream is never retried once it started; a body that cannot be re-read is
        never retried either.
        """
        url = target.base_url + path + (f"?{query}" if query else "")
        attempts = 1 + (self.settings.retries if _rewindable(body) else 0)
        for attempt in range(1, attempts + 1):
            if attempt > 1 and hasattr(body, "seek"):
                body.seek(0)
            try:
                response = self.adapter.send(self.prepare(method, url, headers, body), stream=True,
                                             timeout=self.timeout, verify=True, cert=None, proxies={})
            except requests.exceptions.ConnectionError as exc:  # includes ConnectTimeout, not ReadTimeout
                if attempt == attempts:
                    raise self._error(exc) from None
                self._sleep(attempt, None)
                continue
            except requests.exceptions.RequestException as exc:
                raise self._error(exc) from None
            if attempt == attempts or response.status_code not in RETRY_STATUSES:
                return response
            retry_after = response.headers.get("Retry-After")
            response.close()
            self._sleep(attempt, retry_after)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        """Wait before the next attempt: the upstream's ``Retry-After`` if given, else backoff with jitter."""
        wait = _retry_after_seconds(retry_after, self.clock.wall())
        if wait is None:
            wait = self.settings.retry_backoff * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)
        self.clock.sleep(min(max(wait, 0.0), self.settings.retry_max_wait))

    def _error(self, exc: requests.exceptions.RequestException):
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            error = UpstreamTimeout(f"Upstream did not accept a connection within {self.timeout[0]:g} s")
            error.failover = True  # no connection, so nothing was sent
            return error
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return UpstreamTimeout(f"Upstream did not answer within {self.timeout[1]:g} s")
        return UpstreamUnavailable(f"Upstream unreachable: {type(exc).__name__}")

    def close(self) -> None:
        self.adapter.close()

READ_SIZE = 64 * 1024
RELAY_ERRORS = (OSError, urllib3.exceptions.HTTPError, requests.exceptions.RequestException)


def upstream_chunks(response: requests.Response, size: int = READ_SIZE):
    """Yield the upstream body as it arrives: one HTTP chunk, or whatever one read returns."""
    raw = response.raw
    if getattr(raw, "chunked", False) and raw.supports_chunked_reads():
        for chunk in raw.read_chunked(decode_content=True):
            if chunk:
                yield chunk
        return
    while True:
        chunk = raw.read1(size, decode_content=True)
        if not chunk:
            return
        yield chunk
