"""Pass-through endpoints from config.yaml: the OCR write-up's route as written, auth, header policy, subpaths."""

from __future__ import annotations

import json

import pytest

from ..conftest import CONFIG_MASTER, MISTRAL_KEY, SEED_OCR
from ..fakes import chat_events

MASTER = CONFIG_MASTER
OCR_BODY = {"model": "mistral-ocr-latest",
            "document": {"image_url": "https://raw.githubusercontent.com/mistralai/cookbook/refs/heads/main/mistral/ocr/receipt.png"}}
OCR_ANSWER = {"pages": [{"index": 0, "markdown": "# receipt", "images": [], "dimensions": {"dpi": 200, "height": 1,
                                                                                           "width": 1}}],
              "model": "mistral-ocr-2503-completion", "usage_info": {"pages_processed": 1, "doc_size_bytes": 3}}


def test_the_seed_ocr_route_wins_over_the_spec_and_is_relayed_as_written(configured, fake):
    client = configured(SEED_OCR)
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    raw = json.dumps(OCR_BODY).encode()  # no document.type: relayed untouched, not validated
    response = client.post("/mistral/v1/ocr", data=raw, headers={
        "authorization": f"Bearer {MASTER}", "content-type": "application/json", "X-Trace": "t-1"})
    assert response.status_code == 200 and response.json["pages"][0]["markdown"] == "# receipt"
    seen = fake.last
    assert seen.body == raw
    assert seen.headers["Authorization"] == f"bearer {MISTRAL_KEY}"
    assert seen.headers["X-Trace"] == "t-1"  # forward_headers: the client's other headers go along
    assert MASTER not in json.dumps(seen.headers)


def test_forward_headers_never_leaks_the_sidecar_key_even_in_other_headers(configured, fake):
    client = configured(SEED_OCR)
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    client.post("/mistral/v1/ocr", json=OCR_BODY, headers={
        "Authorization": f"Bearer {MASTER}", "x-api-key": MASTER, "X-Copy": f"key={MASTER}", "Cookie": "s=1"})
    assert MASTER not in json.dumps(fake.last.headers)
    assert "Cookie" not in fake.last.headers


def test_pass_through_is_authenticated_by_default(configured, fake):
    client = configured(SEED_OCR)
    assert client.post("/mistral/v1/ocr", json=OCR_BODY).status_code == 401
    assert client.post("/mistral/v1/ocr", json=OCR_BODY, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert fake.seen == []


def test_auth_false_opens_a_route_and_headers_are_only_the_configured_ones(configured, fake):
    client = configured("""general_settings:
  pass_through_endpoints:
    - path: /open/echo
      target: "{fake}/echo"
      auth: false
      headers: {X-Target-Key: fixed}
""")
    fake.on("POST", "/echo", json_body={"ok": True})
    response = client.post("/open/echo?x=1", json={"a": 1}, headers={"X-Client": "dropped"})
    assert response.status_code == 200 and fake.last.query == "x=1"
    assert fake.last.headers["X-Target-Key"] == "fixed" and "X-Client" not in fake.last.headers


SUBPATH = """general_settings:
  pass_through_endpoints:
    - path: /tools
      target: "{fake}/api/tools"
      include_subpath: true
      auth: false
"""


def test_include_subpath_maps_below_the_target(configured, fake):
    client = configured(SUBPATH)
    fake.on("GET", "/api/tools/a/b", json_body={"ok": 1})
    assert client.get("/tools/a/b").json == {"ok": 1}
    assert fake.last.path == "/api/tools/a/b"


@pytest.mark.parametrize("path", ["/tools/../secret", "/tools/a/%2e%2e/%2e%2e/secret", "/tools/a%2F..%2F..%2Fsecret",
                                  "/tools/%252e%252e/secret", "/tools/a/./b", "/tools/a//b", "/tools/a%5c..%5cb"])
def test_a_subpath_cannot_climb_above_the_target(configured, fake, path):
    client = configured(SUBPATH)
    response = client.get(path)
    assert response.status_code == 400 and response.json["code"] == "unsafe_path"
    assert fake.seen == []


def test_pass_through_streams_event_by_event(configured, fake):
    client = configured(SUBPATH)
    fake.stream("POST", "/api/tools/stream", chat_events(3))
    response = client.post("/tools/stream", json={"stream": True})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.get_data() == b"".join(chat_events(3))


def test_the_shadowed_operation_is_still_accounted(configured, fake, caplog):
    client = configured(SEED_OCR)
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    with caplog.at_level("INFO", logger="sidecar.access"):
        client.post("/mistral/v1/ocr", json=OCR_BODY, headers={"Authorization": f"Bearer {MASTER}"})
    line = json.loads([r.getMessage() for r in caplog.records if r.name == "sidecar.access"][-1])
    assert line["operation"] == "ocr_v1_ocr_post" and line["model"] == "mistral-ocr-latest"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\x00b"])
def test_forwarded_headers_with_control_characters_are_refused_not_forwarded(configured, fake, value):
    client = configured(SEED_OCR)
    fake.on("POST", "/v1/ocr", json_body=OCR_ANSWER)
    response = client.post("/mistral/v1/ocr", json=OCR_BODY, headers={"Authorization": f"Bearer {MASTER}"},
                           environ_overrides={"HTTP_X_TRACE": value})
    assert response.status_code == 400 and response.json["code"] == "invalid_header"
    assert fake.seen == []



def test_a_chunked_json_body_over_the_limit_is_refused_without_reading_it_whole():
    """No Content-Length: read in chunks up to the limit (never one read of the whole limit), then 413."""
    from werkzeug.wrappers import Request

    from sidecar.web import body as bodies

    class Stream:
        def __init__(self, size: int):
            self.left, self.asked = size, []

        def read(self, size: int = -1) -> bytes:
            self.asked.append(size)
            given = min(self.left, size if size >= 0 else self.left)
            self.left -= given
            return b"x" * given

    stream = Stream(300_000)
    request = Request({"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json", "wsgi.input": stream,
                       "wsgi.input_terminated": True, "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"})
    with pytest.raises(bodies.PayloadTooLarge):
        bodies.read_unchecked(request, 100_000, 100_000)
    assert max(stream.asked) <= bodies.CHUNK and stream.left > 0


def test_a_store_that_cannot_be_read_is_a_503_on_a_pass_through_route_as_on_any(configured, fake, monkeypatch):
    import sqlalchemy as sa

    client = configured(SEED_OCR)

    def down(token):
        raise sa.exc.OperationalError("SELECT", {}, OSError("connection refused"))
    monkeypatch.setattr(client.application.extensions["sidecar"].auth.keys, "caller_for", down)
    response = client.post("/mistral/v1/ocr", json=OCR_BODY, headers={"Authorization": "Bearer sk-a-virtual-key"})
    assert response.status_code == 503 and response.json["code"] == "store_unavailable"
    assert fake.seen == []
