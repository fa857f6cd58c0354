"""The dashboard at ``/ui``: static files shipped in the package, served with a strict CSP.

The page holds no secret and reads only the JSON routes of the spec, with the master key that the
person signs in with (kept in the browser's session storage, sent as a bearer token, never a cookie
or a URL); the CSP lets it load nothing but its own files and talk to nothing but this origin.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response

from sidecar.core.errors import NotFound
from sidecar.web.handlers import OwnRequest

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Read once: a handful of small files, served from memory (names are the only lookup, never a path).
FILES = {path.name: path.read_bytes() for path in UI_DIR.iterdir() if path.suffix in TYPES} if UI_DIR.is_dir() else {}


def _file(name: str) -> Response:
    content = FILES.get(name)
    if content is None:
        raise NotFound(f"The dashboard has no file {name!r}.", param="asset", code="not_found")
    mimetype = TYPES[Path(name).suffix]
    return Response(content, 200, HEADERS, mimetype=mimetype)


def page(call: OwnRequest):
    return _file("index.html")


def asset(call: OwnRequest):
    return _file(call.path_params["asset"])


def handlers() -> dict:
    return {"ui.page": page, "ui.asset": asset}
