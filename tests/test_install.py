"""Installed like real software: the wheel carries what it serves, the command runs from any directory, and
the Procfile keeps serving under honcho (which stops every process when one exits)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from sidecar import cli, shipped

from .conftest import ROOT
from .servers import free_port, wait_until_up

MASTER = "sk-install-master-0123456789"
SHIPPED = ("openapi.yaml", "openapi.parsed.json", "spec", "contracts")


def _files(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout, offline (the test venv holds setuptools)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*cache",
                                    "*.sqlite3*", "bench", "tests")
    shutil.copytree(ROOT, source / "checkout", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(out), str(source / "checkout")], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("mistral_sidecar-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_carries_the_spec_the_contracts_the_migrations_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:  # the top-level files, copied by the build: every one of them, nothing else
        top = ROOT / name
        expected = {name} if top.is_file() else {f"{name}/{f}" for f in _files(top)}
        inside = {n[len("sidecar/_shipped/"):] for n in names if n.startswith(f"sidecar/_shipped/{name}")}
        assert inside == expected, name
    assert "sidecar/core/prices.yaml" in names and "sidecar/__main__.py" in names
    assert {"sidecar/web/ui/index.html", "sidecar/web/ui/app.js", "sidecar/web/ui/app.css"} <= names  # the dashboard
    assert any(n.startswith("sidecar/store/migrations/versions/") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    with zipfile.ZipFile(wheel) as archive:
        shipped_spec = archive.read("sidecar/_shipped/openapi.yaml")
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert shipped_spec == (ROOT / "openapi.yaml").read_bytes()
    assert "License-Expression: Apache-2.0" in metadata and "Apache License" in (ROOT / "LICENSE").read_text()


@pytest.mark.slow
def test_the_installed_wheel_serves_replay_and_migrates_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Only the installed copy of sidecar is importable (dependencies come from this venv's site-packages).
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "SIDECAR_DB_PATH": str(elsewhere / "s.sqlite3")}
    run = [sys.executable, "-m", "sidecar"]
    where = subprocess.run([sys.executable, "-c", "import sidecar; print(sidecar.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where
    version = subprocess.run([*run, "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert version.stdout.strip() == "mistral-sidecar 0.1.0", version
    migrated = subprocess.run([*run, "migrate"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0 and "is at revision" in migrated.stdout, migrated.stderr
    log = tmp_path / "serve.log"
    with running([*run, "serve", "--replay", "--workers", "1"], elsewhere, env, log) as url:
        reply = requests.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "mistral-small-latest", "messages": [{"role": "user", "content": "Hello"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        assert reply.headers["x-sidecar-contract"]
    assert f"answers from {site / 'sidecar' / '_shipped' / 'contracts'}" in log.read_text()


@contextlib.contextmanager
def running(command: list[str], cwd: Path, env: dict, log: Path):
    """Run a server command on a free port (PORT; honcho's -p) in its own session; stop it and its children."""
    port = free_port()
    command = [c.replace("{port}", str(port)) for c in command]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env={**env, "PORT": str(port)}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(f"http://127.0.0.1:{port}", process, log, timeout=120)
            yield f"http://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # the server and what it started, nothing else
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def test_the_checkout_finds_its_own_top_level_files():
    assert shipped.path("openapi.yaml") in (ROOT / "openapi.yaml", shipped.PACKAGED / "openapi.yaml")
    assert shipped.path("contracts").is_dir() and (shipped.path("openapi.yaml")).is_file()


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mistral-sidecar {shipped.version()}"
    helped = subprocess.run([sys.executable, "-m", "sidecar", "--help"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert helped.returncode == 0 and "serve" in helped.stdout and "migrate" in helped.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("honcho", path=str(Path(sys.executable).parent)) is None and
                    shutil.which("honcho") is None, reason="honcho is not installed (the test extra has it)")
def test_honcho_start_keeps_web_serving(tmp_path):
    """honcho stops everything when any process exits: the Procfile must hold nothing that ends."""
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or shutil.which("honcho")
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "SIDECAR_MASTER_KEY": MASTER, "MISTRAL_UPSTREAM": "replay", "WEB_CONCURRENCY": "1",
           "SIDECAR_DB_PATH": str(tmp_path / "s.sqlite3")}
    log = tmp_path / "honcho.log"
    command = [honcho, "-f", str(ROOT / "Procfile"), "-d", str(tmp_path), "start", "-p", "{port}"]
    with running(command, tmp_path, env, log) as url:
        time.sleep(10)
        assert "exited with code" not in log.read_text(), log.read_text()
        assert requests.get(f"{url}/health/liveliness", timeout=30).status_code == 200
        body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "Hello"}]}
        assert requests.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 401
        answered = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {MASTER}"})
        assert answered.status_code == 200
    output = log.read_text()
    assert "mode      replay" in output and "keyed" in output and MASTER not in output
