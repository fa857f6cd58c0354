"""The spec table: openapi.yaml read once into immutable ``Operation`` and ``Endpoint`` records.

Pure (no Flask, no requests). Speakeasy's ``#stream`` path keys name the streaming twin of an
operation at the same HTTP path; they are folded into one ``Endpoint`` with a ``stream`` twin.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
PATH_PARAM = re.compile(r"{([^}/]+)}")  # a parameter in a path template; group 1 is its name

# The string protocols of an operation, spelled once: what each value means is in ``Operation``.
Auth = Literal["bearer", "master", "admin", "x-api-key", "none"]
BodyKind = Literal["json", "multipart", "unchecked"]  # unchecked: a pass-through's, relayed as sent
ModelIn = Literal["body", "form", "path"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: str  # path | query | header
    required: bool
    schema: dict


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the spec, as the pipeline needs it."""

    id: str
    method: str  # upper case
    path: str  # the HTTP path template, without any "#stream"
    tag: str
    body_kind: BodyKind | None  # None: the operation takes no body
    body_required: bool
    body_schema: dict | None
    params: tuple[Param, ...]
    streams: bool  # can answer with server-sent events
    stream_twin: bool  # this is the "#stream" twin (the request is a stream by definition)
    auth: Auth  # "master": the sidecar's own admin routes; "admin"/"x-api-key": Mistral's other credentials
    handler: str | None  # the sidecar's own handler name; None means proxied to Mistral
    model_in: ModelIn | None  # where the model is named; None: nowhere

    @property
    def proxied(self) -> bool:
        return self.handler is None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One (method, path) the server answers, with its plain operation and optional stream twin."""

    method: str
    path: str
    plain: Operation
    stream: Operation | None

    def pick(self, wants_stream: bool) -> Operation:
        return self.stream if (wants_stream and self.stream is not None) else self.plain


def flask_rule(path: str) -> str:
    """``/v1/files/{file_id}`` -> ``/v1/files/<file_id>``."""
    return PATH_PARAM.sub(r"<\1>", path)


def load_document(path: Path | str) -> dict:
    """The spec document: from the parse kept beside the YAML when it was made from these very bytes
    (``write_parsed``: ~40 ms and ~8 MB), else from the YAML itself (~1.5 s and ~55 MB of worker memory
    for Mistral's 1.7 MB spec, even with libyaml). A YAML edited since is parsed, never a stale copy."""
    path = Path(path)
    data = path.read_bytes()
    kept = parsed_path(path)
    if kept.is_file():
        parsed = json.loads(kept.read_bytes())
        if parsed.get("sha256") == hashlib.sha256(data).hexdigest():
            return parsed["document"]
    return _yaml(data)


def parsed_path(path: Path) -> Path:
    """Where the parse of a YAML spec is kept: ``openapi.yaml`` -> ``openapi.parsed.json``."""
    return path.with_name(path.stem + ".parsed.json")


def write_parsed(path: Path | str) -> Path:
    """Keep the parse of the YAML spec at ``path`` beside it, keyed by the YAML's SHA-256
    (scripts/sync_spec.py does, after writing openapi.yaml); refuses what JSON cannot say as YAML did."""
    path = Path(path)
    data = path.read_bytes()
    document = _yaml(data)
    try:
        text = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "document": document},
                          ensure_ascii=False, separators=(",", ":"))
    except TypeError:
        text = None
    if text is None or json.loads(text)["document"] != document:
        raise ValueError(f"{path} holds values JSON cannot represent (dates, non-string keys): keep it YAML-only")
    out = parsed_path(path)
    out.write_text(text + "\n", encoding="utf-8")
    return out


def _yaml(data: bytes) -> dict:
    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


_NOWHERE = object()


def follow(doc, ref: str, default=_NOWHERE):
    """The node a local ``$ref`` (``#/a/b~1c``: a JSON Pointer, RFC 6901) names in ``doc``; ``default``
    where it names nothing (a client's schema), else ``KeyError`` (the spec's own refs must resolve)."""
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif default is _NOWHERE:
            raise KeyError(f"$ref {ref!r} names nothing (at {part!r})")
        else:
            return default
    return node


def resolve(doc: dict, schema, default=_NOWHERE):
    """Follow local ``$ref`` chains to the schema they name (at most 32 links: a cycle stops there);
    ``default`` as in ``follow``. A non-local ``$ref`` is returned as it is."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            return schema
        schema, seen = follow(doc, ref, default), seen + 1
    return schema


def body_fields(doc: dict, schema) -> frozenset[str]:
    """The fields a body schema declares: its ``properties`` and those of every ``allOf`` part (a
    conversation's ``model`` is declared in the base it extends)."""
    schema = resolve(doc, schema)
    if not isinstance(schema, dict):
        return frozenset()
    fields = set(schema.get("properties") or ())
    for part in schema.get("allOf") or ():
        fields |= body_fields(doc, part)
    return frozenset(fields)


def observability_statuses(doc: dict) -> dict[str, frozenset[int]]:
    """Operation id -> the statuses for which it declares ``ObservabilityError``: computed once, read per refusal."""
    found: dict[str, frozenset[int]] = {}
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict) or "operationId" not in op:
                continue
            statuses = frozenset(int(code) for code, response in (op.get("responses") or {}).items()
                                 if code.isdigit() and "ObservabilityError" in repr(response))
            if statuses:
                found[op["operationId"]] = statuses
    return found


def _auth(doc: dict, op: dict) -> Auth:
    security = op.get("security", doc.get("security") or [])
    if security == [] or security == [{}]:
        return "none"
    names = {name for req in security for name in req}
    if "SidecarMasterKey" in names:
        return "master"
    if "AdminApiKey" in names:
        return "admin"
    if "DashboardUserContextAuth" in names:
        return "x-api-key"
    return "bearer"


def _body(doc: dict, op: dict) -> tuple[BodyKind | None, bool, dict | None]:
    body = op.get("requestBody")
    if not body:
        return None, False, None
    content = body.get("content", {})
    required = bool(body.get("required"))
    if "application/json" in content:
        return "json", required, content["application/json"].get("schema", {})
    if "multipart/form-data" in content:
        return "multipart", required, content["multipart/form-data"].get("schema", {})
    if content:  # the pipeline would forward no body: refuse the spec instead of dropping bodies
        raise ValueError(f"operation {op.get('operationId')!r} takes {', '.join(content)}: only JSON and "
                         "multipart bodies are supported")
    return None, required, None


def _streams(doc: dict, op: dict, body_schema: dict | None) -> bool:
    if op.get("x-sidecar-streams") is not None:
        return bool(op["x-sidecar-streams"])
    for response in op.get("responses", {}).values():
        if "text/event-stream" in ((resolve(doc, response) or {}).get("content") or {}):
            return True
    return "stream" in body_fields(doc, body_schema)


def _model_in(doc: dict, path: str, kind: BodyKind | None, body_schema: dict | None) -> ModelIn | None:
    if "{model_id}" in path:
        return "path"
    if "model" in body_fields(doc, body_schema):
        return "form" if kind == "multipart" else "body"
    return None


def _operation(doc: dict, method: str, key: str, op: dict, shared_params: list) -> Operation:
    path, _, fragment = key.partition("#")
    kind, required, schema = _body(doc, op)
    params = tuple(
        Param(p["name"], p["in"], bool(p.get("required")) or p["in"] == "path", p.get("schema") or {})
        for p in (resolve(doc, raw) for raw in [*shared_params, *op.get("parameters", [])])
        if p.get("in") in ("path", "query", "header")
    )
    return Operation(
        id=op.get("operationId") or f"{method}_{key}",
        method=method.upper(),
        path=path,
        tag=(op.get("tags") or ["default"])[0],
        body_kind=kind,
        body_required=required,
        body_schema=schema,
        params=params,
        streams=fragment == "stream" or _streams(doc, op, schema),
        stream_twin=fragment == "stream",
        auth=_auth(doc, op),
        handler=op.get("x-sidecar-handler"),
        model_in=_model_in(doc, path, kind, schema),
    )


def operations(doc: dict) -> tuple[Operation, ...]:
    """Every operation of the document, in document order."""
    found = []
    for key, item in doc.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in HTTP_METHODS:
            if method in item:
                found.append(_operation(doc, method, key, item[method], shared))
    return tuple(found)


def endpoints(ops: tuple[Operation, ...]) -> tuple[Endpoint, ...]:
    """Fold ``#stream`` twins into the endpoint that shares their method and path."""
    plain: dict[tuple[str, str], Operation] = {}
    twins: dict[tuple[str, str], Operation] = {}
    for op in ops:
        (twins if op.stream_twin else plain)[(op.method, op.path)] = op
    for key, twin in twins.items():
        plain.setdefault(key, twin)
    return tuple(
        Endpoint(method, path, op, twins.get((method, path)) if op is not twins.get((method, path)) else None)
        for (method, path), op in plain.items()
    )


@dataclass(frozen=True)
class Spec:
    """The loaded document and its tables; built once per app."""

    document: dict
    operations: tuple[Operation, ...]
    endpoints: tuple[Endpoint, ...]

    @classmethod
    def load(cls, path: Path | str) -> Spec:
        return cls.from_document(load_document(path))

    @classmethod
    def from_document(cls, doc: dict) -> Spec:
        ops = operations(doc)
        return cls(doc, ops, endpoints(ops))

    def operation(self, operation_id: str) -> Operation:
        for op in self.operations:
            if op.id == operation_id:
                return op
        raise KeyError(operation_id)
