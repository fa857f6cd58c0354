"""``Exchange``: what the pipeline learns about one request, handed to accounting when it ends;
``Caller``: who sent it (set by access.auth)."""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from typing import Literal

from sidecar.core.usage import Usage


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated party behind a request."""

    kind: Literal["master", "virtual", "open"]  # "open": no master key set (loopback), anyone may call
    key_hash: str | None = None
    alias: str | None = None
    models: tuple[str, ...] = ()  # empty: every model
    user_id: str | None = None
    limits: dict = field(default_factory=dict, compare=False)
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def is_master(self) -> bool:
        return self.kind in ("master", "open")

    @property
    def is_virtual(self) -> bool:
        """A virtual key: the only kind of caller with limits, spend and a budget."""
        return self.kind == "virtual"

    def allows(self, model: str | None) -> bool:
        return not self.models or model is None or model in self.models


def request_id(given: str) -> str:
    """The client's ``x-request-id`` when it is a plain id of at most 64 characters, else a new one."""
    if 0 < len(given) <= 64 and given.replace("-", "").isalnum():
        return given
    return new_id()


_ids = {"prefix": secrets.token_hex(10), "count": itertools.count()}


def _new_process_ids() -> None:
    _ids["prefix"], _ids["count"] = secrets.token_hex(10), itertools.count()


os.register_at_fork(after_in_child=_new_process_ids)  # a forked worker never repeats its parent's ids


def new_id() -> str:
    """32 hex digits, unique across processes and machines, as a uuid4's: 80 random bits drawn once per
    process, then a counter. Two ``uuid4`` a request (its id, its admission) each read the kernel's
    random source; these are not secrets, only names."""
    return f"{_ids['prefix']}{next(_ids['count']):012x}"


@dataclass(slots=True)
class Exchange:
    request_id: str
    operation_id: str
    method: str
    route: str
    started: float = 0.0  # the clock's monotonic reading when the request arrived
    wall_time: float = 0.0  # the clock's wall reading then: the spend record's timestamp
    caller: Caller | None = None  # None: an operation without auth (health)
    model: str | None = None
    deployment: str | None = None  # the deployment that answered (config name, provider or "default")
    priced_as: str | None = None  # the price table's name for what it bills, when not the model itself
    end_user: str | None = None
    path_params: dict = field(default_factory=dict)  # the ids the path names (a file's, a job's)
    stream: bool = False
    status: int = 0
    request_json: object = None
    upstream_latency: float | None = None
    usage: Usage | None = None
    cost: float | None = None
    error: str | None = None
    finished: bool = False
    open_stream: bool = False  # counted in the open-streams gauge until finished
    admission: str | None = None  # its admission in the shared limits, until its spend record is committed
    settles: bool = False  # its key has limits that must see its real cost and tokens when it ends
    response_json: object = None  # kept only when Settings.log_bodies asks for bodies in the log
    first_chunk_at: float | None = None  # the clock's monotonic reading when a relayed body's first chunk went out
    span: object = None  # the request's OpenTelemetry span, when tracing is on (accounting.telemetry)
    latency: float = 0.0  # seconds from arrival to the last byte: set once, when accounting finishes

    @property
    def key_hash(self) -> str | None:
        return self.caller.key_hash if self.caller is not None else None

    @property
    def key_alias(self) -> str | None:
        return self.caller.alias if self.caller is not None else None
