"""``Exchange``: what the pipeline learns about one request, handed to accounting when it ends."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Exchange:
    request_id: str
    operation_id: str
    method: str
    route: str
    started: float = 0.0  # the clock's monotonic reading when the request arrived
    wall_time: float = 0.0  # the clock's wall reading then: the spend record's timestamp
    caller: object = None
    model: str | None = None
    end_user: str | None = None
    stream: bool = False
    status: int = 0
    request_json: object = None
    upstream_latency: float | None = None
    usage: object = None
    cost: float | None = None
    error: str | None = None
    finished: bool = False
    open_stream: bool = False  # counted in the open-streams gauge until finished
    response_json: object = None  # kept only when Settings.log_bodies asks for bodies in the log
    first_chunk_at: float | None = None  # the clock's monotonic reading when a relayed body's first chunk went out
    deployment: str | None = None  # the named upstream deployment that answered, where config names them
    span: object = None  # the request's OpenTelemetry span, when tracing is on (accounting.telemetry)
    latency: float = 0.0  # seconds from arrival to the last byte: set once, when accounting finishes
