"""The curl commands of README.md and docs/clients.md, run as written against a live sidecar, so the docs cannot rot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from werkzeug.wrappers import Response

from ..conftest import ROOT
from ..fakes import chat_body, chat_events

DOCS = (ROOT / "README.md", ROOT / "docs" / "clients.md")
DOC_HOSTS = ("http://0.0.0.0:4000", "http://127.0.0.1:4000")
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
OCR = {"pages": [{"index": 0, "markdown": "# receipt", "images": [], "dimensions": {"dpi": 200, "height": 2, "width": 1}}],
       "model": "mistral-ocr-latest", "usage_info": {"pages_processed": 1, "doc_size_bytes": 10}}


def curl_commands() -> list[str]:
    """Each curl call of each bash block (a block may hold several, and other commands beside them)."""
    calls = []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text()):
            calls += [c.strip() for c in re.split(r"\n(?=curl )", block) if c.lstrip().startswith("curl")]
    return calls


def _local(command: str, url: str) -> str:
    for host in DOC_HOSTS:
        command = command.replace(host, url)
    return command


def test_the_page_has_the_seed_style_examples():
    commands = curl_commands()
    assert any("/mistral/v1/ocr" in c for c in commands)
    assert any('"stream": true' in c for c in commands)
    assert any("/mistral/v1/chat/completions" in c for c in commands)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("command", curl_commands(), ids=lambda c: _local(c.split("'")[1], ""))
def test_each_curl_command_runs_as_written(live_sidecar, fake, command):
    def chat(request):
        if json.loads(request.get_data()).get("stream"):
            return Response(b"".join(chat_events(3)), 200, {"Content-Type": "text/event-stream"})
        return Response(json.dumps(chat_body()), 200, {"Content-Type": "application/json"})
    fake.on("POST", "/v1/chat/completions", chat)
    fake.on("POST", "/v1/ocr", json_body=OCR)
    result = subprocess.run(["bash", "-c", _local(command, live_sidecar)], capture_output=True,
                            timeout=30, text=True)
    assert result.returncode == 0, result.stderr
    if '"stream": true' in command:
        assert result.stdout.rstrip().endswith("data: [DONE]")
    elif "/key/generate" in command:  # the sidecar's own route: answered here, never sent to Mistral
        assert json.loads(result.stdout)["key"].startswith("sk-")
        assert fake.seen == []
        return
    else:
        answer = json.loads(result.stdout)
        assert "pages" in answer or answer["choices"][0]["message"]["content"] == "Hello!"
    assert fake.seen, "the command reached the upstream"
