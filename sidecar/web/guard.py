"""Who may address the sidecar at all: the ``Host`` it is called by, and, in open mode, the page a browser calls from.

Open mode (no master key, loopback only) trusts whoever can reach the port, and a web page the user
visits can reach it too: with a "simple" cross-site request (refused with 403 when it carries a
foreign ``Origin``, and anyway 415 for JSON operations), or by DNS rebinding a name of its own to
127.0.0.1 (refused with 421, because the ``Host`` then names the attacker's domain). With a master
key the sidecar answers any ``Host`` unless ``SIDECAR_ALLOWED_HOSTS`` names the ones to accept.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sidecar.core.errors import Forbidden, MisdirectedRequest, SidecarError
from sidecar.settings import Settings, is_loopback


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the host, lower case, without brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class HostGuard:
    """Checked first on every request (the sidecar's own routes, proxied and pass-through alike)."""

    def __init__(self, settings: Settings):
        self.open = settings.master_key is None
        self.allowed = frozenset(settings.allowed_hosts) | {settings.host.strip("[]").lower()}
        self.any_host = "*" in self.allowed or (not self.open and not settings.allowed_hosts)

    def accepts(self, host: str) -> bool:
        return host in self.allowed or is_loopback(host)

    def refusal(self, environ) -> SidecarError | None:
        """The error to answer instead of serving this request, or None to serve it."""
        authority = environ.get("HTTP_HOST")
        if authority and not self.any_host and not self.accepts(_hostname(authority)):
            return MisdirectedRequest(
                "This sidecar does not answer for that Host: call it as localhost or 127.0.0.1"
                + ("; open mode answers loopback names only." if self.open else ", or list it in SIDECAR_ALLOWED_HOSTS."))
        origin = environ.get("HTTP_ORIGIN")
        if self.open and origin is not None and not self.accepts(_hostname(urlsplit(origin).netloc or origin)):
            return Forbidden("Cross-origin requests from web pages are refused in open mode: set a master key "
                             "to serve them.", code="cross_origin_refused")
        return None
