"""The floor of the sidecar's own stack: the least a pass-through built on Flask and requests costs.

``floor.py`` is the least any Python WSGI proxy costs (a bare WSGI callable and urllib3). The sidecar
is built on Flask and requests (the project's design card), so part of its distance to that floor is
the stack's, not its features': this file measures that part. ``STACK_FLOOR`` picks what is used:

- ``flask+requests``: a Flask view forwarding with a ``requests.Session`` (the idiomatic proxy);
- ``flask+urllib3``: the Flask view with the floor's urllib3 pool (Flask's share alone);
- ``wsgi+requests``: the floor's bare WSGI callable with a ``requests.Session`` (requests' share alone).

No routing table, auth, validation or accounting, as in ``floor.py``. Run:
``gunicorn bench.stack_floor:app -k gevent -w 2`` with ``FLOOR_UPSTREAM`` and ``STACK_FLOOR`` set.
"""

import os
from http import HTTPStatus

import requests
import urllib3
from flask import Flask, Response, request

UPSTREAM = os.environ["FLOOR_UPSTREAM"]
STACK = os.environ.get("STACK_FLOOR", "flask+requests")
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade",
       "content-encoding"}
pool = urllib3.connection_from_url(UPSTREAM, maxsize=4000, block=False, retries=False)
session = requests.Session()
session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=4000, max_retries=0))


def _forward(method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
    if STACK.endswith("+requests"):
        up = session.request(method, UPSTREAM + path, headers=headers, data=body, allow_redirects=False)
        return up.status_code, [(k, v) for k, v in up.headers.items() if k.lower() not in HOP], up.content
    up = pool.urlopen(method, path, body=body, headers=headers, redirect=False)
    return up.status, [(k, v) for k, v in up.headers.items() if k.lower() not in HOP], up.data


flask_app = Flask(__name__)


@flask_app.route("/<path:path>", methods=["GET", "POST", "DELETE", "PATCH", "PUT"])
def view(path):
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    status, out, data = _forward(request.method, "/" + path, headers, request.get_data())
    return Response(data, status=status, headers=out)


def wsgi_app(environ, start_response):
    headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
    headers = {k: v for k, v in headers.items() if k.lower() not in HOP}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    status, out, data = _forward(environ["REQUEST_METHOD"], environ["PATH_INFO"], headers, environ["wsgi.input"].read())
    start_response(f"{status} {HTTPStatus(status).phrase}", out)
    return [data]


app = flask_app if STACK.startswith("flask+") else wsgi_app
