"""Mistral chat completions <-> Bedrock's Converse API, both ways, plain and streamed. Pure data.

Translated: messages (system, user, assistant with tool calls, tool results), text and inline
(data URI) images, tools, ``tool_choice``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``;
answers with finish reasons and usage. Fields Converse has no equivalent for are refused with a
400 naming them (``UNTRANSLATED``), never dropped silently.
"""

from __future__ import annotations

import json
import re

from sidecar.core.errors import BadRequest

# Mistral fields with no Converse equivalent: refused when set to anything but their default.
UNTRANSLATED = {"n": 1, "random_seed": None, "presence_penalty": 0, "frequency_penalty": 0, "safe_prompt": False,
                "prediction": None, "prompt_mode": None, "guardrails": None}
IGNORED = frozenset({"model", "stream", "parallel_tool_calls", "metadata", "user", "stream_options"})
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length",
          "model_context_window_exceeded": "model_length", "content_filtered": "stop",
          "guardrail_intervened": "stop", "malformed_model_output": "error", "malformed_tool_use": "error"}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
_DATA_URI = re.compile(r"data:(?P<type>[\w/+.-]+);base64,(?P<data>.*)", re.S)
# Bedrock's error type -> (status, Mistral error type, code)
ERRORS = {
    "ThrottlingException": (429, "rate_limit_error", "rate_limited"),
    "ServiceQuotaExceededException": (429, "rate_limit_error", "quota_exceeded"),
    "ValidationException": (400, "invalid_request_error", "invalid_request"),
    "AccessDeniedException": (403, "permission_error", "access_denied"),
    "UnrecognizedClientException": (401, "authentication_error", "invalid_api_key"),
    "ResourceNotFoundException": (404, "invalid_request_error", "model_not_found"),
    "ModelNotReadyException": (429, "rate_limit_error", "model_not_ready"),
    "ModelTimeoutException": (408, "upstream_error", "upstream_timeout"),
    "ModelErrorException": (424, "upstream_error", "model_error"),
    "ModelStreamErrorException": (424, "upstream_error", "model_error"),
    "InternalServerException": (500, "upstream_error", "upstream_error"),
    "ServiceUnavailableException": (503, "upstream_error", "upstream_unavailable"),
}


def error_kind(error_type: str | None, status: int) -> tuple[int, str, str]:
    """A Bedrock error (``x-amzn-ErrorType`` / ``:exception-type``) as (status, Mistral type, code)."""
    name = (error_type or "").split(":")[0].split("#")[-1]
    if name in ERRORS:
        return ERRORS[name]
    if status == 429:
        return 429, "rate_limit_error", "rate_limited"
    if status >= 500:
        return status, "upstream_error", "upstream_error"
    return status, "invalid_request_error", "invalid_request"


def _text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
    raise BadRequest(f"{where} must be a string or a list of chunks.", param=where)


def _blocks(content, where: str) -> list[dict]:
    """Mistral content (a string or chunks) as Converse content blocks."""
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or a list of chunks.", param=where)
    blocks = []
    for chunk in content:
        kind = chunk.get("type") if isinstance(chunk, dict) else None
        if kind == "text":
            blocks.append({"text": chunk.get("text", "")})
        elif kind == "image_url":
            url = chunk.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            match = _DATA_URI.fullmatch(url or "")
            if not match or match["type"].lower() not in IMAGE_FORMATS:
                raise BadRequest("Bedrock takes images inline only: send a base64 data URI (png, jpeg, gif or webp).",
                                 param=where, code="unsupported_on_bedrock")
            blocks.append({"image": {"format": IMAGE_FORMATS[match["type"].lower()],
                                     "source": {"bytes": match["data"].strip()}}})
        else:
            raise BadRequest(f"Chunks of type {kind!r} cannot be sent to Bedrock.", param=where,
                             code="unsupported_on_bedrock")
    return blocks


def _arguments(raw, where: str):
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        raise BadRequest(f"{where} must be a JSON object.", param=where) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object.", param=where)
    return value


def _message(message: dict, i: int) -> tuple[str, list[dict]]:
    role, where = message.get("role"), f"messages[{i}]"
    if role == "user":
        return "user", _blocks(message.get("content"), f"{where}.content")
    if role == "assistant":
        blocks = _blocks(message.get("content"), f"{where}.content")
        for j, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            blocks.append({"toolUse": {"toolUseId": call.get("id") or f"call_{i}_{j}", "name": function.get("name"),
                                       "input": _arguments(function.get("arguments"), f"{where}.tool_calls[{j}]")}})
        return "assistant", blocks
    if role == "tool":
        result = {"toolUseId": message.get("tool_call_id") or "", "content": [{"text": _text(message.get("content"),
                                                                                       f"{where}.content")}]}
        return "user", [{"toolResult": result}]
    raise BadRequest(f"{where}.role {role!r} cannot be sent to Bedrock.", param=f"{where}.role")


def to_converse(body: dict) -> dict:
    """A Mistral chat request as a Converse request body (the model id goes in the URL)."""
    for name, default in UNTRANSLATED.items():
        if body.get(name, default) not in (default, None):
            raise BadRequest(f"'{name}' has no equivalent on Bedrock's Converse API; leave it out for this model.",
                             param=name, code="unsupported_on_bedrock")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise BadRequest("'response_format' has no equivalent on Bedrock's Converse API.", param="response_format",
                         code="unsupported_on_bedrock")
    system, messages = [], []
    for i, message in enumerate(body.get("messages") or []):
        if message.get("role") == "system":
            system.append({"text": _text(message.get("content"), f"messages[{i}].content")})
            continue
        role, blocks = _message(message, i)
        if messages and messages[-1]["role"] == role:  # Converse wants turns to alternate: merge
            messages[-1]["content"].extend(blocks)
        elif blocks:
            messages.append({"role": role, "content": blocks})
    request: dict = {"messages": messages}
    if system:
        request["system"] = system
    config = {key: body[name] for name, key in (("max_tokens", "maxTokens"), ("temperature", "temperature"),
                                                 ("top_p", "topP")) if body.get(name) is not None}
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        request["inferenceConfig"] = config
    tool_config = _tool_config(body, messages)
    if tool_config:
        request["toolConfig"] = tool_config
    return request


def _tool_config(body: dict, messages: list[dict]) -> dict | None:
    tools = [{"toolSpec": {"name": f["name"], "description": f.get("description") or f["name"],
                           "inputSchema": {"json": f.get("parameters") or {"type": "object", "properties": {}}}}}
             for t in body.get("tools") or [] if isinstance(f := t.get("function"), dict) and f.get("name")]
    if not tools:
        return None
    choice = body.get("tool_choice")
    used = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    if choice == "none":  # Converse cannot forbid tools; without tool turns, leave them out
        return {"tools": tools} if used else None
    config: dict = {"tools": tools}
    if choice in ("any", "required"):
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    return config


def usage_of(data: dict | None) -> dict:
    usage = data if isinstance(data, dict) else {}
    prompt, completion = int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("totalTokens") or prompt + completion)}


def _tool_call(block: dict, index: int) -> dict:
    return {"id": block.get("toolUseId"), "type": "function", "index": index,
            "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}}


def from_converse(data: dict, *, model: str, id: str, created: int) -> dict:
    """A Converse answer as Mistral's ``chat.completion``."""
    content = ((data.get("output") or {}).get("message") or {}).get("content") or []
    text = "".join(b["text"] for b in content if isinstance(b.get("text"), str))
    calls = [_tool_call(b["toolUse"], i) for i, b in enumerate(b for b in content if "toolUse" in b)]
    message = {"role": "assistant", "content": text, "tool_calls": calls or None}
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": FINISH.get(data.get("stopReason"), "stop")}],
            "usage": usage_of(data.get("usage"))}


class StreamTranslator:
    """ConverseStream events -> Mistral's SSE chunks, usage on the last one, then ``data: [DONE]``.

    Tool calls are sent whole when their block ends (Mistral streams them whole too; its SDK wants
    a name in every tool call delta)."""

    def __init__(self, *, model: str, id: str, created: int):
        self.model, self.id, self.created = model, id, created
        self.finish: str | None = None
        self.tools: dict[int, dict] = {}  # content block index -> {toolUseId, name, input (text so far)}
        self.calls = 0
        self.done = False

    def _chunk(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def feed(self, event: str, payload: dict) -> list[bytes]:
        if self.done:
            return []
        if event == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if event == "contentBlockStart":
            start = (payload.get("start") or {}).get("toolUse")
            if start:
                self.tools[payload.get("contentBlockIndex", 0)] = {**start, "input": ""}
            return []
        if event == "contentBlockDelta":
            delta = payload.get("delta") or {}
            if isinstance(delta.get("text"), str):
                return [self._chunk({"content": delta["text"]})]
            tool = self.tools.get(payload.get("contentBlockIndex", 0))
            if tool is not None and "toolUse" in delta:
                tool["input"] += (delta["toolUse"] or {}).get("input") or ""
            return []
        if event == "contentBlockStop":
            tool = self.tools.pop(payload.get("contentBlockIndex", 0), None)
            if tool is None:
                return []
            call = {"id": tool.get("toolUseId"), "type": "function", "index": self.calls,
                    "function": {"name": tool.get("name"), "arguments": tool["input"] or "{}"}}
            self.calls += 1
            return [self._chunk({"content": "", "tool_calls": [call]})]
        if event == "messageStop":
            self.finish = FINISH.get(payload.get("stopReason"), "stop")
            return []
        if event == "metadata":
            return self.close(usage_of(payload.get("usage")))
        return []

    def close(self, usage: dict | None = None) -> list[bytes]:
        """The last chunk (finish reason, and usage when Bedrock sent it) and ``[DONE]``, once."""
        if self.done:
            return []
        self.done = True
        return [self._chunk({"content": ""}, self.finish or "stop", usage), b"data: [DONE]\n\n"]

