"""SSE framing and the per-stream usage watcher: bytes cut anywhere give the same events."""

from __future__ import annotations

import json
import os
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.sse import DONE, Event, EventSplitter, UsageWatcher, error_event, parse_event
from sidecar.core.usage import Usage

LAST_CHAT_CHUNK = (
    '{"id":"f798cade","object":"chat.completion.chunk","created":1732548656,"model":"mistral-large-latest",'
    '"choices":[{"index":0,"delta":{"content":"izable"},"finish_reason":"length"}],'
    '"usage":{"prompt_tokens":34,"total_tokens":134,"completion_tokens":100}}'
)
BLOCKS = [
    b'data: {"id":"a","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
    b": keep-alive comment",
    b'event: conversation.response.done\ndata: {"type":"conversation.response.done","usage":{}}',
    b"id: 7\ndata: first line\ndata: second line",
    b"data: " + LAST_CHAT_CHUNK.encode(),
    b"data: [DONE]",
]


def frame(blocks: list[bytes], newline: bytes) -> bytes:
    return b"".join(block.replace(b"\n", newline) + newline * 2 for block in blocks)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def run(chunks: list[bytes]) -> tuple[list[bytes], bytes | None]:
    splitter = EventSplitter()
    out = [block for chunk in chunks for block in splitter.feed(chunk)]
    return out, splitter.close()


@settings(max_examples=300, deadline=None, print_blob=True)
@given(newline=st.sampled_from([b"\n", b"\r\n", b"\r"]), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_yields_the_same_events(newline, cuts):
    data = frame(BLOCKS, newline)
    events, tail = run(split_at(data, cuts))
    assert [parse_event(e) for e in events] == [parse_event(b.replace(b"\n", newline)) for b in BLOCKS]
    assert events == [b.replace(b"\n", newline) for b in BLOCKS]
    assert tail is None


@settings(max_examples=200, deadline=None)
@given(newlines=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=len(BLOCKS), max_size=len(BLOCKS)),
       cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_mixed_framing_in_one_stream_yields_the_same_events(newlines, cuts):
    blocks = [b.replace(b"\n", nl) for b, nl in zip(BLOCKS, newlines, strict=True)]
    data = b"".join(b + nl * 2 for b, nl in zip(blocks, newlines, strict=True))
    events, tail = run(split_at(data, cuts))
    assert events == blocks
    assert tail is None


@settings(max_examples=200, deadline=None)
@given(newline=st.sampled_from([b"\n", b"\r\n", b"\r"]), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_a_terminator_split_across_chunks_waits_for_its_second_half(newline, cuts):
    data = frame([b"data: x", b"data: y"], newline) + b"data: partial"
    events, tail = run(split_at(data, cuts))
    assert [parse_event(e).data for e in events] == ["x", "y"]
    assert tail == b"data: partial"


def test_an_event_is_returned_as_soon_as_its_blank_line_arrives():
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\n") == []
    assert splitter.feed(b"\n") == [b"data: 1"]
    assert splitter.feed(b"data: 2\r\n\r") == []
    assert splitter.feed(b"\n") == [b"data: 2"]
    assert splitter.tail == b""


def test_whole_events_in_one_chunk_keep_nothing_back():
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\n\ndata: b\n\n") == [b"data: a", b"data: b"]
    assert splitter.tail == b"" and splitter.close() is None


def test_parse_event_follows_the_sse_field_rules():
    assert parse_event(b"data:no-space") == Event(None, "no-space", None)
    assert parse_event(b"data:  two spaces") == Event(None, " two spaces", None)
    assert parse_event(b": comment\nevent: speech.audio.done\ndata: {}\nid: 3\nretry: 10") == Event(
        "speech.audio.done", "{}", "3")
    assert parse_event(b"data: a\r\ndata:\r\ndata: c").data == "a\n\nc"
    assert parse_event(b"data") == Event(None, "", None)
    assert parse_event(b":only a comment") == Event(None, "", None)


def test_done_sentinel():
    assert parse_event(b"data: [DONE]").data == DONE == "[DONE]"


def test_named_conversation_event():
    raw = b'event: conversation.response.done\ndata: {"type":"conversation.response.done"}'
    event = parse_event(raw)
    assert event.event == "conversation.response.done"
    assert json.loads(event.data) == {"type": "conversation.response.done"}


def test_invalid_utf8_does_not_raise():
    assert parse_event(b"data: \xff\xfe").data == "\ufffd\ufffd"


def test_error_event_is_a_data_only_json_error():
    raw = error_event("cut", code="stream_interrupted")
    assert raw.endswith(b"\n\n") and raw.startswith(b"data: ")
    [block] = EventSplitter().feed(raw)
    event = parse_event(block)
    assert event.event is None
    assert json.loads(event.data) == {"object": "error", "message": "cut", "type": "upstream_error",
                                      "param": None, "code": "stream_interrupted"}


def chat_stream(n: int) -> bytes:
    delta = b'data: {"id":"a","model":"mistral-small-latest","choices":[{"index":0,"delta":{"content":"C"}}]}\n\n'
    return delta * n + b"data: " + LAST_CHAT_CHUNK.encode() + b"\n\ndata: [DONE]\n\n"


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 100_000), max_size=30))
def test_watcher_finds_chat_usage_in_the_last_chunk(cuts):
    watcher = UsageWatcher("chat", {"model": "mistral-large-latest"})
    for chunk in split_at(chat_stream(20), cuts):
        watcher.feed(chunk)
    assert watcher.usage == Usage(prompt_tokens=34, completion_tokens=100, total_tokens=134,
                                  model="mistral-large-latest")


def test_watcher_reads_an_unterminated_last_event():
    watcher = UsageWatcher("chat")
    watcher.feed(b"data: " + LAST_CHAT_CHUNK.encode())
    assert watcher.usage.completion_tokens == 100


def test_watcher_ignores_the_word_usage_in_content_and_malformed_json():
    watcher = UsageWatcher("chat")
    watcher.feed(b"data: " + LAST_CHAT_CHUNK.encode() + b"\n\n")
    watcher.feed(b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\ndata: {usage\n\n')
    assert watcher.usage.prompt_tokens == 34


def test_watcher_conversation_done_event():
    watcher = UsageWatcher("conversation")
    watcher.feed(b'event: message.output.delta\ndata: {"type":"message.output.delta","content":"usage"}\n\n'
                 b"event: conversation.response.done\n"
                 b'data: {"type":"conversation.response.done","created_at":"2026-01-01T00:00:00Z",'
                 b'"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20,"connector_tokens":null}}\n\n')
    assert watcher.usage == Usage(prompt_tokens=12, completion_tokens=8, total_tokens=20)


def test_watcher_speech_counts_input_characters_even_when_cut_before_done():
    watcher = UsageWatcher("speech", {"input": "Bonjour", "stream": True})
    watcher.feed(b'event: speech.audio.delta\ndata: {"type":"speech.audio.delta","audio_data":"AAAA"}\n\n')
    assert watcher.usage == Usage(characters=7)


def test_watcher_without_usage_reports_none():
    watcher = UsageWatcher("chat")
    watcher.feed(b"data: [DONE]\n\n")
    assert watcher.usage is None


def test_watcher_memory_stays_constant_over_100k_events():
    watcher = UsageWatcher("chat")
    event = ('data: {"model":"m","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":1,'
             '"total_tokens":%d}}\n\n')
    chunk = "".join(event % (i, i + 1) for i in range(100)).encode()
    watcher.feed(chunk)  # warm up caches before measuring
    tracemalloc.start(6)
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(1000):
            watcher.feed(chunk + b"data: {\"partial")
            watcher.feed(b'":1}\n\n')
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # Only allocations with the watcher's code on the stack count: other threads (the test runner's, the spend
    # writers of earlier tests' apps) allocate meanwhile.
    ours = [tracemalloc.Filter(True, f"*{os.sep}sidecar{os.sep}{name}", all_frames=True) for name in ("sse.py", "usage.py")]
    grown = sum(stat.size_diff for stat in after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename"))
    assert grown < 4096, f"watcher grew by {grown} bytes over 100k events"
    assert watcher._splitter.tail == b""
    assert watcher.usage.prompt_tokens == 99
