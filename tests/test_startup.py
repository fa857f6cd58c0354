"""Start-up as a person meets it: bad settings stop with one line and no traceback; the summary says what runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sidecar import startup
from sidecar.settings import Settings, SettingsError

from .conftest import ROOT
from .servers import free_port, wait_until_up

MASTER = "sk-startup-master-0123456789"
UPSTREAM_KEY = "sk-startup-upstream-0123456789"


def serve(tmp_path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """``python -m sidecar serve`` from a directory that is not the checkout, with only the given settings."""
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PORT": "9", "WEB_CONCURRENCY": "1",
            "SIDECAR_DB_PATH": str(tmp_path / "s.sqlite3")}
    return subprocess.run([sys.executable, "-m", "sidecar", "serve", *args], cwd=tmp_path, env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, env, reason", [
    ((), {"MISTRAL_API_BASE": "not-a-url", "MISTRAL_API_KEY": UPSTREAM_KEY}, "MISTRAL_API_BASE must be an http(s) URL"),
    ((), {"MISTRAL_API_BASE": "ftp://x", "MISTRAL_API_KEY": UPSTREAM_KEY}, "MISTRAL_API_BASE must be an http(s) URL"),
    ((), {"MISTRAL_API_BASE": "https://", "MISTRAL_API_KEY": UPSTREAM_KEY}, "MISTRAL_API_BASE must be an http(s) URL"),
    ((), {}, "MISTRAL_API_KEY is not set"),
    (("--record", "recorded"), {}, "MISTRAL_API_KEY is not set"),
    (("--replay", "no-such-dir"), {}, "no-such-dir is not one"),
    (("--replay", "--host", "0.0.0.0"), {}, "refusing to listen on 0.0.0.0:9 without a master key"),
    (("--config", "missing.yaml", "--replay"), {}, "missing.yaml: cannot be read"),
    (("--replay",), {"SIDECAR_RETRIES": "many"}, "SIDECAR_RETRIES must be a number"),
])
def test_a_setting_that_cannot_work_stops_start_up_with_one_line(tmp_path, args, env, reason):
    done = serve(tmp_path, *args, **env)
    assert done.returncode == 2, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("mistral-sidecar:")]
    assert len(ours) == 1 and reason in ours[0], done.stderr
    assert "Traceback" not in done.stderr and UPSTREAM_KEY not in done.stderr


def test_a_config_needs_upstream_keys_only_where_calls_go_upstream(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model_list:\n  - model_name: code\n    litellm_params:\n      model: codestral/codestral-latest\n"
                      "      api_key: os.environ/CODESTRAL_API_KEY\n")
    assert Settings.from_env({"SIDECAR_CONFIG": str(config), "MISTRAL_UPSTREAM": "replay"}).config.models
    with pytest.raises(ValueError, match="CODESTRAL_API_KEY is not set"):
        Settings.from_env({"SIDECAR_CONFIG": str(config), "MISTRAL_API_KEY": UPSTREAM_KEY})


def test_litellm_master_key_is_the_master_key_unless_the_sidecar_s_own_is_set():
    assert Settings.from_env({"LITELLM_MASTER_KEY": "sk-1234"}).master_key == "sk-1234"
    both = {"LITELLM_MASTER_KEY": "sk-1234", "SIDECAR_MASTER_KEY": MASTER}
    assert Settings.from_env(both).master_key == MASTER
    assert Settings.from_env({}).master_key is None


def test_a_litellm_master_key_closes_the_sidecar(make_app):
    client = make_app(master_key=Settings.from_env({"LITELLM_MASTER_KEY": "sk-1234"}).master_key).test_client()
    body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Hi"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 401
    assert client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-other"}).status_code == 401


@pytest.mark.parametrize("base", ["not-a-url", "ftp://x", "http://", "api.mistral.ai"])
def test_an_upstream_base_without_scheme_or_host_is_refused(base):
    with pytest.raises(SettingsError, match="MISTRAL_API_BASE"):
        Settings.from_env({"MISTRAL_API_BASE": base})


def test_binding_beyond_loopback_needs_a_master_key():
    open_ = Settings(master_key=None, mistral_api_key=UPSTREAM_KEY)
    startup.check(open_, ["127.0.0.1:4000", "[::1]:4000", "localhost:4000", "unix:/tmp/s.sock"])
    for public in ("0.0.0.0:4000", "[::]:4000", "10.0.0.7:4000"):
        with pytest.raises(startup.StartupError, match="without a master key"):
            startup.check(open_, ["127.0.0.1:4000", public])
    startup.check(open_.with_(master_key=MASTER), ["0.0.0.0:4000"])


def test_the_summary_names_mode_upstream_auth_config_store_limits_workers_and_port(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model_list:\n  - model_name: code\n    litellm_params: {model: codestral/codestral-latest}\n"
                      "router_settings: {routing_strategy: simple-shuffle, redis_host: cache}\n")
    settings = Settings.from_env({"SIDECAR_CONFIG": str(config), "MISTRAL_API_KEY": UPSTREAM_KEY,
                                  "DATABASE_URL": "postgresql://app:pg-secret-pw@db.internal:5433/spend",
                                  "REDIS_URL": "redis://:redis-secret-pw@cache.internal:6379/0"})
    text = startup.summary(settings, ["0.0.0.0:8000"], 3)
    for expected in ("mode      real", "https://api.mistral.ai (key set)", "OPEN", str(config),
                     "PostgreSQL db.internal:5433/spend", "Redis cache.internal:6379", "3 gevent", "0.0.0.0:8000",
                     "CODESTRAL_API_KEY is not set", "router_settings.redis_host: not used"):
        assert expected in text, text
    for secret in ("pg-secret-pw", "redis-secret-pw", UPSTREAM_KEY, "app:"):
        assert secret not in text
    keyed = startup.summary(Settings(master_key=MASTER, upstream_mode="replay"), ["127.0.0.1:4000"], 1)
    assert "OPEN" not in keyed and "keyed" in keyed and "replay" in keyed and MASTER not in keyed


@pytest.mark.slow
def test_serving_prints_the_summary_once_and_each_config_warning_once_without_alembic_chatter(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model_list:\n  - model_name: small\n    litellm_params: {model: mistral/mistral-small-latest}\n"
                      "litellm_settings: {drop_params: true}\n")
    port = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--replay", "--config", str(config), "--workers", "2"],
        cwd=tmp_path, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PORT": port,
                           "SIDECAR_DB_PATH": str(tmp_path / "s.sqlite3")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", process, timeout=90)
    finally:
        process.terminate()
        err = process.communicate(timeout=30)[1]
    assert len(re.findall(r"^mistral-sidecar \S+$", err, re.M)) == 1, err
    assert err.count("  mode      replay") == 1 and err.count("OPEN: no master key") == 1, err
    assert err.count("litellm_settings.drop_params: not used") == 1, err
    assert err.count(f"listening http://127.0.0.1:{port}") == 1
    for chatter in ("Context impl", "Will assume", "Running upgrade", "Traceback"):
        assert chatter not in err, err


def test_the_store_migrates_while_the_master_goes_on_and_a_failure_is_one_line(tmp_path):
    env = {**os.environ, "SIDECAR_DB_PATH": str(tmp_path / "fresh.sqlite3"), "DATABASE_URL": ""}
    ran = []
    with startup.migrating(env):
        ran.append(True)  # the master's own start-up work, done before the child is waited for
    assert ran and (tmp_path / "fresh.sqlite3").is_file()
    unreachable = {**env, "DATABASE_URL": "postgresql://nobody:secret-pw@127.0.0.1:9/x"}
    with pytest.raises(startup.StartupError) as failed, startup.migrating(unreachable):
        pass
    assert str(failed.value).startswith("cannot migrate the store: error: database") and "secret-pw" not in str(failed.value)
