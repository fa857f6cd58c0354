"""Usage per operation kind: realistic Mistral bodies and events, and odd bodies that must not crash."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.usage import (
    KINDS,
    OPERATION_KINDS,
    TAIL_WINDOW,
    Usage,
    closing_fields,
    from_body,
    from_event,
    from_request,
    kind_for,
)

SPEC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "mistral-openapi.yaml"

CHAT_BODY = {
    "id": "cmpl-1", "object": "chat.completion", "model": "mistral-small-latest", "created": 1,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 0}, "service_tier": "standard"},
}
LAST_CHAT_CHUNK = json.loads(
    '{"id":"f798cade","object":"chat.completion.chunk","created":1732548656,"model":"mistral-large-latest",'
    '"choices":[{"index":0,"delta":{"content":"izable"},"finish_reason":"length"}],'
    '"usage":{"prompt_tokens":34,"total_tokens":134,"completion_tokens":100}}'
)
OCR_BODY = {"pages": [{"index": 0, "markdown": "# x", "images": [], "dimensions": None}],
            "model": "mistral-ocr-latest", "document_annotation": None,
            "usage_info": {"pages_processed": 8, "doc_size_bytes": 3749788}}


def test_chat_body():
    assert from_body("chat", CHAT_BODY, {"model": "mistral-small-latest"}) == Usage(
        prompt_tokens=10, completion_tokens=5, total_tokens=15, model="mistral-small-latest")


def test_last_chat_chunk_carries_usage_and_middle_chunks_do_not():
    assert from_event("chat", LAST_CHAT_CHUNK, None, None) == Usage(
        prompt_tokens=34, completion_tokens=100, total_tokens=134, model="mistral-large-latest")
    middle = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": "C"}}]}
    assert from_event("chat", middle, None, None) is None
    assert from_event("fim", {**middle, "usage": None}, None, None) is None


def test_embeddings():
    body = {"id": "e", "object": "list", "model": "mistral-embed", "data": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}}
    assert from_body("embeddings", body, None) == Usage(prompt_tokens=7, total_tokens=7, model="mistral-embed")


@pytest.mark.parametrize(("request_json", "annotated"), [
    ({"model": "mistral-ocr-latest", "document": {}}, False),
    ({"model": "mistral-ocr-latest", "document": {}, "bbox_annotation_format": None}, False),
    ({"model": "mistral-ocr-latest", "bbox_annotation_format": {"type": "json_schema"}}, True),
    ({"model": "mistral-ocr-latest", "document_annotation_format": {"type": "json_schema"}}, True),
    (None, False),
])
def test_ocr_pages_and_annotation_come_from_response_and_request(request_json, annotated):
    assert from_body("ocr", OCR_BODY, request_json) == Usage(pages=8, annotated=annotated, model="mistral-ocr-latest")


def test_transcription_seconds_and_tokens():
    body = {"model": "voxtral-mini-2602", "text": "hello", "language": "en", "segments": [],
            "usage": {"prompt_audio_seconds": 90, "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}
    assert from_body("transcription", body, None) == Usage(
        prompt_tokens=4, completion_tokens=2, total_tokens=6, audio_seconds=90.0, model="voxtral-mini-2602")
    done = {**body, "type": "transcription.done"}
    assert from_event("transcription", done, "transcription.done", None).audio_seconds == 90.0
    assert from_event("transcription", {"type": "transcription.text.delta", "text": "usage"},
                      "transcription.text.delta", None) is None


def test_conversation_body_and_done_event():
    usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20, "connector_tokens": 3,
             "connectors": {"web_search": 1}}
    body = {"object": "conversation.response", "conversation_id": "c", "outputs": [], "usage": usage}
    expected = Usage(prompt_tokens=12, completion_tokens=8, total_tokens=20)
    assert from_body("conversation", body, None) == expected
    done = {"type": "conversation.response.done", "created_at": "2026-01-01T00:00:00Z", "usage": usage}
    assert from_event("conversation", done, "conversation.response.done", None) == expected
    assert from_event("conversation", done, None, None) == expected  # name read from "type"
    started = {"type": "conversation.response.started", "usage": usage}
    assert from_event("conversation", started, "conversation.response.started", None) is None


def test_speech_counts_request_characters():
    request = {"model": "voxtral-mini-tts-latest", "input": "Héllo, world"}
    assert from_body("speech", {"audio_data": "AAAA"}, request) == Usage(characters=12)
    done = {"type": "speech.audio.done", "usage": {"prompt_tokens": 5, "total_tokens": 5}}
    assert from_event("speech", done, "speech.audio.done", request) == Usage(
        prompt_tokens=5, total_tokens=5, characters=12)
    assert from_request("speech", request) == Usage(characters=12)
    assert from_request("chat", request) is None


@pytest.mark.parametrize("kind", ["classification", "none"])
def test_usage_less_kinds_are_zero(kind):
    body = {"id": "m", "model": "mistral-moderation-latest", "results": [{"categories": {}}]}
    assert from_body(kind, body, None) == Usage(model="mistral-moderation-latest")
    assert from_event(kind, {**body, "usage": {"prompt_tokens": 1}}, None, None) is None


def test_wrong_types_count_as_zero():
    body = {"model": 5, "usage": {"prompt_tokens": "34", "completion_tokens": True, "total_tokens": -3,
                                  "prompt_audio_seconds": float("nan")}}
    assert from_body("chat", body, None) == Usage()
    assert from_body("chat", {"usage": [1, 2]}, None) == Usage()
    assert from_body("ocr", {"usage_info": {"pages_processed": None}}, "not a dict") == Usage()
    assert from_body("speech", {}, {"input": ["not", "text"]}) == Usage()
    assert from_body("chat", ["not", "a", "dict"], None) == Usage()
    assert from_body("unknown-kind", CHAT_BODY, None) == Usage(model="mistral-small-latest")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=10,
)
usage_keys = st.sampled_from(["usage", "usage_info", "model", "type", "input", "pages_processed",
                              "prompt_tokens", "prompt_audio_seconds", "bbox_annotation_format"])


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), body=st.dictionaries(usage_keys, json_values),
       request=json_values, name=st.none() | st.text(max_size=30))
def test_never_raises_on_odd_input(kind, body, request, name):
    assert isinstance(from_body(kind, body, request), Usage)
    assert from_event(kind, body, name, request) is None or isinstance(from_event(kind, body, name, request), Usage)


def test_kind_for_known_operations():
    assert kind_for("chat_completion_v1_chat_completions_post") == "chat"
    assert kind_for("agents_api_v1_conversations_restart_stream") == "conversation"
    assert kind_for("audio_api_v1_transcriptions_post_stream") == "transcription"
    assert kind_for("ocr_v1_ocr_post") == "ocr"
    assert kind_for("list_models_v1_models_get") == "none"
    assert kind_for("") == "none"
    assert set(OPERATION_KINDS.values()) <= KINDS


@pytest.mark.reference
@pytest.mark.skipif(not SPEC.exists(), reason="needs ../shared/reference/mistral-openapi.yaml")
def test_every_mapped_operation_id_exists_in_mistrals_spec():
    ids = set(re.findall(r"operationId:\s*['\"]?([\w.-]+)", SPEC.read_text(encoding="utf-8")))
    assert len(ids) > 200
    assert set(OPERATION_KINDS) <= ids


# -- the closing fields of a large answer, read from its tail ------------------------------------------
def _embeddings_answer(rows: int, indent=None) -> bytes:
    body = {"id": "e", "object": "list",
            "data": [{"object": "embedding", "embedding": [0.012345] * 1024, "index": i} for i in range(rows)],
            "model": "mistral-embed", "usage": {"prompt_tokens": 7 * rows, "completion_tokens": 0,
                                                "total_tokens": 7 * rows}}
    return json.dumps(body, indent=indent).encode() + b"\n"


@pytest.mark.parametrize("indent", [None, 2])
def test_closing_fields_of_a_large_embeddings_answer_equal_a_full_parse(indent):
    content = _embeddings_answer(64, indent)
    assert len(content) > TAIL_WINDOW  # the vectors lie outside the window read
    fields = closing_fields(content)
    assert fields == {"model": "mistral-embed", "usage": {"prompt_tokens": 448, "completion_tokens": 0,
                                                          "total_tokens": 448}}
    assert from_body("embeddings", fields) == from_body("embeddings", json.loads(content))


def test_closing_fields_of_ocr_read_usage_info():
    pages = [{"index": i, "markdown": "x" * 2000, "images": [], "dimensions": None} for i in range(100)]
    content = json.dumps({**OCR_BODY, "pages": pages, "usage_info": {"pages_processed": 100}}).encode()
    assert from_body("ocr", closing_fields(content)) == Usage(pages=100, model="mistral-ocr-latest")


@pytest.mark.parametrize("content", [
    # usage inside the last element, not at the top: the top level has none, so parse it all
    b'{"data": [' + b'1,' * 40000 + b'{"usage": {"total_tokens": 9}}]}',
    b'{"data": [{"usage": {"total_tokens": 9}, "x": 1}]}',
    # a "usage" that is a string value, or text inside a string, is no key
    b'{"data": "' + b'a' * 70000 + b'", "object": "usage"}',
    b'{"text": "he said \\"usage\\": {\\"total_tokens\\": 9}"}',
    b'{"usage": {"total_tokens": 9}',  # cut short
    b'[{"usage": {"total_tokens": 9}}]',
    b'',
])
def test_closing_fields_refuse_what_is_not_the_top_level(content):
    assert closing_fields(content) is None
