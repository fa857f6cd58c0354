"""Generate a contract for every proxied operation of openapi.yaml that has no hand-written one.

Deterministic: the same spec always gives the same files. Each instance is built from the schema (its
examples first, then the smallest values its constraints allow, with readable strings), and every
generated contract is checked with ``sidecar.contracts.conformance`` before it is written. Files whose ``source`` is
not ``generated`` are never touched. Usage: ``python scripts/make_contracts.py [--check] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sidecar.contracts import index as contracts  # noqa: E402
from sidecar.contracts.conformance import Conformance, _responses  # noqa: E402
from sidecar.contracts.index import Contract  # noqa: E402
from sidecar.core.spec import Operation, Spec, resolve  # noqa: E402

FORMATS = {
    "date-time": "2025-11-25T10:00:00Z", "date": "2025-11-25", "time": "10:00:00", "uuid": "7f3b1c2e-5a4d-4e8f-9b6a-1c2d3e4f5a6b",
    "email": "ada@example.com", "uri": "https://example.com/resource", "url": "https://example.com/resource",
    "binary": "<binary>", "duration": "P1D", "hostname": "example.com", "ipv4": "127.0.0.1",
}
NAMED = {"model": "mistral-small-latest", "model_id": "mistral-small-latest", "object": "list"}
MAX_DEPTH = 10
BINARY = b"RIFF\x24\x00\x00\x00WAVEfmt "  # a few bytes that look like what they stand for


class Instances:
    """Builds one deterministic instance of a schema, preferring the spec's own examples."""

    def __init__(self, doc: dict, use_examples: bool = True, optional: bool = False):
        self.doc = doc
        self.use_examples = use_examples
        self.optional = optional

    def make(self, schema, name: str | None = None, depth: int = 0):
        schema = resolve(self.doc, schema) or {}
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if self.use_examples:
            for key in ("example", "examples"):
                if key in schema and schema[key] is not None:
                    value = schema[key]
                    if key == "examples" and isinstance(value, list) and value:
                        return copy.deepcopy(value[0])
                    if key == "example":
                        return copy.deepcopy(value)
        if "enum" in schema:
            values = [v for v in schema["enum"] if v is not None]
            return copy.deepcopy(values[0] if values else None)
        if "allOf" in schema:
            return self.make(self.flatten(schema), name, depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = [b for b in schema[key] if (resolve(self.doc, b) or {}).get("type") != "null"]
                if not branches:
                    return None
                base = {k: v for k, v in schema.items() if k not in (key, "discriminator")}
                return self.make({**base, **(resolve(self.doc, branches[0]) or {})}, name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return getattr(self, f"_{kind}", self._string)(schema, name, depth)

    def flatten(self, schema: dict) -> dict:
        """``allOf`` parts merged into one object schema (properties and required lists united)."""
        out = {k: v for k, v in schema.items() if k != "allOf"}
        out["properties"] = dict(out.get("properties") or {})
        out["required"] = list(out.get("required") or [])
        for part in schema["allOf"]:
            part = resolve(self.doc, part) or {}
            if "allOf" in part:
                part = self.flatten(part)
            out["properties"].update(part.get("properties") or {})
            out["required"] += [r for r in part.get("required") or [] if r not in out["required"]]
            out.setdefault("type", part.get("type"))
        return out

    def _object(self, schema, name, depth):
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        keys = list(props) if self.optional and depth < 3 else [k for k in props if k in required]
        out = {}
        for key in keys:
            if depth < MAX_DEPTH or key in required:
                out[key] = self.make(props[key], key, depth + 1)
        for key in required:
            if key not in out:
                out[key] = "value"
        return out

    def _array(self, schema, name, depth):
        if "prefixItems" in schema:
            return [self.make(s, name, depth + 1) for s in schema["prefixItems"]]
        count = max(int(schema.get("minItems", 0)), 1 if depth < 4 and schema.get("items") else 0)
        count = min(count, int(schema.get("maxItems", count)))
        return [self.make(schema.get("items") or {}, name, depth + 1) for _ in range(count)]

    def _string(self, schema, name, depth):
        if "format" in schema and schema["format"] in FORMATS:
            return FORMATS[schema["format"]]
        if "pattern" in schema:
            return minimal_match(schema["pattern"])
        text = NAMED.get(name or "") or (f"example-{name}".replace("_", "-") if name else "example")
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        text = text.ljust(low, "x")
        return text[: int(high)] if high is not None else text

    def _integer(self, schema, name, depth):
        return int(self._number(schema, name, depth))

    def _number(self, schema, name, depth):
        value = schema.get("default") if isinstance(schema.get("default"), (int, float)) else None
        if value is None:
            value = schema.get("minimum", 0)
            if "exclusiveMinimum" in schema:
                value = schema["exclusiveMinimum"] + 1
            if "maximum" in schema:
                value = min(value, schema["maximum"])
        return value if schema.get("type") != "integer" else int(value)

    def _boolean(self, schema, name, depth):
        return bool(schema.get("default", False))

    def _null(self, schema, name, depth):
        return None


def minimal_match(pattern: str) -> str:
    """The simplest string matching a regex (hypothesis' shrinker, so the answer is the same every run)."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis import strategies as st
    return find(st.from_regex(pattern, fullmatch=True), lambda _: True,
                settings=settings(database=None, suppress_health_check=list(HealthCheck)))


# -- one contract per operation ------------------------------------------------------------------------

def first_success(responses: dict) -> tuple[int, dict]:
    for status in sorted(responses, key=str):
        if str(status).startswith("2"):
            return int(status), responses[status]
    return 200, {}


def make_path(op: Operation, inst: Instances) -> tuple[str, dict]:
    path = op.path
    for param in op.params:
        if param.location == "path":
            value = inst.make(param.schema, param.name)
            path = path.replace("{" + param.name + "}", re.sub(r"[/?#]", "-", str(value)))
    query = {p.name: inst.make(p.schema, p.name) for p in op.params if p.location == "query" and p.required}
    return path, {k: str(v).lower() if isinstance(v, bool) else v for k, v in query.items()}


def make_request(op: Operation, doc: dict, inst: Instances) -> dict:
    path, query = make_path(op, inst)
    request: dict = {"method": op.method, "path": path}
    if query:
        request["query"] = query
    if op.body_kind == "json" and op.body_schema:
        request["json"] = inst.make(op.body_schema)
    elif op.body_kind == "multipart":
        schema = resolve(doc, op.body_schema) or {}
        form = inst.make(schema)
        props = schema.get("properties") or {}
        request["form"] = {k: (f"<file {k}.bin>" if (resolve(doc, props.get(k)) or {}).get("format") == "binary"
                               or isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else str(v))
                           for k, v in (form or {}).items()}
    return request


def stream_event(inst: Instances, doc: dict, schema: dict) -> dict:
    """One event of a stream; it always has ``data``, even when the schema leaves it optional, since a client
    dispatches no event without data (the smallest instance of an all-optional schema would be ``{}``)."""
    event = inst.make(schema)
    if isinstance(event, dict) and "data" not in event:
        data_schema = ((resolve(doc, schema) or {}).get("properties") or {}).get("data")
        if data_schema is not None:
            event["data"] = inst.make(data_schema, "data")
    return event


def make_response(op: Operation, doc: dict, inst: Instances) -> dict:
    status, response = first_success(_responses(doc, op))
    content = (resolve(doc, response) or {}).get("content") or {}
    out: dict = {"status": status}
    if not content:
        return out
    ctype = "application/json" if "application/json" in content else next(iter(content))
    media = content[ctype]
    out["headers"] = {"Content-Type": ctype}
    if ctype == "application/json":
        named = [e.get("value") for e in (media.get("examples") or {}).values() if isinstance(e, dict)]
        example = media.get("example", named[0] if named and inst.use_examples else None)
        out["json"] = copy.deepcopy(example) if example is not None else inst.make(media.get("schema") or {})
    elif ctype == "text/event-stream":
        event = stream_event(inst, doc, media.get("schema") or {})
        out["events"] = [{k: event[k] for k in ("event", "id", "data") if k in event}]
        if "event" not in event:
            out["events"].append({"data": "[DONE]"})
    else:
        out["body_base64"] = base64.b64encode(BINARY).decode()
    return out


def generate(op: Operation, spec: Spec, conformance: Conformance) -> Contract:
    """The first variant that conforms: examples, then schema-only, then with optional fields."""
    problems: list[str] = []
    for inst in (Instances(spec.document), Instances(spec.document, use_examples=False),
                 Instances(spec.document, use_examples=False, optional=True)):
        contract = Contract(op.id, f"generated {op.method} {op.path}", "generated",
                            make_request(op, spec.document, inst), make_response(op, spec.document, inst))
        problems = conformance.problems(contract)
        if not problems:
            return contract
    raise SystemExit(f"could not generate a conforming contract for {op.id}: {problems}")


def documents(op: Operation, spec: Spec, conformance: Conformance) -> dict:
    contract = generate(op, spec, conformance)
    exchanges = [contracts.exchange_document(contract)]
    responses = _responses(spec.document, op)
    content = (first_success(responses)[1].get("content") or {})
    if "text/event-stream" in content and "application/json" in content:  # a stream flag picks SSE
        streamed = Instances(spec.document, use_examples=False)
        request = {**contract.request, "json": {**contract.request["json"], "stream": True}}
        event = stream_event(streamed, spec.document, content["text/event-stream"].get("schema") or {})
        events = [{k: event[k] for k in ("event", "data") if k in event}] + ([] if "event" in event else [{"data": "[DONE]"}])
        twin = Contract(op.id, f"generated {op.method} {op.path} (stream)", "generated", request,
                        {"status": contract.status, "headers": {"Content-Type": "text/event-stream"}, "events": events})
        problems = conformance.problems(twin)
        if problems:
            raise SystemExit(f"could not generate a conforming stream contract for {op.id}: {problems}")
        exchanges.append(contracts.exchange_document(twin))
    for entry in exchanges:
        entry.pop("source", None)
    return {"operation": op.id, "source": "generated", "exchanges": exchanges}


def hand_written(path: Path) -> bool:
    if not path.exists():
        return False
    head = path.read_text(encoding="utf-8")[:2000]
    return not re.search(r"^source:\s*generated\s*$", head, re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "openapi.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "contracts")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file would change")
    args = parser.parse_args(argv)
    spec = Spec.load(args.spec)
    conformance = Conformance(spec)
    args.out.mkdir(parents=True, exist_ok=True)
    stale, written, kept = [], 0, 0
    for op in spec.operations:
        if not op.proxied:
            continue
        path = args.out / f"{op.id}.yaml"
        if hand_written(path):
            kept += 1
            continue
        text = "# Generated by scripts/make_contracts.py from openapi.yaml; reviewed. Edit by hand: set source: hand-written.\n"
        text += contracts.dump(documents(op, spec, conformance))
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
        written += 1
    if args.check:
        print(f"{len(stale)} generated contract(s) out of date: {', '.join(stale[:10])}" if stale else "contracts up to date")
        return 1 if stale else 0
    print(f"{written} generated contract files ({len(stale)} changed), {kept} hand-written kept, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
