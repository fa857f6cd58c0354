"""What one operation consumed (tokens, OCR pages, audio seconds, characters), read from its answer.

Every reader is total: an odd or hostile upstream body yields zeros, never an exception, because
accounting runs after the answer is already on its way to the client.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from sidecar.core.fields import model_of

CHAT, FIM, AGENTS, EMBEDDINGS, OCR = "chat", "fim", "agents", "embeddings", "ocr"
TRANSCRIPTION, SPEECH, CONVERSATION = "transcription", "speech", "conversation"
CLASSIFICATION, NONE = "classification", "none"
KINDS = frozenset({CHAT, FIM, AGENTS, EMBEDDINGS, OCR, TRANSCRIPTION, SPEECH, CONVERSATION,
                   CLASSIFICATION, NONE})

# Mistral operationIds (mistral-openapi.yaml) -> how their usage is read; anything else is NONE.
OPERATION_KINDS: dict[str, str] = {
    "chat_completion_v1_chat_completions_post": CHAT,
    "fim_completion_v1_fim_completions_post": FIM,
    "agents_completion_v1_agents_completions_post": AGENTS,
    "embeddings_v1_embeddings_post": EMBEDDINGS,
    "ocr_v1_ocr_post": OCR,
    "audio_api_v1_transcriptions_post": TRANSCRIPTION,
    "audio_api_v1_transcriptions_post_stream": TRANSCRIPTION,
    "speech_v1_audio_speech_post": SPEECH,
    "agents_api_v1_conversations_start": CONVERSATION,
    "agents_api_v1_conversations_start_stream": CONVERSATION,
    "agents_api_v1_conversations_append": CONVERSATION,
    "agents_api_v1_conversations_append_stream": CONVERSATION,
    "agents_api_v1_conversations_restart": CONVERSATION,
    "agents_api_v1_conversations_restart_stream": CONVERSATION,
    "moderations_v1_moderations_post": CLASSIFICATION,
    "chat_moderations_v1_chat_moderations_post": CLASSIFICATION,
    "classifications_v1_classifications_post": CLASSIFICATION,
    "chat_classifications_v1_chat_classifications_post": CLASSIFICATION,
}

# Named stream events that carry the final usage; kinds not listed take any event with ``usage``.
DONE_EVENTS: dict[str, str] = {
    CONVERSATION: "conversation.response.done",
    TRANSCRIPTION: "transcription.done",
    SPEECH: "speech.audio.done",
}

_OCR_ANNOTATION_FIELDS = ("bbox_annotation_format", "document_annotation_format")

# Answers above this size have their closing fields read from their last TAIL_WINDOW bytes.
TAIL_READ_ABOVE = 64 * 1024
TAIL_WINDOW = 64 * 1024
# A key the readers use; in valid JSON a quote-delimited name followed by a colon is always a key.
_TAIL_KEY = re.compile(rb'"(?:usage|usage_info|model)"\s*:')


@dataclass(frozen=True, slots=True)
class Usage:
    """Consumption of one exchange; ``model`` is the model the *response* named, if it named one."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    pages: int = 0
    annotated: bool = False
    audio_seconds: float = 0.0
    characters: int = 0
    model: str | None = None
    cached_tokens: int = 0  # of prompt_tokens, served from Mistral's prompt cache
    estimated: bool = False  # counted by the sidecar (a cut stream), not reported by Mistral
    # Each choice's finish_reason where the answer gives them (telemetry); not consumption, so not compared.
    finish_reasons: tuple[str, ...] = field(default=(), compare=False)


def counts(usage: Usage | None) -> dict:
    """The usage columns of a spend record and a log line, in their order; all None without usage."""
    if usage is None:
        return dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens", "pages", "audio_seconds",
                              "characters"))
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "pages": usage.pages, "audio_seconds": usage.audio_seconds,
            "characters": usage.characters}


def kind_for(operation_id: str) -> str:
    """The usage kind of a Mistral operation; unknown and free operations are ``"none"``."""
    return OPERATION_KINDS.get(operation_id, NONE)


def _count(value: object) -> int:
    """A non-negative int from an untrusted JSON value; anything else (bool, str, null) is 0."""
    if type(value) is int:
        return value if value > 0 else 0
    if type(value) is float and math.isfinite(value) and value > 0:
        return int(value)
    return 0


def _seconds(value: object) -> float:
    if type(value) in (int, float) and math.isfinite(value) and value > 0:
        return float(value)
    return 0.0


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _model(body: dict) -> str | None:
    return model_of(body) or None


def _characters(request_json: object) -> int:
    text = _dict(request_json).get("input")
    return len(text) if isinstance(text, str) else 0


def _cached(info: dict) -> int:
    """Prompt tokens served from the cache: ``prompt_tokens_details.cached_tokens``, which Mistral's
    prompt-caching docs name; the spec's ``UsageInfo`` also spells it ``prompt_token_details`` and
    ``num_cached_tokens``."""
    for details in ("prompt_tokens_details", "prompt_token_details"):
        cached = _count(_dict(info.get(details)).get("cached_tokens"))
        if cached:
            return cached
    return _count(info.get("num_cached_tokens"))


def _completion(info: dict, prompt: int) -> int:
    """Output tokens billed: ``completion_tokens``, which holds Magistral's reasoning tokens
    (``completion_tokens_details.reasoning_tokens`` is a part of it, billed as output once). Only an
    answer whose total shows the reasoning counted beside the completion gets it added."""
    completion = _count(info.get("completion_tokens"))
    reasoning = _count(_dict(info.get("completion_tokens_details")).get("reasoning_tokens"))
    if reasoning and prompt + completion + reasoning == _count(info.get("total_tokens")):
        return completion + reasoning
    return completion


def _tokens(body: dict, request_json: object = None, characters: int = 0) -> Usage:
    """A ``UsageInfo`` / ``ConversationUsageInfo`` under ``usage``; extra keys are ignored."""
    info = _dict(body.get("usage"))
    prompt = _count(info.get("prompt_tokens"))
    return Usage(
        cached_tokens=_cached(info),
        prompt_tokens=prompt,
        completion_tokens=_completion(info, prompt),
        total_tokens=_count(info.get("total_tokens")),
        audio_seconds=_seconds(info.get("prompt_audio_seconds")),
        characters=characters,
        model=_model(body),
        finish_reasons=_finish_reasons(body),
    )


def _finish_reasons(body: dict) -> tuple[str, ...]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return ()
    return tuple(c["finish_reason"] for c in choices if isinstance(c, dict) and isinstance(c.get("finish_reason"), str))


def _ocr(body: dict, request_json: object) -> Usage:
    request = _dict(request_json)
    return Usage(
        pages=_count(_dict(body.get("usage_info")).get("pages_processed")),
        annotated=any(request.get(field) is not None for field in _OCR_ANNOTATION_FIELDS),
        model=_model(body),
    )


def _speech(body: dict, request_json: object) -> Usage:
    # TTS is billed per character of the input text; the answer itself carries only audio.
    return _tokens(body, characters=_characters(request_json))


def _nothing(body: dict, request_json: object) -> Usage:
    return Usage(model=_model(body))


_BODY_READERS = {
    CHAT: _tokens, FIM: _tokens, AGENTS: _tokens, EMBEDDINGS: _tokens, CONVERSATION: _tokens,
    TRANSCRIPTION: _tokens, SPEECH: _speech, OCR: _ocr, CLASSIFICATION: _nothing, NONE: _nothing,
}


def closing_fields(content: bytes) -> dict | None:
    """The top-level fields that close a JSON object (``..."model":"m","usage":{...}}``), parsed from
    its last bytes only, or None when its end is not shaped so (then parse the whole answer).

    An embeddings answer is megabytes of vectors followed by ``usage``: parsing it all to read three
    counts cost ~40 ms and its size again in memory. Why the result is the top level's own: the
    candidate text runs from a key to the document's last ``}``; it parses as one object only if
    every bracket opened after the key closes before that ``}``, so the key sits in the object that
    ``}`` closes, the outermost one. The earliest such key gives the most fields.
    """
    end = len(content)
    while end and content[end - 1] in b" \t\r\n":  # not rstrip(): that copies megabytes
        end -= 1
    if end == 0 or content[end - 1:end] != b"}":
        return None
    tail = content[max(0, end - TAIL_WINDOW):end]
    for match in list(_TAIL_KEY.finditer(tail))[-4:]:  # a few tries at most, earliest first
        if tail[:match.start()].rstrip()[-1:] not in (b",", b"{"):
            continue
        try:
            found = json.loads(b"{" + tail[match.start():])
        except (ValueError, RecursionError):
            continue
        if isinstance(found, dict):
            return found
    return None


def from_body(kind: str, response_json: object, request_json: object = None) -> Usage:
    """Usage of a plain (non-streamed) JSON answer."""
    body = response_json if isinstance(response_json, dict) else {}
    return _BODY_READERS.get(kind, _nothing)(body, request_json)


def from_event(kind: str, event: object, event_name: str | None, request_json: object = None) -> Usage | None:
    """Usage carried by one decoded stream event, or None when this event carries none."""
    if not isinstance(event, dict) or kind in (NONE, CLASSIFICATION) or not isinstance(event.get("usage"), dict):
        return None
    done = DONE_EVENTS.get(kind)
    if done is not None and (event_name or event.get("type")) != done:
        return None
    return _BODY_READERS.get(kind, _tokens)(event, request_json)


def from_request(kind: str, request_json: object) -> Usage | None:
    """What the request alone proves was consumed (TTS characters), for a stream cut before its usage."""
    if kind == SPEECH:
        characters = _characters(request_json)
        return Usage(characters=characters) if characters else None
    return None
