"""Settings: the environment read once into one frozen object.

This is the only module that reads ``os.environ``; everything else receives a ``Settings``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from . import shipped

DEFAULT_SPEC = shipped.path("openapi.yaml")
DEFAULT_CONTRACTS = shipped.path("contracts")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only binds allowed without a master key."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(ValueError):
    """A setting has a value the sidecar cannot start with."""


def _env_float(env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _env_positive(env, name: str, default: float) -> float:
    value = _env_float(env, name, default)
    if value <= 0:
        raise SettingsError(f"{name} must be a positive number of seconds or connections, got {value:g}")
    return value


def _env_int(env, name: str, default: int) -> int:
    return int(_env_float(env, name, default))


def _env_bool(env, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _upstream_base(env) -> str:
    """MISTRAL_API_BASE, checked here so that a typo stops start-up instead of failing every call."""
    raw = (env.get("MISTRAL_API_BASE") or Settings.mistral_api_base).strip().rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"MISTRAL_API_BASE must be an http(s) URL with a host, such as "
                            f"https://api.mistral.ai, got {raw!r}")
    return raw


def _choice(env, name: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or allowed[0]).strip().lower()
    if raw not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _from_config(values: dict, env) -> dict:
    """Load config.yaml; its master key and database URL apply where the environment sets none."""
    from sidecar.core.config import load  # settings stays importable without yaml parsing at import time

    # Upstream keys are needed only where calls go upstream: replay answers from files.
    config = load(values["config_path"], env, upstream_keys=values["upstream_mode"] != "replay")
    return {"config": config, "master_key": values["master_key"] or config.master_key,
            "database_url": values["database_url"] or config.database_url}


def _otel(env) -> dict:
    """The OTLP/HTTP endpoints by the OpenTelemetry variables: a signal's own URL as given, else the base + /v1/<signal>."""
    base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip().rstrip("/")
    traces = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip() or (f"{base}/v1/traces" if base else None)
    metrics = (env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or "").strip() or (f"{base}/v1/metrics" if base else None)
    return {"otel_traces_endpoint": traces, "otel_metrics_endpoint": metrics,
            "otel_service_name": (env.get("OTEL_SERVICE_NAME") or "").strip() or "mistral-sidecar"}


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar needs to know, resolved once at start-up."""

    mistral_api_base: str = "https://api.mistral.ai"
    mistral_api_key: str | None = field(default=None, repr=False)
    mistral_admin_api_key: str | None = field(default=None, repr=False)
    master_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 4000
    spec_path: Path = DEFAULT_SPEC
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    upstream_mode: str = "real"  # real | replay | record
    contracts_dir: Path = DEFAULT_CONTRACTS
    contracts_fallback: str = "none"  # none | shipped: the shipped contracts answer what contracts_dir does not
    replay_speed: float = 1.0  # replayed streams keep their recorded pace divided by this; 0: all at once
    pool_size: int = 1000  # idle upstream connections kept per worker: a burst of streams reuses them
    database_url: str | None = field(default=None, repr=False)
    db_path: Path = Path("mistral-sidecar.sqlite3")  # the embedded store when DATABASE_URL is unset
    redis_url: str | None = field(default=None, repr=False)
    config_path: Path | None = None
    config: object = field(default=None, compare=False, repr=False)  # config.Config, loaded from config_path
    retries: int = 0  # off by default: clients retry already, and a retried POST may be billed twice
    retry_backoff: float = 0.5
    retry_max_wait: float = 20.0
    end_user_header: str = "x-end-user"
    log_bodies: bool = False
    metrics_dir: Path | None = None  # PROMETHEUS_MULTIPROC_DIR: each worker's metric files, merged on scrape
    metrics_auth: bool = False  # /metrics open like the health probes, unless the operator asks for the master key
    workers: int = 2
    graceful_timeout: float = 30.0
    max_requests: int = 0
    # Output tokens reserved against a key's budget and tpm_limit for a request without max_tokens.
    output_reserve: int = 1024
    # The edge (see sidecar/worker.py): how long a client may take to send its request, how long an idle
    # keep-alive connection is kept, and how many connections one worker holds at once.
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    worker_connections: int = 10_000
    # Deadlines on what upstream sends: a whole non-streamed answer, and the gap between stream events.
    total_timeout: float = 600.0
    stream_idle_timeout: float = 300.0
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback names and the bound address
    # OpenTelemetry (accounting/telemetry.py): on when a traces endpoint is known; the exporters get these URLs.
    otel_traces_endpoint: str | None = None
    otel_metrics_endpoint: str | None = None
    otel_service_name: str = "mistral-sidecar"

    @classmethod
    def from_env(cls, env=None, **overrides) -> Settings:
        """Build settings from an environment mapping (``os.environ`` by default)."""
        env = os.environ if env is None else env
        mode = (env.get("MISTRAL_UPSTREAM") or "real").strip().lower()
        if mode not in ("real", "replay", "record"):
            raise SettingsError(f"MISTRAL_UPSTREAM must be real, replay or record, got {mode!r}")
        values = dict(
            mistral_api_base=_upstream_base(env),
            mistral_api_key=env.get("MISTRAL_API_KEY") or None,
            mistral_admin_api_key=env.get("MISTRAL_ADMIN_API_KEY") or None,
            # LiteLLM's variable, so a LiteLLM deployment's environment keeps its key; ours wins when both are set.
            master_key=env.get("SIDECAR_MASTER_KEY") or env.get("LITELLM_MASTER_KEY") or None,
            host=env.get("SIDECAR_HOST") or cls.host,
            port=_env_int(env, "PORT", cls.port),
            spec_path=Path(env.get("SIDECAR_SPEC") or DEFAULT_SPEC),
            connect_timeout=_env_float(env, "SIDECAR_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=_env_float(env, "SIDECAR_READ_TIMEOUT", cls.read_timeout),
            max_body_bytes=_env_int(env, "SIDECAR_MAX_BODY_BYTES", cls.max_body_bytes),
            max_upload_bytes=_env_int(env, "SIDECAR_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            upstream_mode=mode,
            contracts_dir=Path(env.get("SIDECAR_CONTRACTS") or DEFAULT_CONTRACTS),
            contracts_fallback=_choice(env, "SIDECAR_CONTRACTS_FALLBACK", ("none", "shipped")),
            replay_speed=max(0.0, _env_float(env, "SIDECAR_REPLAY_SPEED", cls.replay_speed)),
            pool_size=_env_int(env, "SIDECAR_POOL_SIZE", cls.pool_size),
            database_url=env.get("DATABASE_URL") or None,
            db_path=Path(env.get("SIDECAR_DB_PATH") or cls.db_path),
            redis_url=env.get("REDIS_URL") or None,
            config_path=Path(env["SIDECAR_CONFIG"]) if env.get("SIDECAR_CONFIG") else None,
            end_user_header=(env.get("SIDECAR_END_USER_HEADER") or cls.end_user_header).lower(),
            log_bodies=_env_bool(env, "SIDECAR_LOG_BODIES", False),
            metrics_auth=_env_bool(env, "SIDECAR_METRICS_AUTH", False),
            metrics_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"]) if env.get("PROMETHEUS_MULTIPROC_DIR") else None,
            workers=_env_int(env, "WEB_CONCURRENCY", os.cpu_count() or cls.workers),
            graceful_timeout=_env_float(env, "SIDECAR_GRACEFUL_TIMEOUT", cls.graceful_timeout),
            max_requests=_env_int(env, "SIDECAR_MAX_REQUESTS", cls.max_requests),
            output_reserve=max(0, _env_int(env, "SIDECAR_OUTPUT_RESERVE", cls.output_reserve)),
        )
        values.update(
            header_timeout=_env_positive(env, "SIDECAR_HEADER_TIMEOUT", cls.header_timeout),
            keepalive_timeout=_env_positive(env, "SIDECAR_KEEPALIVE_TIMEOUT", cls.keepalive_timeout),
            worker_connections=int(_env_positive(env, "SIDECAR_WORKER_CONNECTIONS", cls.worker_connections)),
            total_timeout=_env_positive(env, "SIDECAR_TOTAL_TIMEOUT", cls.total_timeout),
            stream_idle_timeout=_env_positive(env, "SIDECAR_STREAM_IDLE_TIMEOUT", cls.stream_idle_timeout),
            allowed_hosts=tuple(h.strip().lower() for h in (env.get("SIDECAR_ALLOWED_HOSTS") or "").split(",")
                                if h.strip()),
        )
        values.update(_otel(env))
        values.update(
            retries=max(0, _env_int(env, "SIDECAR_RETRIES", cls.retries)),
            retry_backoff=max(0.0, _env_float(env, "SIDECAR_RETRY_BACKOFF", cls.retry_backoff)),
            retry_max_wait=max(0.0, _env_float(env, "SIDECAR_RETRY_MAX_WAIT", cls.retry_max_wait)),
        )
        if values["config_path"] is not None:
            values.update(_from_config(values, env))
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (tests build many apps from one base)."""
        return replace(self, **changes)

    def secrets(self) -> tuple[str, ...]:
        """Every secret this process holds, for scrubbing logs, errors and contracts."""
        found = [self.mistral_api_key, self.mistral_admin_api_key, self.master_key]
        found += list(self.config.secrets() if self.config is not None else ())
        return tuple(s for s in found if s)
