"""The spec dispatcher in front of Flask: which requests it takes, and that it answers as Flask would."""

from __future__ import annotations

import pytest

from sidecar.web.routes import SpecDispatcher

from ..apps import build_app
from ..conftest import SEED_OCR


def _table(app) -> dict:
    assert isinstance(app.wsgi_app, SpecDispatcher)
    return app.wsgi_app.routes


def test_fixed_proxied_paths_are_dispatched_directly(app):
    table = _table(app)
    for path in ("/v1/chat/completions", "/mistral/v1/chat/completions", "/chat/completions", "/v1/embeddings"):
        assert ("POST", path) in table
    assert ("GET", "/v1/models") in table


def test_parameters_own_handlers_and_unknown_paths_stay_with_flask(app):
    paths = {path for _method, path in _table(app)}
    assert not any("{" in path or "<" in path for path in paths)
    assert not {"/health/liveliness", "/metrics", "/key/generate"} & paths
    assert ("GET", "/v1/chat/completions") not in _table(app)  # 405 is Flask's answer


def test_a_pass_through_route_at_a_spec_path_keeps_its_flask_rule(configured):  # noqa: F811
    client = configured(SEED_OCR)
    table = client.application.wsgi_app.routes
    assert ("POST", "/mistral/v1/ocr") not in table
    assert ("POST", "/v1/ocr") in table


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/files/3b2b2c1e-5d6f-4a7b-8c9d-0e1f2a3b4c5d"])
def test_an_unexpected_error_is_answered_alike_on_both_ways(make_app, fake, path, monkeypatch):
    app = make_app()
    pipeline = app.extensions["sidecar"]

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline.upstream, "send", broken)
    method = "post" if "chat" in path else "get"
    body = {"json": {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}} \
        if method == "post" else {}
    response = getattr(app.test_client(), method)(path, **body)
    assert response.status_code == 500
    assert response.json["message"] == "Internal error in the sidecar."


def test_a_refusal_on_the_direct_way_is_the_pipeline_s_own(settings):
    response = build_app(settings).test_client().post("/v1/chat/completions", data=b"{",
                                                        headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.headers["x-request-id"]


def test_urls_still_build_from_spec_rules_whose_builders_are_compiled_on_first_use(app):
    """Rules compile their URL builders lazily (routes.LazyBuildRule): a URL built twice, with and
    without extra arguments, is what werkzeug's eager builder gives."""
    from flask import url_for

    with app.test_request_context():
        for _ in range(2):
            assert url_for("/v1/files/{file_id}", file_id="file-1 2") == "/v1/files/file-1%202"
            assert url_for("/mistral/v1/files/{file_id}", file_id="f", page=2) == "/mistral/v1/files/f?page=2"
            assert url_for("/v1/chat/completions") == "/v1/chat/completions"
