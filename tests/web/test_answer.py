"""An ``Answer`` sends what werkzeug's ``Response`` would send for the same status, headers and body,
and becomes a full ``Response`` as soon as anything reads it as one."""

from __future__ import annotations

import pytest
from flask import Response

from sidecar.web.answer import Answer

BODY = b'{"id":"cmpl-1","usage":{"prompt_tokens":3}}'
HEADERS = [("Content-Type", "application/json"), ("mistral-correlation-id", "abc"), ("x-request-id", "r1")]


def sent(response, method: str = "POST") -> tuple[str, list[tuple[str, str]], bytes]:
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers
    body = b"".join(response({"REQUEST_METHOD": method, "SERVER_PROTOCOL": "HTTP/1.1"}, start_response))
    return seen["status"], sorted(seen["headers"]), body


@pytest.mark.parametrize("status", [200, 201, 400, 404, 422, 429, 500, 503, 599])
@pytest.mark.parametrize("method", ["POST", "HEAD"])
def test_an_answer_sends_what_werkzeug_would(status, method):
    assert sent(Answer(BODY, status, list(HEADERS)), method) == sent(Response(BODY, status, list(HEADERS)), method)


@pytest.mark.parametrize("status", [204, 304])
def test_statuses_werkzeug_treats_specially_are_left_to_it(status):
    assert sent(Answer(b"", status, list(HEADERS))) == sent(Response(b"", status, list(HEADERS)))


def test_reading_it_as_a_response_builds_one_and_what_is_changed_is_sent():
    answer = Answer(BODY, 200, list(HEADERS))
    assert answer.status_code == 200 and answer.get_data() == BODY
    assert answer.headers["mistral-correlation-id"] == "abc"
    answer.headers["x-added"] = "yes"
    status, headers, body = sent(answer)
    assert (status, body) == ("200 OK", BODY)
    assert ("x-added", "yes") in headers and ("Content-Length", str(len(BODY))) in headers


def test_a_given_content_length_is_left_to_werkzeug_not_sent_twice():
    given = [*HEADERS, ("content-length", str(len(BODY)))]
    status, headers, _body = sent(Answer(BODY, 200, list(given)))
    assert [name.lower() for name, _value in headers].count("content-length") == 1
    assert (status, headers) == sent(Response(BODY, 200, list(given)))[:2]


def test_a_header_value_that_is_not_text_is_converted_as_werkzeug_converts_it():
    given = [*HEADERS, ("x-count", 3)]
    assert sent(Answer(BODY, 200, list(given))) == sent(Response(BODY, 200, list(given)))


def test_a_header_value_with_a_line_break_is_refused_as_werkzeug_refuses_it():
    with pytest.raises(ValueError):
        sent(Answer(BODY, 200, [*HEADERS, ("x-split", "a\r\nSet-Cookie: b")]))
