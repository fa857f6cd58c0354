"""The bare proxy floor: the least a Python WSGI pass-through can do, on gunicorn's own gevent worker.

No routing, auth, validation or accounting: the request is forwarded on a pooled urllib3
connection and the answer relayed chunk by chunk. Whatever this costs, any Python proxy costs.
Run: ``gunicorn bench.floor:app -k gevent -w 2`` with ``FLOOR_UPSTREAM=http://127.0.0.1:PORT``.
"""

import os

import urllib3

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}
pool = urllib3.connection_from_url(os.environ["FLOOR_UPSTREAM"], maxsize=4000, block=False, retries=False)


def app(environ, start_response):
    headers = {k[5:].replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
    headers = {k: v for k, v in headers.items() if k.lower() not in HOP}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    body = environ["wsgi.input"].read()
    up = pool.urlopen(environ["REQUEST_METHOD"], environ["PATH_INFO"], body=body, headers=headers,
                      preload_content=False, redirect=False)
    out = [(k, v) for k, v in up.headers.items() if k.lower() not in HOP]
    start_response(f"{up.status} {up.reason}", out)
    if up.chunked:
        return _relay(up)
    data = up.read()
    up.release_conn()
    return [data]


def _relay(up):
    try:
        yield from up.read_chunked()
    finally:
        up.release_conn()
