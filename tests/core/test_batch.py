"""A batch job's output read line by line: usage per request, failed requests and odd lines uncharged."""

from __future__ import annotations

import json

import pytest

from sidecar.core import batch
from sidecar.core.batch import OutputTally, line_usage

from ..fakes import BATCH_FAILED, BATCH_REFUSED, batch_output_line, jsonl


def tally_of(data: bytes, chunk: int, endpoint="/v1/chat/completions") -> OutputTally:
    tally = OutputTally(endpoint, "mistral-small-latest")
    for start in range(0, len(data), chunk):
        tally.feed(data[start:start + chunk])
    tally.finish()
    return tally


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_usage_is_summed_over_the_lines_whatever_the_chunks_split(chunk):
    data = jsonl(batch_output_line("0"), BATCH_FAILED, batch_output_line("1", prompt=30, completion=20),
                 BATCH_REFUSED) + b"\n  \n"
    tally = tally_of(data, chunk)
    assert (tally.lines, tally.charged, tally.unreadable) == (4, 2, 0)
    total = tally.total()
    assert (total.prompt_tokens, total.completion_tokens, total.total_tokens) == (130, 70, 200)
    assert total.model == "mistral-small-2603"


def test_a_last_line_without_its_newline_is_read_and_models_are_kept_apart():
    data = jsonl(batch_output_line("0")) + json.dumps(batch_output_line("1", model="mistral-large-2512")).encode()
    tally = tally_of(data, 5)
    assert tally.charged == 2
    assert set(tally.usages) == {("mistral-small-2603", False), ("mistral-large-2512", False)}
    assert tally.total().model == "mistral-small-latest"  # several models: the job's


def test_failed_and_usageless_answers_are_not_charged():
    no_usage = batch_output_line("2")
    del no_usage["response"]["body"]["usage"]
    chat = batch.kind_for("/v1/chat/completions")
    assert [line_usage(chat, line) for line in (BATCH_FAILED, BATCH_REFUSED, no_usage)] == [None, None, None]
    moderation = batch_output_line("3")
    assert line_usage(batch.kind_for("/v1/moderations"), moderation) is None  # no usage Mistral bills by


def test_unreadable_lines_are_counted_not_raised():
    data = b"\x89PNG\r\n\x00\xff\n{\"truncated\": \n[1, 2]\n" + jsonl(batch_output_line("0"))
    tally = tally_of(data, 3)
    assert (tally.lines, tally.charged, tally.unreadable) == (5, 1, 4)  # PNG, NUL, cut object, array


def test_a_line_longer_than_the_cap_is_skipped_without_being_held(monkeypatch):
    monkeypatch.setattr(batch, "MAX_LINE", 1000)  # an ordinary line is ~300 bytes
    huge = batch_output_line("big")
    huge["response"]["body"]["choices"] = ["x" * 5000]
    for chunk in (16, 1 << 20):  # arriving in pieces or in one read: the same verdict
        tally = tally_of(jsonl(huge, batch_output_line("0"), huge), chunk)
        assert (tally.lines, tally.charged, tally.unreadable) == (3, 1, 2)
        assert tally.total().prompt_tokens == 100


def test_ocr_lines_bill_pages_annotated_where_the_answer_carries_an_annotation():
    def ocr(custom_id, pages, annotation=None):
        body = {"pages": [], "model": "mistral-ocr-latest", "document_annotation": annotation,
                "usage_info": {"pages_processed": pages, "doc_size_bytes": 10}}
        return {"id": custom_id, "custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}

    tally = tally_of(jsonl(ocr("a", 3), ocr("b", 2, '{"total": 1}')), 9, endpoint="/v1/ocr")
    assert {key: usage.pages for key, usage in tally.usages.items()} == {
        ("mistral-ocr-latest", False): 3, ("mistral-ocr-latest", True): 2}
