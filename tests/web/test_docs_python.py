"""The Python blocks of README.md and docs/clients.md, run as a user would (a fresh interpreter, today's
mistralai / openai / langchain) against the sidecar in replay mode, so the examples cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest
from werkzeug.serving import make_server

from ..conftest import ROOT

DOCS = (ROOT / "README.md", ROOT / "docs" / "clients.md")
DOC_HOSTS = ("http://0.0.0.0:4000", "http://127.0.0.1:4000", "http://localhost:4000")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks() -> list[tuple[str, str]]:
    return [(f"{doc.name}#{i}", block) for doc in DOCS for i, block in enumerate(BLOCK.findall(doc.read_text()))]


@pytest.fixture
def replay_sidecar(make_app):
    server = make_server("127.0.0.1", 0, make_app(upstream_mode="replay", mistral_api_key=None), threaded=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_the_readme_shows_the_sdk_for_every_mistralai_major_version():
    readme = (ROOT / "README.md").read_text()
    assert "from mistralai.client import Mistral" in readme and "from mistralai import Mistral" in readme
    assert python_blocks(), "no python block found"


@pytest.mark.parametrize("name, code", python_blocks(), ids=[name for name, _ in python_blocks()])
def test_each_python_block_runs_as_written(replay_sidecar, name, code):
    for host in DOC_HOSTS:
        code = code.replace(host, replay_sidecar)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, f"{name} failed:\n{code}\n{done.stderr[-3000:]}"
