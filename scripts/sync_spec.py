"""Derive the sidecar's openapi.yaml from Mistral's published OpenAPI spec, plus spec/sidecar.yaml.

Keeps every route, schema and constraint, replaces upstream prose with generated text, marks proxied and
streaming operations and documents the errors the sidecar answers itself; re-run it when Mistral's spec changes.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import os
import re
import sys
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

import yaml

from sidecar.core.spec import write_parsed

REPO = Path(__file__).resolve().parents[1]
DEFAULT_UPSTREAM = REPO.parent / "shared" / "reference" / "mistral-openapi.yaml"
DEFAULT_FRAGMENT = REPO / "spec" / "sidecar.yaml"
DEFAULT_OUT = REPO / "openapi.yaml"
SERVER_URL = "http://127.0.0.1:4000"

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Statuses the sidecar itself can answer on any proxied operation (see sidecar/errors.py).
SIDECAR_ERROR_STATUSES = ("400", "401", "403", "404", "405", "413", "415", "422", "429", "500", "501", "502", "503",
                          "504")
SIDECAR_ERROR_REF = "#/components/schemas/SidecarError"
VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"
SIDECAR_ERROR_SCHEMA = {
    "type": "object",
    "title": "SidecarError",
    "properties": {
        "object": {"const": "error"},
        "message": {"type": "string"},
        "type": {"type": "string"},
        "param": {"type": ["string", "null"]},
        "code": {"type": ["string", "integer", "null"]},
    },
    "required": ["object", "message", "type"],
    "description": "An error answered by the sidecar itself (auth, limits, budget, validation, upstream failure).",
}
RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying (Mistral may send an HTTP date instead).",
    "schema": {"type": "string"},
}

# Operations Mistral streams (SSE) when the body says stream: true although its spec declares JSON only; SDK 1.x
# streams agents completions this way. Declared here so clients, contracts and schemathesis may rely on it.
UNDECLARED_STREAMS = {"agents_completion_v1_agents_completions_post": "#/components/schemas/CompletionEvent"}

# Required fields Mistral's spec lists although it declares no such property and no answer carries one (a chat
# completion has no "data"); kept, they would make every real answer fail response validation.
PHANTOM_REQUIRED = {"ChatCompletionResponse": ("data",)}

# Schema keywords whose value is a map of name -> schema, a schema, or a list of schemas.
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_ONE = ("items", "not", "contains", "propertyNames", "additionalProperties", "unevaluatedProperties",
              "unevaluatedItems", "additionalItems", "if", "then", "else")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
# Upstream prose and SDK-generator hints, not facts about the wire.
PROSE = ("description", "summary", "$comment")


# --- schemas -------------------------------------------------------------------------------------------

def escape(name) -> str:
    """One JSON pointer segment as it may appear in a URI fragment (RFC 6901, sections 4 and 6)."""
    return quote(str(name).replace("~", "~0").replace("/", "~1"), safe="$-_.~!&'()*+,;=:@")


def pointer(*parts: str) -> str:
    """A JSON pointer fragment (RFC 6901) from path parts."""
    return "#/" + "/".join(escape(p) for p in parts)


def clean_schema(node, where: str, defs_base: str | None = None):
    """Copy a JSON schema without prose or vendor hints; 3.0 `nullable` becomes a 3.1 null type.

    `where` is this schema's JSON pointer in the output document: pydantic-style `#/$defs/X` refs (relative to
    an inline schema holding `$defs`, unresolvable from the document root) are rewritten to point there.
    """
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    if "$defs" in node:
        defs_base = where
    out = {}
    for key, value in node.items():
        if key in PROSE or key.startswith("x-") or key == "nullable":
            continue
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: clean_schema(sub, f"{where}/{key}/{escape(name)}", defs_base)
                        for name, sub in value.items()}
        elif key in SCHEMA_ONE and isinstance(value, dict):
            out[key] = clean_schema(value, f"{where}/{key}", defs_base)
        elif key in SCHEMA_LISTS and isinstance(value, list):
            out[key] = [clean_schema(sub, f"{where}/{key}/{i}", defs_base) for i, sub in enumerate(value)]
        elif key == "$ref":
            out[key] = local_ref(value, defs_base)
        elif key == "discriminator":
            out[key] = {k: ({n: local_ref(r, defs_base) for n, r in v.items()} if k == "mapping" else v)
                        for k, v in value.items() if k not in PROSE}
        else:
            out[key] = copy.deepcopy(value)
    if node.get("nullable") is True:
        out = allow_null(out)
    return out


def local_ref(ref: str, defs_base: str | None) -> str:
    if defs_base and isinstance(ref, str) and ref.startswith("#/$defs/"):
        return defs_base + ref[1:]
    return ref


def allow_null(schema: dict) -> dict:
    """OpenAPI 3.0's `nullable: true`, said the 3.1 way so JSON Schema validators honour it."""
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        schema["type"] = [*kind, "null"]
    elif "$ref" in schema:
        ref = schema.pop("$ref")
        schema["anyOf"] = [{"$ref": ref}, {"type": "null"}]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


# --- operations ----------------------------------------------------------------------------------------

def clean_media(media: dict, where: str) -> dict:
    out = {}
    if "schema" in media:
        out["schema"] = clean_schema(media["schema"], f"{where}/schema")
    if "example" in media:
        out["example"] = copy.deepcopy(media["example"])
    if "examples" in media:
        out["examples"] = {name: {k: copy.deepcopy(v) for k, v in ex.items() if k in ("value", "externalValue", "$ref")}
                           for name, ex in media["examples"].items()}
    if "encoding" in media:
        out["encoding"] = {name: {k: copy.deepcopy(v) for k, v in enc.items() if k in ("contentType", "style", "explode", "allowReserved")}
                           for name, enc in media["encoding"].items()}
    return out


def clean_content(content: dict, where: str) -> dict:
    return {ctype: clean_media(media, f"{where}/{escape(ctype)}") for ctype, media in content.items()}


def clean_parameter(param: dict, where: str) -> dict:
    if "$ref" in param:
        return {"$ref": param["$ref"]}
    out = {k: copy.deepcopy(param[k]) for k in ("name", "in", "required", "deprecated", "style", "explode",
                                                "allowEmptyValue", "allowReserved") if k in param}
    if "schema" in param:
        out["schema"] = clean_schema(param["schema"], f"{where}/schema")
    if "content" in param:
        out["content"] = clean_content(param["content"], f"{where}/content")
    for key in ("example", "examples"):
        if key in param:
            out[key] = copy.deepcopy(param[key])
    return out


def response_description(status: str) -> str:
    if status.startswith("2"):
        return "Success"
    if status == "422":
        return "Validation error"
    try:
        return HTTPStatus(int(status)).phrase
    except ValueError:
        return "Error" if status == "default" else f"Status {status}"


def clean_response(status: str, response: dict, where: str) -> dict:
    if "$ref" in response:
        return {"$ref": response["$ref"]}
    out = {"description": response_description(status)}
    if "headers" in response:
        out["headers"] = {name: {"schema": clean_schema(h.get("schema", {}), f"{where}/headers/{escape(name)}/schema"),
                                 **({"required": h["required"]} if "required" in h else {})}
                          for name, h in response["headers"].items()}
    if "content" in response:
        out["content"] = clean_content(response["content"], f"{where}/content")
    return out


def summary_words(operation_id: str, method: str, path: str) -> str:
    """'chat_completion_v1_chat_completions_post' -> 'Chat completion' (FastAPI suffix and API noise dropped)."""
    fastapi_suffix = re.sub(r"\W", "_", path) + "_" + method
    name = operation_id[: -len(fastapi_suffix)] if operation_id.endswith(fastapi_suffix) else operation_id
    words = [w for w in name.split("_") if w and w not in ("api", "routes", "v1", "v2")]
    return " ".join(words).capitalize() or operation_id


def operation_text(method: str, key: str, op: dict, streams: bool) -> tuple[str, str]:
    """Our generated summary and description for a proxied operation."""
    path, _, variant = key.partition("#")
    summary = f"{summary_words(op['operationId'], method, path)} (proxied)"
    text = [f"Forwarded to Mistral as {method.upper()} {path}."]
    if variant:
        text.append(f"Shares its URL with other operations; listed as the '{variant}' variant.")
    if streams and method == "get":
        text.append("Answers with server-sent events.")
    elif streams:
        text.append("Streams server-sent events when the body has stream: true.")
    if op.get("deprecated"):
        text.append("Deprecated by Mistral.")
    return summary, " ".join(text)


def resolve(schema, schemas: dict) -> dict:
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) \
            and schema["$ref"].startswith("#/components/schemas/"):
        schema = schemas.get(schema["$ref"].rsplit("/", 1)[1], {})
    return schema if isinstance(schema, dict) else {}


def top_properties(schema, schemas: dict) -> set[str]:
    """Property names of a schema after $ref, including those merged in through allOf."""
    schema = resolve(schema, schemas)
    names = set(schema.get("properties") or {})
    for part in schema.get("allOf", []):
        names |= top_properties(part, schemas)
    return names


def can_stream(op: dict, schemas: dict) -> bool:
    """An SSE response, or a request body with a `stream` switch (JSON or form)."""
    if any("text/event-stream" in (r.get("content") or {}) for r in op.get("responses", {}).values()):
        return True
    content = (op.get("requestBody") or {}).get("content") or {}
    return any("stream" in top_properties(media.get("schema"), schemas) for media in content.values())


def derive_operation(method: str, key: str, op: dict, schemas: dict) -> dict:
    where = f"{pointer('paths', key)}/{method}"
    streams = can_stream(op, schemas)
    summary, description = operation_text(method, key, op, streams)
    out = {"tags": list(op.get("tags", [])), "summary": summary, "description": description,
           "operationId": op["operationId"]}
    if "deprecated" in op:
        out["deprecated"] = op["deprecated"]
    if "security" in op:
        out["security"] = copy.deepcopy(op["security"])
    if "parameters" in op:
        out["parameters"] = [clean_parameter(p, f"{where}/parameters/{i}") for i, p in enumerate(op["parameters"])]
    if "requestBody" in op:
        body = op["requestBody"]
        out["requestBody"] = {k: v for k, v in (("required", body.get("required")),) if v is not None}
        out["requestBody"]["content"] = clean_content(body.get("content", {}), f"{where}/requestBody/content")
    out["responses"] = {status: clean_response(str(status), r, f"{where}/responses/{escape(status)}")
                        for status, r in op.get("responses", {}).items()}
    event_schema = UNDECLARED_STREAMS.get(op["operationId"])
    if event_schema and "200" in out["responses"]:
        out["responses"]["200"].setdefault("content", {})["text/event-stream"] = {"schema": {"$ref": event_schema}}
    out["x-sidecar-upstream"] = "mistral"
    if streams:
        out["x-sidecar-streams"] = True
    return out


def derive_paths(paths: dict, schemas: dict) -> dict:
    out = {}
    for key, item in paths.items():
        out[key] = {}
        if "parameters" in item:
            out[key]["parameters"] = [clean_parameter(p, f"{pointer('paths', key)}/parameters/{i}")
                                      for i, p in enumerate(item["parameters"])]
        for method, op in item.items():
            if method in METHODS:
                out[key][method] = derive_operation(method, key, op, schemas)
    return out


# --- sidecar errors, fragment, document ----------------------------------------------------------------

def error_response(status: str) -> dict:
    ref = VALIDATION_ERROR_REF if status == "422" else SIDECAR_ERROR_REF
    response = {"description": response_description(status),
                "content": {"application/json": {"schema": {"$ref": ref}}}}
    if status == "429":
        response["headers"] = {"Retry-After": copy.deepcopy(RETRY_AFTER_HEADER)}
    return response


def add_sidecar_errors(op: dict) -> None:
    """Document every status the sidecar may answer itself; keep upstream's schema alongside ours."""
    responses = op.setdefault("responses", {})
    for status in SIDECAR_ERROR_STATUSES:
        ours = error_response(status)
        if status not in responses:
            responses[status] = ours
            continue
        response = responses[status]
        content = response.setdefault("content", {})
        media = content.get("application/json")
        our_schema = ours["content"]["application/json"]["schema"]
        if media is None:
            content["application/json"] = ours["content"]["application/json"]
        elif media.get("schema") != our_schema and our_schema not in media.get("schema", {}).get("anyOf", []):
            media["schema"] = {"anyOf": [media["schema"], our_schema]} if "schema" in media else our_schema
        for name, header in ours.get("headers", {}).items():
            response.setdefault("headers", {}).setdefault(name, header)
    op["responses"] = dict(sorted(responses.items(), key=lambda item: (not str(item[0]).isdigit(), str(item[0]))))


def merge_fragment(doc: dict, fragment: dict) -> None:
    """Merge our hand-written routes and components into the document; ours win, duplicate operationIds fail."""
    for key, item in (fragment.get("paths") or {}).items():
        doc["paths"].setdefault(key, {}).update(copy.deepcopy(item))
    for section, entries in (fragment.get("components") or {}).items():
        doc["components"].setdefault(section, {}).update(copy.deepcopy(entries))
    names = {tag["name"] for tag in doc["tags"]}
    doc["tags"] += [{"name": t["name"]} for t in fragment.get("tags") or [] if t["name"] not in names]
    seen: dict[str, str] = {}
    for key, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {key}"
            if op.get("operationId") in seen:
                raise SystemExit(f"operationId {op['operationId']!r} is used by both {seen[op['operationId']]} "
                                 f"and {where}; rename it in {DEFAULT_FRAGMENT.relative_to(REPO)}")
            seen[op.get("operationId")] = where


def security_schemes(schemes: dict) -> dict:
    out = {}
    for name, scheme in schemes.items():
        kept = {k: copy.deepcopy(v) for k, v in scheme.items() if k in ("type", "scheme", "bearerFormat", "in", "name")}
        if kept.get("type") == "http":
            kept["description"] = f"HTTP {kept.get('scheme', '')} token in the Authorization header."
        elif kept.get("type") == "apiKey":
            kept["description"] = f"API key in the {kept.get('name')} {kept.get('in')}."
        out[name] = kept
    return out


def derive_spec(upstream: dict, fragment: dict, source: str, sha256: str, version: str) -> dict:
    """The whole derived document: upstream facts, our words, sidecar errors, our own routes."""
    schemas = upstream.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in schemas:
        raise SystemExit("upstream has no components.schemas.HTTPValidationError, which our 422 responses reuse")
    info = upstream.get("info", {})
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "mistral-sidecar",
            "version": version,
            "description": (f"Mirrors Mistral's public API ({info.get('title')} {info.get('version')}) as published "
                            f"in {source} (sha256 {sha256}). Operations marked x-sidecar-upstream are proxied to "
                            "Mistral; the others are the sidecar's own, from spec/sidecar.yaml. "
                            "Generated by scripts/sync_spec.py: edit those, not this file."),
        },
        "servers": [{"url": SERVER_URL}],
        "security": copy.deepcopy(upstream.get("security", [])),
        "tags": [{"name": tag["name"]} for tag in upstream.get("tags", [])],
        "paths": derive_paths(upstream.get("paths", {}), schemas),
        "components": {
            "schemas": {name: clean_schema(s, pointer("components", "schemas", name)) for name, s in schemas.items()},
            "securitySchemes": security_schemes(upstream.get("components", {}).get("securitySchemes", {})),
        },
    }
    doc["components"]["schemas"]["SidecarError"] = copy.deepcopy(SIDECAR_ERROR_SCHEMA)
    for name, phantoms in PHANTOM_REQUIRED.items():
        drop_required(doc["components"]["schemas"].get(name, {}), phantoms)
    for item in doc["paths"].values():
        for method, op in item.items():
            if method in METHODS:
                add_sidecar_errors(op)
    require_stream_flag(doc)
    merge_fragment(doc, fragment)
    return doc


def require_stream_flag(doc: dict) -> None:
    """A `#stream` twin's body must say `stream: true`. Mistral's spec gives the flag a default of true there (an
    SDK-generator device: its SDKs always send it), but the twin shares its URL with the plain operation and Mistral
    picks by the body: a request without the flag gets the plain JSON answer, so the twin cannot describe it."""
    schemas = doc["components"]["schemas"]
    for key, item in doc["paths"].items():
        if not key.endswith("#stream"):
            continue
        for method, op in item.items():
            content = (op.get("requestBody") or {}).get("content") or {} if method in METHODS else {}
            for media in content.values():
                schema = resolve(media.get("schema"), schemas)
                if "stream" in top_properties(schema, schemas) and "stream" not in schema.get("required", []):
                    schema["required"] = [*schema.get("required", []), "stream"]


def drop_required(schema: dict, names: tuple[str, ...]) -> None:
    """Remove names from a schema's required lists, its own and those of its allOf parts."""
    for part in [schema, *schema.get("allOf", [])]:
        if "required" in part:
            part["required"] = [r for r in part["required"] if r not in names]


def render(doc: dict) -> str:
    header = "# Generated by scripts/sync_spec.py from Mistral's OpenAPI spec and spec/sidecar.yaml. Do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


class SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe loader that also reads YAML 1.2 floats without a dot (`1e+09`), which YAML 1.1 leaves as strings."""


SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=SpecLoader)


def project_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    return match.group(1) if match else "0.0.0"


def build(upstream_path: Path, fragment_path: Path) -> str:
    raw = upstream_path.read_bytes()
    fragment = load_yaml(fragment_path) if fragment_path.exists() else {}
    doc = derive_spec(load_yaml(upstream_path), fragment or {}, upstream_path.name,
                      hashlib.sha256(raw).hexdigest(), project_version())
    return render(doc)


def drift_summary(old: str, new: str, name: str) -> str:
    diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{name} (on disk)", f"{name} (derived)",
                                     n=0, lineterm=""))
    added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
    shown = "\n".join(diff[:20]) + ("\n..." if len(diff) > 20 else "")
    return f"{name} is out of date: +{added} -{removed} lines. Run scripts/sync_spec.py.\n{shown}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path,
                        default=Path(os.environ.get("MISTRAL_REFERENCE_SPEC") or DEFAULT_UPSTREAM))
    parser.add_argument("--fragment", type=Path, default=DEFAULT_FRAGMENT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    args = parser.parse_args(argv)
    if not args.upstream.exists():
        print(f"upstream spec not found: {args.upstream} (set MISTRAL_REFERENCE_SPEC or pass --upstream)",
              file=sys.stderr)
        return 2
    text = build(args.upstream, args.fragment)
    if args.check:
        old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if old != text:
            print(drift_summary(old, text, args.out.name))
            return 1
        print(f"{args.out.name} is up to date")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode())} bytes) and {write_parsed(args.out).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
