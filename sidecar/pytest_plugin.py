"""The pytest plugin (``pip install mistral-sidecar[pytest]``): a ``mistral_sidecar`` fixture serving Mistral's
API from recorded contracts, offline, with no key and no line of conftest.

The sidecar runs in the test process, on a werkzeug server thread bound to a free loopback port: it is up in
about a second (no gunicorn to boot, no port to poll), a bad contract fails the session with the problem
itself rather than a dead subprocess's log, and record mode can reach whatever the tests start (a fake
Mistral on loopback). Options (also settable as ini keys ``mistral_contracts``, ``mistral_record`` ...):

- ``--mistral-contracts DIR``: default ``tests/contracts`` under the rootdir when it exists, else the shipped ones;
- ``--mistral-record=none|once|new_episodes|all``: vcrpy's record modes; ``none`` (default) never uses the network;
- ``--mistral-fallback=none|shipped``: let the shipped generic answers answer what DIR does not;
- ``--mistral-replay-speed=N``: replayed streams keep their recorded pace divided by N (0: all at once).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

RECORD_MODES = ("none", "once", "new_episodes", "all")
OPTIONS = {  # option -> (ini/dest name, default, help)
    "--mistral-contracts": ("mistral_contracts", None,
                            "contracts directory (default: tests/contracts under the rootdir if it exists, else the shipped ones)"),
    "--mistral-record": ("mistral_record", "none", "record mode, as vcrpy's: none (default), once, new_episodes, all"),
    "--mistral-fallback": ("mistral_fallback", "none", "none (default) or shipped: the shipped answers back up yours"),
    "--mistral-replay-speed": ("mistral_replay_speed", "1", "divide recorded stream delays by this (0: no delays)"),
}


@dataclass(frozen=True)
class MistralSidecar:
    """A running sidecar: ``url`` is an SDK's ``server_url``; ``url + "/v1"`` an OpenAI client's ``base_url``."""

    url: str
    api_key: str
    contracts: Path
    record: str

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def pytest_addoption(parser) -> None:
    group = parser.getgroup("mistral-sidecar", "Mistral API replay (mistral-sidecar)")
    for flag, (name, default, text) in OPTIONS.items():
        kwargs = {"choices": RECORD_MODES} if name == "mistral_record" else {}
        if name == "mistral_fallback":
            kwargs = {"choices": ("none", "shipped")}
        group.addoption(flag, dest=name, default=None, help=text, **kwargs)
        parser.addini(name, text, default=default)


def _option(config, name: str):
    value = config.getoption(name)
    return value if value is not None else config.getini(name)


def resolve_contracts(config) -> tuple[Path, bool]:
    """The contracts directory and whether it is the user's own (strict) rather than the shipped one."""
    from sidecar.settings import DEFAULT_CONTRACTS

    given = _option(config, "mistral_contracts")
    if given:
        path = Path(given)
        return (path if path.is_absolute() else Path(config.rootpath) / path), True
    own = Path(config.rootpath) / "tests" / "contracts"
    if own.is_dir() or _option(config, "mistral_record") != "none":
        return own, True
    return Path(DEFAULT_CONTRACTS), False


def _adapter(settings, spec, record: str, own: bool):
    """The transport for a record mode (vcrpy's meanings), over the contracts directory."""
    from sidecar.upstream import transports

    if record != "none" and not own:
        raise pytest.UsageError("--mistral-record writes into your own contracts directory, not the shipped one")
    has_contracts = settings.contracts_dir.is_dir() and any(settings.contracts_dir.rglob("*.yaml"))
    if record == "none" or (record == "once" and has_contracts):
        return transports.replay_adapter(settings, spec)
    if not settings.mistral_api_key:
        raise pytest.UsageError(f"--mistral-record={record} forwards to Mistral: set MISTRAL_API_KEY")
    settings.contracts_dir.mkdir(parents=True, exist_ok=True)
    return transports.record_adapter(settings, spec, overwrite=record == "all", replay_first=record == "new_episodes")


@pytest.fixture(scope="session")
def mistral_sidecar(pytestconfig, tmp_path_factory):
    """The sidecar on a free loopback port answering from the contracts (see the module docstring)."""
    from werkzeug.serving import make_server

    from sidecar import create_app
    from sidecar.contracts.fileformat import ContractError
    from sidecar.core.validation import load_compiled
    from sidecar.settings import Settings, SettingsError

    contracts, own = resolve_contracts(pytestconfig)
    record = _option(pytestconfig, "mistral_record")
    fallback = _option(pytestconfig, "mistral_fallback")
    try:
        speed = float(_option(pytestconfig, "mistral_replay_speed"))
        settings = Settings.from_env(
            upstream_mode="record" if record != "none" else "replay", contracts_dir=contracts,
            contracts_fallback=fallback if own else "none", replay_speed=max(0.0, speed), host="127.0.0.1",
            database_url=f"sqlite:///{tmp_path_factory.mktemp('mistral-sidecar') / 'sidecar.sqlite3'}",
            redis_url=None, metrics_dir=None)
        spec = load_compiled(settings.spec_path)[0]  # create_app's, cached
        app = create_app(settings, adapter=_adapter(settings, spec, record, own))
    except (ContractError, SettingsError, ValueError) as error:
        pytest.fail(f"mistral-sidecar could not start: {error}", pytrace=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mistral-sidecar", daemon=True)
    thread.start()
    try:
        yield MistralSidecar(f"http://127.0.0.1:{server.server_port}", settings.master_key or "sk-mistral-sidecar-replay",
                             contracts, record)
    finally:
        server.shutdown()
        server.server_close()
