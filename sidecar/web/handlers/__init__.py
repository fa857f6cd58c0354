"""The sidecar's own routes. Each module's ``handlers(...)`` is given the collaborators it needs by the
factory and returns ``{x-sidecar-handler name: handler}``; a handler takes an ``OwnRequest`` and returns
a Flask response. Who may call is decided before, by the pipeline, from the spec's security.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.exchange import Exchange


@dataclass(frozen=True, slots=True)
class OwnRequest:
    """What a handler may read: the exchange (with its caller), the parsed body, path and query parameters."""

    ex: Exchange
    body: object  # web.body.Body
    path_params: dict
    args: object  # werkzeug MultiDict of the query


Handler = Callable[[OwnRequest], object]
