"""Shared fixtures: settings -> app -> client, and a fake Mistral upstream on loopback."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from sidecar.clock import FakeClock
from sidecar.settings import Settings

from .apps import SECRETS, build_app
from .fakes import FakeMistral

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
MISTRAL_KEY = "sk-test-real-mistral-key-0123456789"
CONFIG_MASTER = "sk-sidecar-master-1234"
# The OCR write-up's pass-through route as it is written (for ``configured``).
SEED_OCR = """general_settings:
  pass_through_endpoints:
    - path: "/mistral/v1/ocr"
      target: "{fake}/v1/ocr"
      headers:
        Authorization: "bearer os.environ/MISTRAL_API_KEY"
        content-type: application/json
        accept: application/json
      forward_headers: True
"""


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
        db_path=tmp_path / "sidecar.db",  # where the local limits and journals go on PostgreSQL too
    )


@pytest.fixture
def clock() -> FakeClock:
    """Time that moves only when the test says so: ``clock.advance(seconds)``."""
    return FakeClock()


@pytest.fixture
def make_app(settings, request):
    """Apps built from ``settings`` with ``changes``; a test that asks for ``clock`` gets apps on that
    clock (every expiry, window, cache and retry wait follows it), others run on the system clock."""
    clock = request.getfixturevalue("clock") if "clock" in request.fixturenames else None
    built = []

    def build(**changes):
        built.append(build_app(settings.with_(**changes), clock=clock))
        return built[-1]
    yield build
    for app in built:  # no spend writer outlives its test, retrying into a store that is gone
        for close in app.extensions["sidecar.close"]:
            close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def configured(fake, settings, tmp_path):
    """Build an app from a config.yaml text ({fake} is the fake upstream's URL), master key ``CONFIG_MASTER``."""
    def build(text: str):
        path = tmp_path / "config.yaml"
        path.write_text(text.replace("{fake}", fake.url))
        env = {"MISTRAL_API_KEY": MISTRAL_KEY, "SIDECAR_CONFIG": str(path), "MISTRAL_API_BASE": fake.url,
               "SIDECAR_MASTER_KEY": CONFIG_MASTER}
        return build_app(Settings.from_env(env, spec_path=ROOT / "openapi.yaml",
                                            database_url=settings.database_url)).test_client()
    return build


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


# -- the secret scan: every log line of the whole run is checked for every secret the run used ------------
VIRTUAL_KEY = re.compile(r"sk-[A-Za-z0-9_-]{43}")  # the shape of every generated key (previews are sk-...abcd)
SECRETS.add(MISTRAL_KEY)


class LogTap(logging.Handler):
    """Keeps every record's formatted text, from every logger, for the scan after each test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "werkzeug":  # the test servers' access logs echo what a test sent, secrets included
            self.lines.append(self.format(record))


TAP = LogTap()


def pytest_configure(config):
    """Tap the root logger; ``apps.build_app`` learns the secrets of every app the run builds."""
    root = logging.getLogger()
    root.addHandler(TAP)
    root.setLevel(min(root.level, logging.INFO) or logging.INFO)


@pytest.fixture(autouse=True)
def no_secret_in_logs():
    """Fails any test during which a log line carried a secret (a virtual key by its shape, or a known one)."""
    start = len(TAP.lines)
    yield
    lines, TAP.lines = TAP.lines[start:], TAP.lines[:start]
    for line in lines:
        found = VIRTUAL_KEY.search(line)
        leaked = found.group() if found else next((s for s in SECRETS if s in line), None)
        assert leaked is None, f"a secret reached the logs: {line.replace(leaked, '<the secret>')[:300]!r}"


@pytest.fixture
def live_sidecar_for():
    """Serves an app on a real loopback socket (stream timing needs a real client, not the test client)."""
    import threading

    from werkzeug.serving import make_server
    servers = []

    def serve(app):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
