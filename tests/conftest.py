"""Shared fixtures: settings -> app -> client, and a fake Mistral upstream on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from sidecar import create_app
from sidecar.settings import Settings

from .fakes import FakeMistral

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
MISTRAL_KEY = "sk-test-real-mistral-key-0123456789"


@pytest.fixture
def fake():
    upstream = FakeMistral()
    yield upstream
    upstream.close()


@pytest.fixture
def settings(fake, tmp_path) -> Settings:
    return Settings(
        mistral_api_base=fake.url,
        mistral_api_key=MISTRAL_KEY,
        spec_path=ROOT / "openapi.yaml",
        connect_timeout=2.0,
        read_timeout=5.0,
        database_url=f"sqlite:///{tmp_path / 'sidecar.db'}",
    )


@pytest.fixture
def make_app(settings):
    def build(**changes):
        return create_app(settings.with_(**changes))
    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_sidecar(app):
    """The app on a real loopback socket (werkzeug, threaded) for real HTTP clients; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
