"""Mistral chat <-> Bedrock Converse, as pure data: what each side's fields become."""

from __future__ import annotations

import json

import pytest

from sidecar.core import converse
from sidecar.core.errors import BadRequest

PNG = "data:image/png;base64,iVBORw0KGgo="


def test_messages_merge_into_alternating_turns_and_system_moves_out():
    request = converse.to_converse({"model": "m", "messages": [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": PNG}]},
        {"role": "user", "content": "again"},
    ], "top_p": 0.9, "stop": "END"})
    assert request == {"system": [{"text": "rules"}],
                       "messages": [{"role": "user", "content": [
                           {"text": "look"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                           {"text": "again"}]}],
                       "inferenceConfig": {"topP": 0.9, "stopSequences": ["END"]}}


@pytest.mark.parametrize("choice, expected", [("auto", {"auto": {}}), ("any", {"any": {}}), ("required", {"any": {}}),
                                              ({"type": "function", "function": {"name": "f"}}, {"tool": {"name": "f"}})])
def test_tool_choice(choice, expected):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = converse.to_converse({"messages": [{"role": "user", "content": "x"}], "tools": tools,
                                    "tool_choice": choice})
    assert request["toolConfig"]["toolChoice"] == expected


def test_tool_choice_none_leaves_tools_out_unless_the_conversation_used_them():
    tools = [{"type": "function", "function": {"name": "f"}}]
    plain = converse.to_converse({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "none"})
    assert "toolConfig" not in plain


@pytest.mark.parametrize("field, value", [("random_seed", 1), ("n", 2), ("safe_prompt", True),
                                          ("response_format", {"type": "json_object"})])
def test_fields_without_an_equivalent_are_refused_by_name(field, value):
    with pytest.raises(BadRequest) as caught:
        converse.to_converse({"messages": [{"role": "user", "content": "x"}], field: value})
    assert caught.value.param == field


def test_a_remote_image_url_is_refused_with_the_fix():
    with pytest.raises(BadRequest, match="data URI"):
        converse.to_converse({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": "https://example.com/a.png"}]}]})


@pytest.mark.parametrize("reason, finish", [("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
                                            ("model_context_window_exceeded", "model_length"),
                                            ("malformed_tool_use", "error")])
def test_answers_keep_finish_reasons_and_usage(reason, finish):
    answer = converse.from_converse({"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                                     "stopReason": reason, "usage": {"inputTokens": 3, "outputTokens": 2,
                                                                     "totalTokens": 5}}, model="m", id="i", created=1)
    assert answer["choices"][0]["finish_reason"] == finish
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_a_stream_translates_to_chunks_with_usage_last_and_done():
    t = converse.StreamTranslator(model="m", id="i", created=1)
    out = [*t.feed("messageStart", {"role": "assistant"}),
           *t.feed("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
           *t.feed("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
           *t.feed("messageStop", {"stopReason": "max_tokens"}),
           *t.feed("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}),
           *t.close()]
    assert out[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(line[6:]) for line in out[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["total_tokens"] == 3
    assert all("usage" not in c for c in chunks[:-1])


def test_a_stream_cut_before_its_metadata_claims_no_usage():
    t = converse.StreamTranslator(model="m", id="i", created=1)
    t.feed("messageStart", {})
    last = json.loads(t.close()[0][6:])
    assert "usage" not in last and last["choices"][0]["finish_reason"] == "stop"


def test_bedrock_errors_map_to_mistral_statuses():
    assert converse.error_kind("ThrottlingException:http://internal.amazon.com/", 429)[:2] == (429, "rate_limit_error")
    assert converse.error_kind("ValidationException", 400)[0] == 400
    assert converse.error_kind("AccessDeniedException", 403)[:2] == (403, "permission_error")
    assert converse.error_kind(None, 503)[0] == 503
