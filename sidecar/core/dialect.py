"""The OpenAI dialect: OpenAI-style requests translated to what Mistral's schema takes, and nothing else.

Pure (no Flask, no requests). Most of OpenAI's chat and embeddings shape is already Mistral's
(``tool_choice`` named or ``"required"``, ``response_format`` json_schema, ``image_url`` parts
with ``detail``, ``reasoning_effort``, tool calls and results), so those pass untouched; only what
Mistral's ``additionalProperties: false`` schemas would refuse is renamed, reshaped or dropped.
Each operation has a short tuple of named steps (``STEPS``); every step edits the body in place
and says whether it changed anything, so an untouched body is forwarded byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable

# OpenAI clients call these without /v1 (a base_url of the sidecar root); served by the same operations.
OPENAI_PATHS = {"/chat/completions": "/v1/chat/completions", "/embeddings": "/v1/embeddings",
                "/models": "/v1/models"}
NATIVE_PREFIX = "/mistral/"  # LiteLLM-style native pass-through: never translated

CHAT = "chat_completion_v1_chat_completions_post"
EMBEDDINGS = "embeddings_v1_embeddings_post"
LIST_MODELS = "list_models_v1_models_get"
EMPTY_PARAMETERS = {"type": "object", "properties": {}}

Step = Callable[[dict], bool]


def applies(path: str) -> bool:
    """The dialect serves every route but the native ``/mistral/...`` pass-through."""
    return not path.startswith(NATIVE_PREFIX)


def rename(old: str, new: str) -> Step:
    """``old`` -> ``new``; when both are given the Mistral name wins and ``old`` is dropped."""
    def step(body: dict) -> bool:
        if old not in body:
            return False
        value = body.pop(old)
        body.setdefault(new, value)
        return True
    step.__name__ = f"rename_{old}"
    return step


def drop(name: str, *, only_if: Callable[[object], bool] = lambda value: True) -> Step:
    """Drop a field Mistral refuses and whose meaning it already has (or that asks for nothing)."""
    def step(body: dict) -> bool:
        if name in body and only_if(body[name]):
            del body[name]
            return True
        return False
    step.__name__ = f"drop_{name}"
    return step


def _falsy(value: object) -> bool:
    return not value


# OpenAI message fields that Mistral's message schemas refuse (additionalProperties: false) and that
# carry nothing Mistral could use: a participant name, an assistant's refusal/audio/annotations.
MESSAGE_EXTRAS = {
    "system": frozenset({"name"}),
    "user": frozenset({"name"}),
    "assistant": frozenset({"name", "refusal", "audio", "function_call", "annotations"}),
}


def _message(message: dict) -> bool:
    changed = False
    if message.get("role") == "developer":  # OpenAI's newer name for the system role
        message["role"], changed = "system", True
    for name in MESSAGE_EXTRAS.get(message.get("role"), ()) & message.keys():
        del message[name]
        changed = True
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                changed |= _content_part(part)
    return changed


def _content_part(part: dict) -> bool:
    """OpenAI ``input_audio: {data, format}`` -> Mistral's ``input_audio: <base64>``; images already match."""
    audio = part.get("input_audio")
    if part.get("type") == "input_audio" and isinstance(audio, dict) and "data" in audio:
        part["input_audio"] = audio["data"]
        return True
    return False


def messages(body: dict) -> bool:
    found = body.get("messages")
    if not isinstance(found, list):
        return False
    changed = False
    for message in found:
        if isinstance(message, dict):
            changed |= _message(message)
    return changed


def tools(body: dict) -> bool:
    """OpenAI lets a function omit ``parameters``; Mistral's ``Function`` requires them."""
    changed = False
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and "name" in function and function.get("parameters") is None:
            function["parameters"] = dict(EMPTY_PARAMETERS)
            changed = True
    return changed


STEPS: dict[str, tuple[Step, ...]] = {
    CHAT: (
        rename("max_completion_tokens", "max_tokens"),
        rename("seed", "random_seed"),
        drop("stream_options"),  # Mistral puts usage on the last chunk anyway
        drop("store", only_if=_falsy),
        drop("logprobs", only_if=_falsy),
        drop("function_call", only_if=lambda v: v in (None, "none", "auto")),
        messages,
        tools,
    ),
    EMBEDDINGS: (
        rename("dimensions", "output_dimension"),
    ),
}


def translate(operation_id: str, body: object) -> bool:
    """Translate ``body`` in place for ``operation_id``; True when anything changed."""
    steps = STEPS.get(operation_id)
    if not steps or not isinstance(body, dict):
        return False
    changed = False
    for step in steps:
        changed |= step(body)
    return changed


def with_models(content: bytes, cards: list[dict]) -> bytes:
    """A model list (``{"object":"list","data":[...]}``) with the configured aliases appended."""
    if not cards:
        return content
    try:
        listing = json.loads(content)
    except ValueError:
        return content
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return content
    known = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
    by_id = {m.get("id"): m for m in listing["data"] if isinstance(m, dict)}
    for card in cards:
        if card["id"] in known:
            continue
        upstream = by_id.get(card.get("root"))
        entry = {**upstream, **card} if upstream else dict(card)
        entry.pop("aliases", None)
        listing["data"].append(entry)
    listing.setdefault("object", "list")
    return json.dumps(listing).encode()
