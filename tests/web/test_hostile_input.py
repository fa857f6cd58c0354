"""Hostile input: every malformed, oversized or crafted request gets a clear 4xx, never a 500 or a hang.

The property test at the end throws generated raw requests (any spec route, random parameters,
headers and body bytes) at the WSGI app with an upstream that answers 200 to anything.
"""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Response

from sidecar.core.spec import Spec

from ..conftest import ROOT

CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
ERROR_KEYS = {"object", "message", "type", "param", "code"}


def _chat_with(fragment: bytes) -> bytes:
    """A chat body whose first message content is ``fragment`` (raw JSON text)."""
    return b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": ' + fragment + b"}]}"


def assert_error_shape(response, status=None):
    assert response.status_code < 500, response.get_data()[:300]
    assert 400 <= response.status_code, response.get_data()[:300]
    if status is not None:
        assert response.status_code == status, response.get_data()[:300]
    body = json.loads(response.get_data())
    assert set(body) == ERROR_KEYS or set(body) == {"detail"}, body
    return body


@pytest.fixture
def echo(fake):
    """An upstream that answers 200 with a small JSON body to any request."""
    fake.fallback = lambda request: Response(b'{"object": "ok"}', 200, {"Content-Type": "application/json"})
    return fake


class CountingInput(io.RawIOBase):
    """A wsgi.input that yields ``size`` bytes on demand and counts how many were read."""

    def __init__(self, size: int):
        self.size, self.read_bytes = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.read_bytes)
        buffer[:n] = b" " * n
        self.read_bytes += n
        return n


def _call(app, path, *, method="POST", headers=None, input_stream=None, length=None, content_type="application/json"):
    environ = EnvironBuilder(path=path, method=method, headers=headers or {}, content_type=content_type).get_environ()
    environ["wsgi.input"] = input_stream
    if length is None:
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True  # as gunicorn marks a chunked body
    else:
        environ["CONTENT_LENGTH"] = str(length)
    body, status, _headers = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), b"".join(body)


# -- size limits --------------------------------------------------------------------------------------
def test_declared_oversized_body_is_refused_without_reading_it(make_app, fake):
    app = make_app(max_body_bytes=1000)
    stream = CountingInput(10_000_000)
    status, body = _call(app, "/v1/chat/completions", input_stream=stream, length=10_000_000)
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert stream.read_bytes == 0
    assert fake.seen == []


def test_chunked_oversized_body_is_refused_after_at_most_the_limit(make_app, fake):
    app = make_app(max_body_bytes=1000)
    stream = CountingInput(10_000_000)
    status, _ = _call(app, "/v1/chat/completions", input_stream=stream, length=None)
    assert status == 413
    assert stream.read_bytes <= 1001 + 64 * 1024  # the limit plus at most one read buffer
    assert fake.seen == []


def test_oversized_upload_is_refused_while_streaming(make_app, fake):
    app = make_app(max_upload_bytes=100_000)
    stream = CountingInput(50_000_000)
    status, _ = _call(app, "/v1/files", input_stream=stream, length=None,
                      content_type="multipart/form-data; boundary=xyz")
    assert status == 413
    assert stream.read_bytes < 300_000
    assert fake.seen == []


# -- malformed bodies -------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, content_type, status", [
    (b'{"model": ', "application/json", 400),
    (b"\xff\xfe\x00{}", "application/json", 400),  # not UTF-8
    (b'{"model": "mistral-small-latest", "messages": "\xc3\x28"}', "application/json", 400),
    (_chat_with(b'"a\x00b"'), "application/json", 400),  # a raw NUL inside a JSON string
    (b"\x00" * 64, "application/json", 400),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),  # RecursionError in json.loads
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", 400),
    (b'{"model": "mistral-small-latest", "max_tokens": ' + b"9" * 100_000 + b"}", "application/json", 400),
    (b"model=x", "application/x-www-form-urlencoded", 415),
    (b"<xml/>", "application/xml", 415),
    (b"--x\r\n\r\n", "multipart/form-data; boundary=x", 415),
])
def test_malformed_json_bodies_get_a_clear_4xx(client, fake, raw, content_type, status):
    response = client.post("/v1/chat/completions", data=raw, content_type=content_type)
    assert_error_shape(response, status)
    assert fake.seen == []


@pytest.mark.parametrize("raw", [
    b'{"model": "mistral-large-latest", "messages": [{"role": "user", "content": "hi"}], "model": "mistral-small-latest"}',
    b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi", "role": "system"}]}',
    b'{"model": "mistral-small-latest", "model": "mistral-small-latest", "messages": [],}',  # repaired, still twice
])
def test_a_key_given_twice_is_refused_before_anything_reads_the_body(client, fake, raw):
    """Python keeps the last value, other parsers the first: the allowlist and Mistral could read different models."""
    response = client.post("/v1/chat/completions", data=raw, content_type="application/json")
    body = assert_error_shape(response, 400)
    assert body["code"] == "duplicate_json_key" and "appears twice" in body["message"]
    assert fake.seen == []


@pytest.mark.parametrize("depth", [100, 200, 300, 500, 900])
def test_deep_nesting_that_json_accepts_is_still_no_500(client, echo, depth):
    """Deep enough for the schema validator's own recursion limit, shallow enough for json.loads."""
    nested = b"[" * depth + b"]" * depth
    response = client.post("/v1/chat/completions", data=_chat_with(nested), content_type="application/json")
    assert response.status_code < 500, response.get_data()[:300]
    if response.status_code >= 400:
        assert_error_shape(response)


@pytest.mark.parametrize("fragment", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"1" * 4000, b"1." + b"1" * 5000])
def test_huge_and_non_finite_numbers_are_no_500(client, echo, fragment):
    for raw in (_chat_with(fragment),
                b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}], "temperature": '
                + fragment + b"}",
                b'{"model": "mistral-small-latest", "user": "u", "messages": [{"role": "user", "content": "x"}], '
                b'"max_tokens": ' + fragment + b"}"):
        response = client.post("/v1/chat/completions", data=raw, content_type="application/json")
        assert response.status_code < 500, response.get_data()[:300]


# -- headers, paths, queries --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb", "a\x00b"])
def test_control_characters_in_header_values_are_refused_not_forwarded(client, fake, value):
    response = client.post("/v1/chat/completions", json=CHAT, environ_overrides={"HTTP_X_TRACE": value})
    body = assert_error_shape(response, 400)
    assert body["code"] == "invalid_header"
    assert fake.seen == []


@pytest.mark.parametrize("path", [
    "/v1/files/..%2F..%2Fadmin", "/v1/files/..", "/v1/files/../content", "/v1/files/%2E%2E/content",
    "/v1/files/./content", "/v1/files/%2e/content", "/mistral/v1/files/../content",
    "/v1/files/..%2F..%2Fadmin/content", "/v1/files/%2F..%2Fv1%2Fmodels/content",
])
def test_path_parameters_never_reach_another_upstream_path(client, echo, path):
    response = client.get(path)
    assert response.status_code < 500
    for seen in echo.seen:  # whatever was forwarded stayed under /v1/files/<one segment>/...
        assert seen.path.startswith("/v1/files/"), seen.path
        segment = seen.path.split("/")[3]
        assert segment not in ("", ".", ".."), seen.path
    if response.status_code >= 400:
        assert_error_shape(response)


def test_path_parameters_are_quoted_into_one_segment(client, echo):
    # a conversation id is free text in the spec (a file id must be a UUID, so it would be refused with a 422)
    response = client.get("/v1/conversations/a%3Fb%23c%00d%20e/history")
    assert response.status_code == 200
    # the upstream decodes the path once: the whole parameter is one segment again, no query, no fragment
    assert echo.last.path == "/v1/conversations/a?b#c\x00d e/history"
    assert echo.last.query == ""
    # a slash cannot get into a parameter: the server decodes %2F before routing, so no rule matches
    assert_error_shape(client.get("/v1/conversations/a%2Fb/history"), 404)


def test_dot_segments_are_refused_before_upstream(client, fake):
    for path in ("/v1/conversations/../history", "/v1/conversations/./history", "/v1/conversations/%2E%2E/history"):
        body = assert_error_shape(client.get(path), 400)
        assert body["code"] == "invalid_path_parameter" and body["param"] == "conversation_id"
    assert fake.seen == []


def test_absurd_query_strings_are_answered_quickly_and_never_500(client, echo):
    for query in ("&".join(f"p{i}=1" for i in range(100_000)), "q=" + "x" * 1_000_000,
                  "page=" + "9" * 10_000, "page=1&" * 50_000, "%00=%00&%ff=%fe"):
        started = time.monotonic()
        response = client.get("/v1/files?" + query)
        assert time.monotonic() - started < 10
        assert response.status_code < 500, response.get_data()[:300]


def test_nul_bytes_in_path_and_query_are_no_500(client, echo):
    for path in ("/v1/files/%00/content", "/v1/models?x=%00", "/v1/models/%00", "/v1/%00"):
        response = client.get(path)
        assert response.status_code < 500, (path, response.get_data()[:300])


# -- property: no generated request makes the sidecar fail ---------------------------------------------
_SPEC = Spec.load(ROOT / "openapi.yaml")
_ENDPOINTS = sorted((e.method, e.path) for e in _SPEC.endpoints)
_SPEC_PARAMS = re.compile(r"{([^}/]+)}")
_SEGMENT = st.one_of(
    st.sampled_from([".", "..", "%2E%2E", "..%2F..%2Fadmin", "%00", "a b", "%ff", "x" * 300, "42", "-1"]),
    st.text(st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=20),
)
_HEADER_VALUE = st.text(st.characters(codec="latin-1"), max_size=40)
_BODY = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([json.dumps(CHAT).encode(), json.dumps(dict(CHAT, stream=True)).encode(),
                     b"[" * 5000, b'{"model": ' + b"9" * 5000 + b"}"]),
)


@st.composite
def raw_requests(draw):
    method, template = draw(st.sampled_from(_ENDPOINTS))
    if draw(st.booleans()):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = template
    for name in _SPEC_PARAMS.findall(template):
        path = path.replace("{" + name + "}", draw(_SEGMENT), 1)
    prefix = draw(st.sampled_from(["", "/mistral"]))
    query = draw(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=4))
    headers = draw(st.dictionaries(st.sampled_from(["X-Trace", "Authorization", "X-Api-Key", "Accept", "X-End-User",
                                                    "X-Request-Id", "Content-Encoding"]), _HEADER_VALUE, max_size=3))
    content_type = draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=b",
                                         "application/octet-stream", "", "application/json; charset=latin-1"]))
    return method, prefix + path, query, headers, content_type, draw(_BODY)


@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=raw_requests())
def test_no_generated_request_gets_a_500(app, echo, raw):
    method, path, query, headers, content_type, body = raw
    builder = EnvironBuilder(method=method, path=path, query_string=query, data=body,
                             content_type=content_type or None)
    environ = builder.get_environ()
    for name, value in headers.items():  # straight into the environ: werkzeug's builder refuses CR/LF
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    response_body, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    code = int(status.split()[0])
    payload = b"".join(response_body)
    rerun = f"method={method!r} path={path!r} query={query!r} headers={headers!r} body={body[:200]!r}"
    assert code < 500, f"{code} {payload[:300]!r}\nre-run: {rerun}"
    if code >= 400:  # the upstream answers 200 to anything: every 4xx is the sidecar's own
        parsed = json.loads(payload)
        assert set(parsed) == ERROR_KEYS or set(parsed) == {"detail"}, f"{parsed}\nre-run: {rerun}"
