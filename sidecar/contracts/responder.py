"""The responder: fits a generic answer to the request it answers, where the contract leaves that open.

Pure (no Flask, no requests). It runs only on answers picked as generic (no ``match``, not recorded for
exactly this request) or from the shipped fallback; an exchange matched by its ``match`` block or recorded
for this very request is served as written. What it fits:

- ``model``: the model asked for; ``id`` and ``created``: new for each request, yet the same on every run
  (a hash of the request and how many times it was asked); ``GET .../{id}``: the id asked for;
- chat with ``tools`` (and ``tool_choice`` not ``none``): a call of the named tool (``tool_choice`` naming
  one), else the first, with arguments built from its ``parameters`` schema;
- ``response_format`` ``json_schema``: content built from the schema (``json_object``: ``{}``);
- embeddings: one vector per input, of ``output_dimension`` numbers when asked;
- ``usage``: tokens counted from the request and the content (4 characters a token).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
from collections import Counter

from sidecar.contracts.fileformat import Asked
from sidecar.core.spec import follow, resolve

EPOCH = 1764064800  # 2025-11-25T10:00:00Z: the base of every ``created``
FORMATS = {"date-time": "2025-11-25T10:00:00Z", "date": "2025-11-25", "time": "10:00:00", "email": "ada@example.com",
           "uuid": "7f3b1c2e-5a4d-4e8f-9b6a-1c2d3e4f5a6b", "uri": "https://example.com", "url": "https://example.com"}


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def instance(schema, root: dict | None = None, depth: int = 0):
    """The simplest value a JSON schema accepts (every property given, minimal lengths and bounds)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema and schema["$ref"].startswith("#/"):
        node = follow(root, schema["$ref"], {})
        node = node if isinstance(node, dict) else {}
        return instance({**node, **{k: v for k, v in schema.items() if k != "$ref"}}, root, depth + 1)
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if schema.get("enum"):
        return copy.deepcopy(schema["enum"][0])
    if "allOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = part if "$ref" not in part else {"properties": {}, **_deref(part, root)}
            merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            merged.setdefault("type", part.get("type"))
        return instance(merged, root, depth + 1)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            branches = [b for b in schema[key] if _deref(b, root).get("type") != "null"] or schema[key]
            return instance(branches[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind or ("object" if "properties" in schema else "array" if "items" in schema else "string")
    if kind == "object":
        return {name: instance(sub, root, depth + 1) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance(schema.get("items") or {}, root, depth + 1) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        value = min(max(low, 0), schema.get("maximum", math.inf))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = FORMATS.get(schema.get("format"), "example")
    text = text.ljust(schema.get("minLength", 0), "x")
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _deref(schema: dict, root: dict) -> dict:
    """What ``schema`` names in a client's schema ``root``; a ``$ref`` that names nothing is ``{}``."""
    schema = resolve(root, schema, {})
    return schema if isinstance(schema, dict) else {}


class Responder:
    """Fits generic answers to requests; one per replay transport (its counter makes ids differ per request)."""

    def __init__(self, seed: str = "mistral-sidecar"):
        self.seed = seed
        self._asked: Counter = Counter()
        self._lock = threading.Lock()

    def digest(self, asked: Asked) -> str:
        key = json.dumps([asked.method, asked.path, asked.query, asked.json, asked.form], sort_keys=True, default=str)
        with self._lock:
            self._asked[key] += 1
            times = self._asked[key]
        return hashlib.sha256(f"{self.seed}|{times}|{key}".encode()).hexdigest()

    def fit_json(self, body, asked: Asked, params: dict):
        """A plain JSON answer fitted to ``asked``."""
        if not isinstance(body, dict):
            return body
        body = copy.deepcopy(body)
        digest = self.digest(asked)
        self._identity(body, asked, params, digest)
        request = asked.json if isinstance(asked.json, dict) else {}
        if body.get("object") == "chat.completion" and body.get("choices"):
            self._chat(body, request, digest)
        if isinstance(body.get("data"), list) and body["data"] and body["data"][0].get("object") == "embedding":
            self._embeddings(body, request, digest)
        return body

    def fit_events(self, events: list[dict], asked: Asked, params: dict) -> list[dict]:
        """A streamed answer fitted to ``asked``: the same model, id and created in every event; a chat stream
        the request shapes (tools, ``response_format``) is the fitted plain answer as two chunks."""
        request = asked.json if isinstance(asked.json, dict) else {}
        digest = self.digest(asked)
        chunk = next((e["data"] for e in events if isinstance(e.get("data"), dict)), {})
        if chunk.get("object") == "chat.completion.chunk" and (_calls_tool(request) or _schema_of(request)):
            return self._shaped_stream(chunk, asked, request, digest)
        out = []
        for event in events:
            event = copy.deepcopy(event)
            if isinstance(event.get("data"), dict):
                self._identity(event["data"], asked, params, digest)
            out.append(event)
        return out

    # -- the fitted parts ------------------------------------------------------------------------------

    @staticmethod
    def _identity(body: dict, asked: Asked, params: dict, digest: str) -> None:
        if "model" in body and asked.model:
            body["model"] = asked.model
        if isinstance(body.get("created"), int):
            body["created"] = EPOCH + int(digest[:8], 16) % 86400
        if not isinstance(body.get("id"), str):
            return
        ids = [v for k, v in params.items() if k == "id" or k.endswith("_id")]
        if ids and asked.method in ("GET", "PATCH", "PUT", "DELETE") and (_is_uuid(ids[-1]) or not _is_uuid(body["id"])):
            body["id"] = ids[-1]  # (a UUID stays a UUID: an id of another shape is not what this object carries)
        else:
            body["id"] = _like(body["id"], digest)

    def _chat(self, body: dict, request: dict, digest: str) -> None:
        choice = body["choices"][0]
        message = choice.setdefault("message", {"role": "assistant"})
        if _calls_tool(request):
            tool = _chosen_tool(request)
            arguments = json.dumps(instance(tool.get("parameters") or {"type": "object"}))
            message.update(content="", tool_calls=[{"id": digest[:9], "type": "function", "index": 0,
                                                    "function": {"name": tool.get("name"), "arguments": arguments}}])
            choice["finish_reason"] = "tool_calls"
        elif (schema := _schema_of(request)) is not None:
            message.update(content=json.dumps(instance(schema)), tool_calls=None)
            choice["finish_reason"] = "stop"
        completion = message.get("content") or "" if isinstance(message.get("content"), str) else ""
        completion += "".join(c["function"]["arguments"] for c in message.get("tool_calls") or ())
        body["usage"] = _usage(_prompt_text(request), completion)

    def _shaped_stream(self, chunk: dict, asked: Asked, request: dict, digest: str) -> list[dict]:
        base = {k: chunk.get(k) for k in ("id", "object", "created", "model")}
        self._identity(base, asked, {}, digest)
        plain = {**base, "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
        self._chat(plain, request, digest)
        message, choice = plain["choices"][0]["message"], plain["choices"][0]
        delta = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = message["tool_calls"]
        first = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        last = {**base, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": choice["finish_reason"]}],
                "usage": plain["usage"]}
        return [{"data": first}, {"data": last}, {"data": "[DONE]"}]

    @staticmethod
    def _embeddings(body: dict, request: dict, digest: str) -> None:
        inputs = request.get("input", request.get("inputs", []))
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        size = request.get("output_dimension") or len(body["data"][0].get("embedding") or []) or 8
        body["data"] = [{"object": "embedding", "index": i,
                         "embedding": [round(((int(digest[(i + j) % 56:(i + j) % 56 + 8], 16) % 2000) - 1000) / 1000, 3)
                                       for j in range(size)]}
                        for i in range(len(inputs))]
        used = sum(tokens(str(text)) for text in inputs)
        body["usage"] = {**body.get("usage", {}), "prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}


def _is_uuid(text: str) -> bool:
    return len(text) == 36 and text.count("-") == 4


def _like(old: str, digest: str) -> str:
    """A new id shaped like ``old``: a UUID for a UUID, else the same prefix (``cmpl-``) and hex digits."""
    if _is_uuid(old):
        return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-a{digest[17:20]}-{digest[20:32]}"
    cut = max(old.rfind("-"), old.rfind("_")) + 1
    return old[:cut] + digest[:max(8, min(32, len(old) - cut))]


def _functions(request: dict) -> list[dict]:
    """The function tools of a request (connectors and built-in tools have no arguments to make up)."""
    return [t["function"] for t in request.get("tools") or () if isinstance(t, dict)
            and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]


def _calls_tool(request: dict) -> bool:
    return bool(_functions(request)) and request.get("tool_choice") != "none"


def _chosen_tool(request: dict) -> dict:
    functions = _functions(request)
    choice = request.get("tool_choice")
    named = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    return next((f for f in functions if f.get("name") == named), functions[0] if functions else {})


def _schema_of(request: dict) -> dict | None:
    fmt = request.get("response_format") or {}
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
    return {"type": "object", "properties": {}} if fmt.get("type") == "json_object" else None


def _prompt_text(request: dict) -> str:
    parts = [m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
             for m in request.get("messages") or () if isinstance(m, dict)]
    return "".join(p or "" for p in parts) + (json.dumps(request["tools"]) if request.get("tools") else "")


def _usage(prompt: str, completion: str) -> dict:
    used = {"prompt_tokens": tokens(prompt), "completion_tokens": tokens(completion)}
    return {**used, "total_tokens": used["prompt_tokens"] + used["completion_tokens"]}
