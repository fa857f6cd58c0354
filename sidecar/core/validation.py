"""Request validation compiled once from the spec: path, query and JSON bodies, multipart parts.

Every operation's schemas are compiled at start-up with ``jsonschema_rs`` against one shared registry
holding the document (about 0.15 s and 25 MB for Mistral's 750 schemas); a request costs one dict lookup
and a Rust validation (about 1 us).
``oneOf`` is compiled as ``anyOf``: discriminated unions in the upstream spec can overlap, and the
sidecar must never refuse a request Mistral would accept; Mistral stays the final judge. For the same reason
only the formats Mistral's own parser enforces are checked (``uuid``, dates, URIs, durations, ``int32``), as
leniently as it parses them, and as patterns and bounds so that validation stays in Rust.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import jsonschema_rs

from sidecar.core.errors import InvalidRequest
from sidecar.core.spec import Operation, Spec, resolve

SMALL_FIELD = 1024  # form fields kept for routing (model, stream); larger ones are only counted

MAX_DETAILS = 20
BUNDLE_URI = "urn:mistral-sidecar:spec"
_KIND_TYPES = {
    "Required": "missing",
    "AdditionalProperties": "extra_forbidden",
    "Type": "type_error",
    "Enum": "enum",
    "Constant": "literal_error",
    "MinLength": "string_too_short",
    "MaxLength": "string_too_long",
    "Minimum": "greater_than_equal",
    "Maximum": "less_than_equal",
    "ExclusiveMinimum": "greater_than",
    "ExclusiveMaximum": "less_than",
    "MinItems": "too_short",
    "MaxItems": "too_long",
    "Pattern": "string_pattern_mismatch",
    "AnyOf": "union_error",
    "OneOfNotValid": "union_error",
}


# Formats as leniently as pydantic parses them: a UUID with or without hyphens, braces or urn prefix; an ISO
# 8601 date or date-time (any time part); a URI with a scheme; an ISO 8601 duration or [D days,]HH:MM[:SS]. (Pydantic also reads a
# bare number as a Unix time or as seconds; the spec does not allow that, and neither does the sidecar.)
_DATE = r"^\d{4}-\d{2}-\d{2}(?:[Tt ].*)?$"
FORMAT_PATTERNS = {
    "uuid": r"^(?:urn:uuid:)?\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\}?$",
    "date-time": _DATE,
    "date": _DATE,
    "uri": r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$",
    "duration": r"^[-+]?(?:P[0-9.,YMWDTHS]+|(?:\d+ ?d(?:ays?)?,? ?)?\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)$",
}
INT32 = (-(2**31), 2**31 - 1)
# The words pydantic reads as a boolean in a query string or form field.
BOOLEANS = {**dict.fromkeys(("true", "1", "t", "y", "yes", "on"), True),
            **dict.fromkeys(("false", "0", "f", "n", "no", "off"), False)}


def _loosen(node):
    """Copy a schema tree with ``oneOf`` read as ``anyOf``, OpenAPI-only keywords dropped and the enforced
    formats spelled as JSON Schema."""
    if isinstance(node, dict):
        out = {("anyOf" if k == "oneOf" else k): _loosen(v) for k, v in node.items() if k != "discriminator"}
        return _with_format(out) if isinstance(out.get("format"), str) else out
    if isinstance(node, list):
        return [_loosen(v) for v in node]
    return node


def _with_format(schema: dict) -> dict:
    """``format: uuid`` and dates as a pattern (ANDed with any pattern present), ``int32`` as bounds."""
    fmt = schema["format"]
    if fmt in FORMAT_PATTERNS:
        check = {"pattern": FORMAT_PATTERNS[fmt]}
        if "pattern" in schema:
            schema["allOf"] = [*schema.get("allOf", ()), check]
        else:
            schema.update(check)
    elif fmt == "int32":
        low, high = INT32
        schema["minimum"] = max(schema.get("minimum", low), low)
        schema["maximum"] = min(schema.get("maximum", high), high)
    return schema


def _types(doc: dict, schema: dict) -> set[str]:
    """The JSON types a parameter schema admits, looking through refs and unions."""
    schema = resolve(doc, schema) or {}
    found: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(kind)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, ()):
            found |= _types(doc, sub)
    return found


def _coercer(doc: dict, schema: dict):
    """A function turning a query-string value into the JSON value its schema expects."""
    types = _types(doc, schema)
    scalar_types = types - {"array"}
    if "array" in types:
        items = (resolve(doc, schema) or {}).get("items") or {}
        one = _scalar_coercer(_types(doc, items) or scalar_types)
        if "null" in types:  # `?mimetypes=`: an empty value of a nullable list is its null, as FastAPI reads it
            return lambda values: None if values == [""] else [one(v) for v in values]
        return lambda values: [one(v) for v in values]
    one = _scalar_coercer(scalar_types)
    return lambda values: one(values[-1])


def _query_coercers(doc: dict, name: str, schema: dict) -> list[tuple[str, str, str | None, object]]:
    """(query key, parameter, property, coercer) for one query parameter. An object parameter is sent
    exploded (OpenAPI's default form style: ``?active=true`` for ``query_filters.active``), so each of its
    properties is read from its own key and validated inside the object, where the schema puts it."""
    resolved = resolve(doc, schema) or {}
    properties = resolved.get("properties") if resolved.get("type") == "object" else None
    if properties:
        return [(prop, name, prop, _coercer(doc, sub)) for prop, sub in properties.items()]
    return [(name, name, None, _coercer(doc, schema))]


def _scalar_coercer(types: set[str]):
    def coerce(text: str):
        if "integer" in types:
            try:
                return int(text)
            except ValueError:
                pass
        if "number" in types:
            try:
                return float(text)
            except ValueError:
                pass
        if "boolean" in types and text.lower() in BOOLEANS:
            return BOOLEANS[text.lower()]
        if "null" in types and text == "" and "string" not in types:
            return None
        return text
    return coerce


def _detail(error, where: str) -> dict:
    kind = type(error.kind).__name__
    loc: list = [where, *error.instance_path]
    entry = {"loc": loc, "msg": error.message, "type": _KIND_TYPES.get(kind, "value_error")}
    if kind == "Required":
        loc.append(getattr(error.kind, "property", None))
        entry["msg"] = "Field required"
    elif kind == "AdditionalProperties":
        extra = list(getattr(error.kind, "unexpected", ()) or ())
        if extra:
            loc.append(extra[0])
        entry["msg"] = "Extra inputs are not permitted"
    return entry


class RequestValidator:
    """Checks one operation's path, query and body against its compiled schemas."""

    __slots__ = ("op", "_params", "_param_validator", "_body_validator", "_required_parts", "_coercers",
                 "_path_coercers", "_form_validator", "_form_coercers")

    def __init__(self, op: Operation, params_validator, body_validator, required_parts, coercers, path_coercers=None,
                 form_validator=None, form_coercers=None):
        self.op = op
        self._path_coercers = path_coercers or {}
        self._param_validator = params_validator
        self._body_validator = body_validator
        self._required_parts = required_parts
        self._coercers = coercers
        self._form_validator = form_validator
        self._form_coercers = form_coercers or {}

    def check_params(self, path_params: Mapping[str, str], query) -> None:
        """Validate path and query parameters (query values coerced from strings first)."""
        if self._param_validator is None:
            return
        instance = {"path": dict(path_params), "query": {}}
        for name, coerce in self._path_coercers.items():  # a path segment is text, an integer id still an integer
            if name in instance["path"]:
                instance["path"][name] = coerce([instance["path"][name]])
        for key, param, prop, coerce in self._coercers:
            values = query.getlist(key) if hasattr(query, "getlist") else ([query[key]] if key in query else [])
            if not values:
                continue
            if prop is None:
                instance["query"][param] = coerce(values)
            else:
                instance["query"].setdefault(param, {})[prop] = coerce(values)
        if not self._param_validator.is_valid(instance):
            raise InvalidRequest(self._details(self._param_validator, instance, where=None))

    def check_body(self, body) -> None:
        if self._body_validator is not None and not self._body_validator.is_valid(body):
            raise InvalidRequest(self._details(self._body_validator, body, where="body"))

    def check_parts(self, names: set[str], fields: Mapping[str, str] | None = None) -> None:
        """Multipart: every required part must be present, and each small text field valid (coerced from text
        like a query value; a field cut at the scan limit is left to Mistral)."""
        missing = [n for n in self._required_parts if n not in names]
        if missing:
            raise InvalidRequest([{"loc": ["body", n], "msg": "Field required", "type": "missing"} for n in missing])
        if self._form_validator is None or not fields:
            return
        instance = {name: coerce([fields[name]]) for name, coerce in self._form_coercers.items()
                    if name in fields and len(fields[name].encode()) < SMALL_FIELD}  # longer ones were cut
        if not self._form_validator.is_valid(instance):
            raise InvalidRequest(self._details(self._form_validator, instance, where="body"))

    def _details(self, validator, instance, where: str | None) -> list[dict]:
        details = []
        try:
            for error in validator.iter_errors(instance):
                if where is None:  # params: the first path element is "path" or "query"
                    head, *rest = error.instance_path or ["query"]
                    error_where, error.instance_path = head, rest  # type: ignore[misc]
                details.append(_detail(error, where or error_where))
                if len(details) >= MAX_DETAILS:
                    break
        except ValueError:  # jsonschema-rs: "Recursion limit reached" on input nested a few hundred deep
            return [{"loc": [where or "query"], "msg": "Input is nested too deeply to validate",
                     "type": "value_error"}]
        return details or [{"loc": [where or "query"], "msg": "Invalid request", "type": "value_error"}]


def _param_schema(doc: dict, op: Operation) -> dict | None:
    groups = {"path": ({}, []), "query": ({}, [])}
    for p in op.params:
        if p.location in groups:
            props, required = groups[p.location]
            props[p.name] = p.schema
            if p.required:
                required.append(p.name)
    if not any(props for props, _ in groups.values()):
        return None
    return {"type": "object", "properties": {
        where: {"type": "object", "properties": props, "required": required} for where, (props, required) in groups.items()
    }}


def compile_validators(spec: Spec) -> dict[str, RequestValidator]:
    """Compile every operation's validators in one pass; keyed by operation id."""
    doc = spec.document
    per_op = {}
    for op in spec.operations:
        entry = {}
        params = _param_schema(doc, op)
        if params:
            entry["params"] = params
        if op.body_kind == "json" and op.body_schema:
            entry["body"] = op.body_schema
        form = _form_properties(doc, op) if op.body_kind == "multipart" else None
        if form:
            entry["form"] = {"type": "object", "properties": form}
        per_op[op.id] = entry
    # One registry holds the whole document once; each validator compiles only what its schema reaches.
    # (validator_map_for compiled every subschema of the document: 6x the memory in every worker.)
    registry = jsonschema_rs.Registry([(BUNDLE_URI, _loosen({"components": doc.get("components", {}),
                                                              "x-sidecar-ops": per_op}))])

    # Operations whose schema is the same (a streaming twin and its plain operation, list endpoints with the
    # same filters...) share one compiled validator: 354 schemas are 222 distinct ones, ~2.5 MB less in
    # the master that every worker counts. Error details do not depend on where a schema sits.
    shared: dict[str, object] = {}

    def compiled(op_id: str, part: str):
        if part not in per_op[op_id]:
            return None
        key = json.dumps(per_op[op_id][part], sort_keys=True)
        if key not in shared:
            shared[key] = jsonschema_rs.validator_for({"$ref": f"{BUNDLE_URI}#/x-sidecar-ops/{op_id}/{part}"},
                                                      registry=registry)
        return shared[key]

    validators = {}
    for op in spec.operations:
        entry = per_op[op.id]
        validators[op.id] = RequestValidator(
            op,
            compiled(op.id, "params"),
            compiled(op.id, "body"),
            _required_parts(doc, op),
            [c for p in op.params if p.location == "query" for c in _query_coercers(doc, p.name, p.schema)],
            {p.name: _coercer(doc, p.schema) for p in op.params if p.location == "path" and _types(doc, p.schema) - {"string"}},
            compiled(op.id, "form"),
            {name: _coercer(doc, schema) for name, schema in entry.get("form", {}).get("properties", {}).items()},
        )
    return validators


def _form_properties(doc: dict, op: Operation) -> dict:
    """A multipart body's properties (its own and its allOf parts'), each checked when sent as a text field."""
    schema = resolve(doc, op.body_schema) or {}
    props = dict(schema.get("properties") or {})
    for sub in schema.get("allOf", ()):
        props.update((resolve(doc, sub) or {}).get("properties") or {})
    return props


def _required_parts(doc: dict, op: Operation) -> tuple[str, ...]:
    if op.body_kind != "multipart":
        return ()
    schema = resolve(doc, op.body_schema) or {}
    required = list(schema.get("required", ()))
    for sub in schema.get("allOf", ()):
        required += (resolve(doc, sub) or {}).get("required", ())
    return tuple(dict.fromkeys(required))


@lru_cache(maxsize=4)
def _compiled(path: Path, mtime: float) -> tuple[Spec, dict[str, RequestValidator]]:
    spec = Spec.load(path)
    return spec, compile_validators(spec)


def load_compiled(path: Path | str) -> tuple[Spec, dict[str, RequestValidator]]:
    """The spec table and its validators for ``path``, built once per process and file version.

    Immutable, so every app of a process shares them; the gunicorn master builds them before it
    forks (gunicorn_conf.on_starting), so workers share those ~35 MB copy-on-write instead of each
    holding its own (the document comes from the YAML's kept parse: ``spec.load_document``).
    """
    path = Path(path).resolve()
    return _compiled(path, path.stat().st_mtime)
