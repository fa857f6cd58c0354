"""Recordings never hold a secret, however an upstream splits it across a stream's events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.contracts.scrubbing import SCRUBBED, resplit, scrub, scrub_events, secret_pattern

SECRETS = ("sk-test-real-mistral-key-0123456789", "sk-master-abcdefghij", "admin-key-9876543210",
           "sk-" + "A1b2C3d4E5" * 4 + "xyz")  # the last one: shaped like a virtual key, known to no setting
KNOWN = SECRETS[:3]


def _chunk(content: str) -> dict:
    return {"data": {"id": "c", "object": "chat.completion.chunk", "model": "m",
                     "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}}


def _stream(text: str, cuts: list[int]) -> list[dict]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [_chunk(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)] + [{"data": "[DONE]"}]


def _joined(events: list[dict]) -> str:
    return "".join(e["data"]["choices"][0]["delta"]["content"] for e in events if isinstance(e["data"], dict))


def test_each_secret_split_at_every_position_is_scrubbed():
    for secret in SECRETS:
        text = f"the key is {secret}!"
        start = text.index(secret)
        for cut in range(start, start + len(secret) + 1):
            events = scrub_events(_stream(text, [cut]), KNOWN)
            assert _joined(events) == f"the key is {SCRUBBED}!", (secret, cut)
            assert secret not in repr(events)


@settings(max_examples=300, deadline=None, print_blob=True)
@given(secret=st.sampled_from(SECRETS), before=st.text(max_size=20), after=st.text(max_size=20),
       cuts=st.lists(st.integers(min_value=0, max_value=90), max_size=30))
def test_a_secret_split_across_any_number_of_events_is_scrubbed(secret, before, after, cuts):
    text = f"{before} {secret} {after}"
    events = scrub_events(_stream(text, [c for c in cuts if c <= len(text)]), KNOWN)
    assert secret not in _joined(events)
    assert _joined(events) == secret_pattern(KNOWN).sub(SCRUBBED, text)  # nothing else changed


@given(parts=st.lists(st.text(alphabet="ab", max_size=6), max_size=8))
def test_resplit_keeps_the_cut_points_and_scrubs_the_joined_text(parts):
    pattern = secret_pattern(["abba"])
    out = resplit(parts, pattern)
    assert len(out) == len(parts) and "".join(out) == pattern.sub(SCRUBBED, "".join(parts))


def test_tool_call_arguments_and_named_events_are_scrubbed_channel_by_channel():
    secret = KNOWN[0]
    calls = [{"event": "tool.delta", "data": {"type": "function.call.delta", "arguments": secret[i:i + 5]}}
             for i in range(0, len(secret), 5)]
    events = scrub_events(calls, KNOWN)
    assert "".join(e["data"]["arguments"] for e in events) == SCRUBBED
    assert scrub({secret: [f"Bearer {secret}", 3]}, KNOWN) == {SCRUBBED: [f"Bearer {SCRUBBED}", 3]}
