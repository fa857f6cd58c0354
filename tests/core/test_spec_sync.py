"""scripts/sync_spec.py: the derived openapi.yaml keeps Mistral's facts, drops its prose and adds ours."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from sidecar.core import spec as spec_module

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sync_spec", REPO / "scripts" / "sync_spec.py")
sync_spec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_spec)

UPSTREAM = Path(os.environ.get("MISTRAL_REFERENCE_SPEC") or sync_spec.DEFAULT_UPSTREAM)
STREAMING_OPERATIONS = 16
UPSTREAM_OPERATIONS = 288


def operations(doc: dict):
    for key, item in doc["paths"].items():
        for method, op in item.items():
            if method in sync_spec.METHODS:
                yield method, key, op


def strings(node) -> set[str]:
    """Every string in a loaded document, keys included."""
    if isinstance(node, dict):
        return set().union(*(strings(k) | strings(v) for k, v in node.items())) if node else set()
    if isinstance(node, list):
        return set().union(*(strings(v) for v in node))
    return {node} if isinstance(node, str) else set()


@pytest.fixture(scope="module")
def committed() -> dict:
    return sync_spec.load_yaml(REPO / "openapi.yaml")


@pytest.fixture(scope="module")
def upstream() -> dict:
    if not UPSTREAM.exists():
        pytest.skip(f"../shared/reference/mistral-openapi.yaml not found: {UPSTREAM} (set MISTRAL_REFERENCE_SPEC)")
    return sync_spec.load_yaml(UPSTREAM)


# --- a tiny synthetic upstream: runs everywhere ----------------------------------------------------------

PROSE = "Upstream prose that must never reach our spec."


def tiny_upstream() -> dict:
    error = {"type": "object", "properties": {"detail": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tiny", "version": "9", "description": PROSE},
        "security": [{"ApiKey": []}],
        "tags": [{"name": "things", "description": PROSE}],
        "paths": {
            "/v1/things": {"post": {
                "tags": ["things"], "summary": PROSE, "description": PROSE, "operationId": "things_create",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ThingRequest"}}}},
                "responses": {
                    "200": {"description": PROSE, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": {"description": PROSE, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ThingError"}}}},
                    "422": {"description": PROSE, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}},
                }}},
            "/v1/things#stream": {"post": {
                "operationId": "things_create_stream", "description": PROSE,
                "responses": {"200": {"description": PROSE, "content": {"text/event-stream": {"schema": {
                    "type": "object", "properties": {"data": {"$ref": "#/$defs/Chunk"}},
                    "$defs": {"Chunk": {"type": "string", "description": PROSE}}}}}}}}},
            "/v1/things/{thing_id}": {"get": {
                "operationId": "things_get", "responses": {"200": {"description": PROSE}},
                "parameters": [{"name": "thing_id", "in": "path", "required": True, "description": PROSE,
                                "schema": {"type": "string", "description": PROSE}}]}},
        },
        "components": {
            "schemas": {
                "ThingRequest": {"allOf": [{"$ref": "#/components/schemas/ThingBase"}, {
                    "type": "object", "properties": {"stream": {"type": "boolean", "description": PROSE}}}]},
                "ThingBase": {
                    "type": "object", "description": PROSE, "additionalProperties": False, "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1, "description": PROSE},
                                   "description": {"type": "string", "nullable": True},
                                   "kind": {"enum": ["a", "b"], "x-speakeasy-unknown-values": "allow"}}},
                "ThingError": error,
                "HTTPValidationError": copy.deepcopy(error),
            },
            "securitySchemes": {"ApiKey": {"type": "http", "scheme": "bearer", "description": PROSE}},
        },
    }


def tiny_fragment() -> dict:
    return {
        "paths": {"/health/liveliness": {"get": {
            "operationId": "sidecar_health_liveliness", "security": [], "x-sidecar-handler": "health.liveliness",
            "responses": {"200": {"description": "Alive"}}}}},
        "components": {"schemas": {"ThingError": {"type": "object", "title": "ours"}}},
    }


@pytest.fixture(scope="module")
def tiny() -> dict:
    return sync_spec.derive_spec(tiny_upstream(), tiny_fragment(), "tiny.yaml", "0" * 64, "1.2.3")


def test_tiny_upstream_keeps_facts_and_drops_prose(tiny):
    assert PROSE not in strings(tiny)
    assert PROSE not in sync_spec.render(tiny)
    base = tiny["components"]["schemas"]["ThingBase"]
    assert base["additionalProperties"] is False and base["required"] == ["name"]
    assert base["properties"]["name"] == {"type": "string", "minLength": 1}
    assert base["properties"]["description"] == {"type": ["string", "null"]}  # a property, not prose; 3.0 nullable
    assert base["properties"]["kind"] == {"enum": ["a", "b"]}
    assert tiny["paths"]["/v1/things/{thing_id}"]["get"]["parameters"][0] == {
        "name": "thing_id", "in": "path", "required": True, "schema": {"type": "string"}}
    assert tiny["info"]["title"] == "mistral-sidecar" and "0" * 64 in tiny["info"]["description"]
    assert tiny["servers"] == [{"url": sync_spec.SERVER_URL}]


def test_tiny_upstream_marks_proxied_and_streaming_operations(tiny):
    ops = {op["operationId"]: op for _, _, op in operations(tiny)}
    assert ops["things_create"]["x-sidecar-streams"] is True  # `stream` reached through $ref and allOf
    assert ops["things_create_stream"]["x-sidecar-streams"] is True  # text/event-stream response
    assert "x-sidecar-streams" not in ops["things_get"]
    assert {op.get("x-sidecar-upstream") for op in ops.values()} == {"mistral", None}
    assert ops["things_create"]["summary"] == "Things create (proxied)"
    assert "POST /v1/things." in ops["things_create_stream"]["description"]


def test_inline_defs_refs_point_into_the_document(tiny):
    schema = tiny["paths"]["/v1/things#stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert schema["properties"]["data"]["$ref"] == (
        "#/paths/~1v1~1things%23stream/post/responses/200/content/text~1event-stream/schema/$defs/Chunk")


def test_every_proxied_operation_documents_sidecar_errors(tiny):
    responses = tiny["paths"]["/v1/things"]["post"]["responses"]
    ours = {"$ref": sync_spec.SIDECAR_ERROR_REF}
    assert set(sync_spec.SIDECAR_ERROR_STATUSES) <= set(responses)
    assert responses["401"]["content"]["application/json"]["schema"] == ours
    assert responses["400"]["content"]["application/json"]["schema"] == {
        "anyOf": [{"$ref": "#/components/schemas/ThingError"}, ours]}
    assert responses["422"]["content"]["application/json"]["schema"] == {"$ref": sync_spec.VALIDATION_ERROR_REF}
    assert "Retry-After" in responses["429"]["headers"]
    assert list(responses) == sorted(responses)
    get_404 = tiny["paths"]["/v1/things/{thing_id}"]["get"]["responses"]["404"]
    assert get_404["content"]["application/json"]["schema"] == ours


def test_fragment_routes_are_merged_and_win(tiny):
    health = tiny["paths"]["/health/liveliness"]["get"]
    assert health["x-sidecar-handler"] == "health.liveliness"
    assert "x-sidecar-upstream" not in health and set(health["responses"]) == {"200"}
    assert tiny["components"]["schemas"]["ThingError"] == {"type": "object", "title": "ours"}
    assert "SidecarError" in tiny["components"]["schemas"]


def test_operation_id_clash_fails_loudly():
    fragment = tiny_fragment()
    fragment["paths"]["/mine"] = {"get": {"operationId": "things_get", "responses": {}}}
    with pytest.raises(SystemExit, match="things_get"):
        sync_spec.derive_spec(tiny_upstream(), fragment, "tiny.yaml", "0" * 64, "1.2.3")


def test_main_writes_then_check_detects_drift(tmp_path, capsys):
    upstream, fragment, out = tmp_path / "up.yaml", tmp_path / "frag.yaml", tmp_path / "openapi.yaml"
    upstream.write_text(yaml.safe_dump(tiny_upstream()))
    fragment.write_text(yaml.safe_dump(tiny_fragment()))
    args = ["--upstream", str(upstream), "--fragment", str(fragment), "--out", str(out)]
    assert sync_spec.main(args) == 0 and (tmp_path / "openapi.parsed.json").is_file()
    first = out.read_bytes()
    assert sync_spec.main(args) == 0 and out.read_bytes() == first  # deterministic
    assert sync_spec.main([*args, "--check"]) == 0
    out.write_text(first.decode().replace("things_get", "things_fetch"))
    assert sync_spec.main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().out


# --- the committed openapi.yaml: runs everywhere ----------------------------------------------------------

def test_the_committed_parse_is_the_committed_yaml():
    """Workers read openapi.parsed.json (40 ms, 8 MB) instead of parsing the YAML (1.5 s, 55 MB):
    it must be the YAML's own parse, kept by scripts/sync_spec.py."""
    data = (REPO / "openapi.yaml").read_bytes()
    kept = json.loads(spec_module.parsed_path(REPO / "openapi.yaml").read_bytes())
    assert kept["sha256"] == hashlib.sha256(data).hexdigest(), "run scripts/sync_spec.py and commit"
    assert kept["document"] == yaml.load(data, Loader=yaml.CSafeLoader)


def test_a_yaml_edited_after_its_parse_was_kept_is_read_itself(tmp_path):
    spec = tmp_path / "openapi.yaml"
    spec.write_text("openapi: 3.1.0\npaths: {}\n")
    assert spec_module.write_parsed(spec) == tmp_path / "openapi.parsed.json"
    assert spec_module.load_document(spec) == {"openapi": "3.1.0", "paths": {}}
    spec.write_text("openapi: 3.1.0\npaths: {}\ninfo: {title: edited}\n")
    assert spec_module.load_document(spec)["info"] == {"title": "edited"}
    spec.write_text("openapi: 3.1.0\ninfo: {version: 2024-01-01}\n")  # a YAML date: JSON cannot say it
    with pytest.raises(ValueError, match="YAML-only"):
        spec_module.write_parsed(spec)


def test_committed_spec_marks_streaming_operations(committed):
    streaming = [op["operationId"] for _, _, op in operations(committed) if op.get("x-sidecar-streams")]
    assert len(streaming) == STREAMING_OPERATIONS
    assert "chat_completion_v1_chat_completions_post" in streaming


@pytest.mark.parametrize("status", sync_spec.SIDECAR_ERROR_STATUSES)
def test_committed_spec_documents_sidecar_errors(committed, status):
    missing = [f"{method.upper()} {key}" for method, key, op in operations(committed)
               if op.get("x-sidecar-upstream") == "mistral"
               and "application/json" not in op["responses"].get(status, {}).get("content", {})]
    assert not missing, f"{status} undocumented on {missing[:5]}"


def test_committed_spec_holds_the_fragment(committed):
    fragment = sync_spec.load_yaml(sync_spec.DEFAULT_FRAGMENT)
    for key, item in fragment["paths"].items():
        for method, op in item.items():
            assert committed["paths"][key][method] == op, "spec/sidecar.yaml changed: run scripts/sync_spec.py"
    handlers = {op["operationId"]: op.get("x-sidecar-handler") for _, _, op in operations(committed)}
    assert handlers["sidecar_health_liveliness"] == "health.liveliness"
    assert handlers["sidecar_health_readiness"] == "health.readiness"


def test_committed_request_schemas_compile(committed):
    """Every JSON request body compiles as draft 2020-12 once component refs resolve."""
    schemas = committed["components"]["schemas"]
    failures = []
    for method, key, op in operations(committed):
        media = (op.get("requestBody") or {}).get("content", {}).get("application/json")
        if media is None:
            continue
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [media["schema"]],
                "components": {"schemas": schemas}}
        try:
            jsonschema_rs.validator_for(root)
        except Exception as error:  # collect every failure, then report them together
            failures.append(f"{method.upper()} {key}: {error}")
    assert not failures, "\n".join(failures)


# --- against Mistral's published spec: skipped without ../shared --------------------------------------------

@pytest.mark.reference
def test_every_upstream_operation_is_kept(upstream, committed):
    theirs = {(m, k): op["operationId"] for m, k, op in operations(upstream)}
    ours = {(m, k): op["operationId"] for m, k, op in operations(committed) if op.get("x-sidecar-upstream")}
    assert len(theirs) == UPSTREAM_OPERATIONS
    assert ours == theirs


@pytest.mark.reference
def test_content_types_match_upstream(upstream, committed):
    for method, key, op in operations(upstream):
        mine = committed["paths"][key][method]
        assert set((mine.get("requestBody") or {}).get("content", {})) == \
            set((op.get("requestBody") or {}).get("content", {})), f"{method} {key}"
        for status, response in op["responses"].items():
            added = {"application/json"} if status in sync_spec.SIDECAR_ERROR_STATUSES else set()
            if status == "200" and op["operationId"] in sync_spec.UNDECLARED_STREAMS:
                added.add("text/event-stream")
            assert set(mine["responses"][status].get("content", {})) == \
                set(response.get("content", {})) | added, f"{method} {key} {status}"


@pytest.mark.reference
def test_component_constraints_are_kept(upstream, committed):
    theirs, ours = upstream["components"]["schemas"], committed["components"]["schemas"]
    assert set(theirs) <= set(ours)
    chat_theirs, chat_ours = theirs["ChatCompletionRequest"], ours["ChatCompletionRequest"]
    assert chat_ours["additionalProperties"] is False
    assert chat_ours["required"] == chat_theirs["required"]
    assert list(chat_ours["properties"]) == list(chat_theirs["properties"])
    enums = {name: s["enum"] for name, s in theirs.items() if "enum" in s}
    assert enums and all(ours[name]["enum"] == values for name, values in enums.items())


@pytest.mark.reference
def test_no_upstream_prose_survives(upstream, committed):
    prose = set()

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("description", "summary") and isinstance(value, str) and len(value) >= 40:
                    prose.add(value)
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(upstream)
    assert len(prose) > 100
    survivors = prose & strings(committed)
    assert not survivors, sorted(survivors)[:3]


@pytest.mark.reference
def test_committed_spec_has_no_drift(upstream, tmp_path):
    out = tmp_path / "openapi.yaml"
    assert sync_spec.main(["--upstream", str(UPSTREAM), "--out", str(out)]) == 0
    assert out.read_bytes() == (REPO / "openapi.yaml").read_bytes(), "run scripts/sync_spec.py and commit"
