"""Token counts the sidecar makes itself: a request's prompt, before it is sent (the reservation), and
a cut stream's completion, from what was relayed (the charge when Mistral's usage event never came).

A documented estimate, not Mistral's tokenizer: about ``CHARS_PER_TOKEN`` characters of text per
token (``bench/estimate_error.py`` measures the error on the contracts' streams) plus a few tokens of
framing per message. It costs one walk over the request's text and nothing per relayed event.
"""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 3.5  # Mistral's tokenizers on English and code average 3.5-4.5; erring low bills high
TOKENS_PER_MESSAGE = 4  # [INST] / [/INST] / role framing around each message
# Request fields whose strings are text the model reads; everything else (ids, URLs, base64 images,
# settings) is skipped, so a data: URL of a megabyte does not reserve a quarter million tokens.
TEXT_FIELDS = frozenset({"messages", "content", "text", "prompt", "suffix", "input", "inputs", "instructions",
                         "arguments", "tools", "function", "description", "parameters", "name"})
SKIP_FIELDS = frozenset({"image_url", "document_url", "input_audio", "file_id", "file_url", "audio"})
GENERATING_KINDS = frozenset({"chat", "fim", "agents", "conversation"})
RESERVED_KINDS = GENERATING_KINDS | {"embeddings"}


def _text_chars(value, budget: int = 1 << 22) -> tuple[int, int]:
    """(characters of text, messages) under the text fields of a request; bounded by ``budget`` nodes."""
    chars = messages = 0
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        node = stack.pop()
        if isinstance(node, str):
            chars += len(node)
        elif isinstance(node, dict):
            if "role" in node:
                messages += 1
            for key, child in node.items():
                if key in SKIP_FIELDS:
                    continue
                if key in TEXT_FIELDS or not isinstance(child, str):
                    stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)
    return chars, messages


def text_chars(value) -> int:
    """Characters of model text in a value (a delta, a content list); roles and ids excluded."""
    return len(value) if isinstance(value, str) else _text_chars(value)[0]


def prompt_tokens(request_json) -> int:
    """Estimated prompt tokens of a request body (chat, FIM, agents, conversations, embeddings)."""
    if not isinstance(request_json, dict):
        return 0
    chars, messages = _text_chars({k: v for k, v in request_json.items() if k in TEXT_FIELDS})
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages


def completion_tokens(chars: int) -> int:
    """Estimated tokens of ``chars`` characters of generated text."""
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def output_reserve(request_json, default: int) -> int:
    """The most output a request may bill: its ``max_tokens`` when given, else ``default``."""
    if isinstance(request_json, dict):
        for name in ("max_tokens", "max_completion_tokens"):
            value = request_json.get(name)
            if type(value) is int and value >= 0:
                return value
    return default
