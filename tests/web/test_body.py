"""JSON bodies with long strings (data: URIs, pasted documents): the same value, the same refusals, as a
parse of the whole text, while each long string is decoded from its bytes instead of scanned."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sidecar.web import body as bodies
from sidecar.web import longjson

LONG = longjson.LONG_STRING
# Short strings with what a JSON writer escapes (quotes, backslashes, control characters, non-ASCII) and
# words the fast path must not confuse with its own stand-in.
short = st.text(alphabet=st.sampled_from('ab"\\\n\t é€😀 NaN Infinity'), max_size=12)
# Long strings: a seed repeated to about LONG bytes, one side of the threshold or the other.
long = st.builds(lambda seed, n: (seed or "x") * n, st.text(alphabet=st.sampled_from("AZaz09+/= é\\\"\n"), max_size=4),
                 st.sampled_from([LONG // 4 - 1, LONG // 4 + 1, LONG // 2 + 3, LONG]))
values = st.recursive(st.none() | st.booleans() | st.integers() | short | long,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short, inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(doc=values, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]), kind=st.sampled_from([bytes, bytearray]))
def test_a_body_parses_to_the_value_a_whole_text_parse_gives(doc, ascii_only, indent, kind):
    raw = kind(json.dumps({"model": "m", "x": doc}, ensure_ascii=ascii_only, indent=indent).encode())
    value = longjson.loads_long(raw)
    assert value is longjson.SCAN or value == json.loads(raw)


def test_a_data_uri_is_decoded_from_its_bytes():
    uri = "data:application/pdf;base64," + base64.b64encode(bytes(range(256)) * 1000).decode()
    raw = json.dumps({"model": "mistral-ocr-latest", "document": {"type": "document_url", "document_url": uri}}).encode()
    assert longjson.long_strings(raw) == [(raw.index(b"data:"), raw.index(b"data:") + len(uri))]
    assert longjson.loads_long(bytearray(raw)) == json.loads(raw)


@pytest.mark.parametrize("before", ['say \\"hi\\"', "a backslash \\\\", '\\\\\\"', ""])
def test_escaped_quotes_before_a_long_string_do_not_hide_it(before):
    raw = b'{"model": "m", "note": "' + before.encode() + b'", "document_url": "' + b"A" * LONG + b'"}'
    assert json.loads(raw)["document_url"] == "A" * LONG
    assert longjson.loads_long(raw) == json.loads(raw)


def test_bodies_without_long_strings_are_scanned_whole():
    many = json.dumps({"input": ["w" * 1000] * 512}).encode()  # 512 inputs of 1 KB: no quote-free window
    assert longjson.long_strings(many) == [] and longjson.loads_long(many) is longjson.SCAN
    constants = json.dumps({"a": "x" * LONG * 2, "b": float("nan")}).encode()  # the body's own NaN
    assert longjson.loads_long(constants) is longjson.SCAN


def _ocr(uri_bytes: bytes, tail: bytes = b"}") -> bytes:
    return b'{"model": "mistral-ocr-latest", "document": {"type": "document_url", "document_url": "' + uri_bytes + b'"}' + tail


def test_an_ocr_body_with_a_long_data_uri_is_forwarded_as_sent(client, fake):
    fake.on("POST", "/v1/ocr", json_body={"pages": [], "model": "mistral-ocr-latest", "usage_info": {"pages_processed": 1}})
    raw = _ocr(b"data:application/pdf;base64," + base64.b64encode(b"%PDF" * 100_000))
    response = client.post("/v1/ocr", data=raw, content_type="application/json")
    assert response.status_code == 200, response.get_data()[:300]
    assert fake.last.body == raw


@pytest.mark.parametrize("raw, code", [
    (_ocr(b"A" * LONG * 2 + b"\xff"), "invalid_utf8"),
    (_ocr(b"A" * LONG * 2, b', "model": "mistral-ocr-latest"}'), "duplicate_json_key"),
    (_ocr(b"A" * LONG * 2, b"]"), "invalid_json"),
])
def test_a_body_with_a_long_string_is_refused_as_a_whole_text_parse_would_refuse_it(client, fake, raw, code):
    response = client.post("/v1/ocr", data=raw, content_type="application/json")
    assert response.status_code == 400 and response.json["code"] == code, response.get_data()[:300]
    if code == "invalid_json":  # where the fault is, in the body as sent
        assert response.json["message"].endswith(f"column {len(raw)}")
    assert fake.seen == []


@settings(max_examples=60, deadline=None)
@given(doc=values, ascii_only=st.booleans(), size=st.sampled_from([3, 4096, -1]))
def test_a_spliced_body_reads_back_byte_for_byte_in_any_read_size(doc, ascii_only, size):
    raw = json.dumps({"model": "m", "x": doc, "y": "Z" * (LONG + 1)}, ensure_ascii=ascii_only).encode()
    parsed = longjson.parse_long(bytearray(raw), splice_from=0)
    assume(parsed is not longjson.SCAN and parsed[1] is not None)
    spliced = parsed[1]
    for _ in range(2):  # a retry reads it again from the start
        spliced.seek(0)
        assert spliced.read(0) == b""  # reads nothing, skips nothing
        chunks = list(iter(lambda: spliced.read(size), b""))
        assert b"".join(chunks) == raw and len(spliced) == len(raw)
        assert size < 0 or all(0 < len(chunk) <= size for chunk in chunks)


def test_a_body_that_is_mostly_a_data_uri_is_held_once(client):
    """The 10 MB OCR case: once parsed, the received buffer goes; the forwarded bytes are spliced back from
    the very string the parsed value holds, so the body is not kept twice while Mistral answers."""
    uri = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 5000).decode()  # 1.7 MB
    raw = json.dumps({"model": "mistral-ocr-latest", "document": {"type": "image_url", "image_url": uri}}).encode()
    with client.application.test_request_context("/v1/ocr", method="POST", data=raw, content_type="application/json"):
        from flask import request
        body = bodies.read_json(request, 50 * 1024 * 1024, required=True)
    assert body.raw is None and body.size == len(raw)
    assert any(segment is body.json["document"]["image_url"] for segment in body.spliced._segments)
    assert body.payload.read() == raw
    mostly_short = json.dumps({"model": "m", "a": "x" * LONG, "b": ["y" * 100] * 12000}).encode()
    small = json.dumps({"model": "m", "a": "x" * (longjson.SPLICE_FROM // 2)}).encode()  # a 512 KB prompt
    for kept_whole in (mostly_short, small):
        with client.application.test_request_context("/v1/ocr", method="POST", data=kept_whole,
                                                     content_type="application/json"):
            kept = bodies.read_json(request, 50 * 1024 * 1024, required=True)
        assert kept.spliced is None and kept.payload == kept_whole


def test_a_spliced_body_is_sent_whole_again_on_a_retry(make_app, fake, clock):
    from werkzeug.wrappers import Response

    tries = []

    def handler(request):
        tries.append(request)
        if len(tries) == 1:
            return Response('{"object": "error", "message": "busy"}', 503, {"Content-Type": "application/json"})
        return Response(json.dumps({"pages": [], "model": "mistral-ocr-latest", "usage_info": {"pages_processed": 1}}),
                        200, {"Content-Type": "application/json"})

    fake.on("POST", "/v1/ocr", handler)
    raw = _ocr(b"data:application/pdf;base64," + base64.b64encode(b"%PDF" * 300_000))  # 1.6 MB: spliced
    client = make_app(retries=1, retry_backoff=0.01, retry_max_wait=1.0).test_client()
    response = client.post("/v1/ocr", data=raw, content_type="application/json")
    assert response.status_code == 200, response.get_data()[:300]
    assert [seen.body for seen in fake.seen] == [raw, raw]
