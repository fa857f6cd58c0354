"""``Scope``: what one request holds open until its answer is sent, and the one place that closes it."""

from __future__ import annotations


class Scope:
    """The spooled body, the limits lease and the upstream response of one request.

    Steps put what they open here instead of passing it along to be closed; whoever ends the request
    (the relay's ``close``, the JSON reader, a refusal) calls ``close`` once, and later calls do nothing.
    """

    __slots__ = ("body", "release", "upstream", "closed")

    def __init__(self) -> None:
        self.body = None  # body.Body
        self.release = None  # what admission took (limits): a callable
        self.upstream = None  # requests.Response
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.upstream is not None:
                self.upstream.close()
            if self.body is not None:
                self.body.close()
        finally:  # a lease held past its request would block the key until it expires
            if self.release is not None:
                self.release()
