"""What the sidecar checks and says when it starts: settings that cannot work stop start-up with one line,
and a short summary tells a person what is running (mode, upstream, auth, config, store, limits, workers).

Used once by the gunicorn master (``gunicorn_conf``), never by workers, so each line is printed once.
Imports nothing heavy: the master must not import ssl, requests or SQLAlchemy before gevent patches.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from . import shipped
from .settings import Settings, is_loopback

PREFIX = "mistral-sidecar"


class StartupError(Exception):
    """A setting the sidecar cannot serve with; the message says which and how to fix it."""


def _host_of(address: str) -> str | None:
    """The host of a gunicorn bind address, None for a unix socket or a file descriptor."""
    if address.startswith(("unix:", "fd://")):
        return None
    return address.rsplit(":", 1)[0] if ":" in address else address


def check(settings: Settings, binds) -> None:
    """Raise ``StartupError`` for the first setting that cannot work; the message is one line."""
    if not settings.master_key:
        for address in binds:
            host = _host_of(address)
            if host is not None and not is_loopback(host):
                raise StartupError(
                    f"refusing to listen on {address} without a master key: set SIDECAR_MASTER_KEY (or "
                    "LITELLM_MASTER_KEY, or general_settings.master_key in the config), or bind to 127.0.0.1")
    if settings.upstream_mode in ("real", "record") and not settings.mistral_api_key:
        raise StartupError(
            f"MISTRAL_API_KEY is not set: {settings.upstream_mode} mode forwards calls to "
            f"{settings.mistral_api_base}, which refuses them without a key. Set it, or serve offline with "
            "`mistral-sidecar serve --replay`")
    if settings.upstream_mode == "replay" and not Path(settings.contracts_dir).is_dir():
        raise StartupError(f"replay mode needs a directory of contracts: {settings.contracts_dir} is not one "
                           "(`serve --replay DIR`, or SIDECAR_CONTRACTS)")
    if not Path(settings.spec_path).is_file():
        raise StartupError(f"the OpenAPI spec {settings.spec_path} does not exist (SIDECAR_SPEC)")


@contextlib.contextmanager
def migrating(env=None):
    """Bring the store's schema to head in a child process (``mistral-sidecar migrate``) while the block runs
    (the master builds the spec table meanwhile); at its end the schema is at head, or ``StartupError``.

    A child, because SQLAlchemy and Alembic import ssl, which the master must not do before gevent patches it;
    idempotent and locked (a file lock for SQLite, an advisory lock for PostgreSQL), so running it from every
    web start, beside or instead of a release step, is safe."""
    child = subprocess.Popen([sys.executable, "-m", "sidecar", "migrate", "--quiet"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        _out, stderr = child.communicate()
    if child.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        raise StartupError(f"cannot migrate the store: {lines[-1] if lines else f'exit {child.returncode}'}")


def _store(settings: Settings) -> str:
    url = settings.database_url
    if not url:
        return f"SQLite {Path(settings.db_path).expanduser().resolve()}"
    if url.startswith("sqlite:"):
        return f"SQLite {url.split(':///', 1)[-1]}"
    parts = urlsplit(url)
    where = parts.hostname or "local socket"
    if parts.port:
        where += f":{parts.port}"
    return f"PostgreSQL {where}{parts.path or ''}"  # user and password left out on purpose


def _limits(settings: Settings) -> str:
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        return f"Redis {parts.hostname or 'local socket'}{f':{parts.port}' if parts.port else ''} (shared by instances)"
    return "this machine (a SQLite file beside the store; set REDIS_URL to share between instances)"


def _mode(settings: Settings) -> str:
    if settings.upstream_mode == "replay":
        return f"replay: answers from {settings.contracts_dir}, no network, no Mistral key needed"
    if settings.upstream_mode == "record":
        return f"record: forwards to Mistral and writes new exchanges to {settings.contracts_dir}"
    return "real: forwards to Mistral"


def _auth(settings: Settings) -> str:
    if settings.master_key:
        return "keyed: the master key or a virtual key is required on every call"
    return "OPEN: no master key, ANY bearer token is accepted (allowed on loopback only; set SIDECAR_MASTER_KEY)"


def summary(settings: Settings, binds, workers: int, worker_class: str = "gevent", connections: str | None = None) -> str:
    """The block printed once at start-up; never a secret (no keys, no database password)."""
    config = settings.config
    upstream = settings.mistral_api_base
    if settings.upstream_mode != "replay":
        upstream += " (key set)" if settings.mistral_api_key else " (NO KEY)"
    rows = [
        ("mode", _mode(settings)),
        ("upstream", upstream if settings.upstream_mode != "replay" else f"{upstream} (not called in replay)"),
        ("auth", _auth(settings)),
        ("config", str(settings.config_path) if settings.config_path else "none (SIDECAR_CONFIG or --config)"),
        ("store", _store(settings)),
        ("limits", _limits(settings)),
        ("workers", f"{workers} {worker_class}"),
        *((("capacity", connections),) if connections else ()),
        ("listening", ", ".join(f"http://{address}" for address in binds)),
    ]
    lines = [f"{PREFIX} {shipped.version()}"] + [f"  {name:<10}{value}" for name, value in rows]
    for warning in getattr(config, "warnings", ()) or ():
        lines.append(f"  warning   {warning}")
    return "\n".join(lines)


def refuse(message: object) -> None:
    """Stop start-up with one line on stderr and exit status 2: no traceback around the reason."""
    print(f"{PREFIX}: cannot start: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
