"""The pytest plugin, run as an application's test session would run it (``pytester``, one subprocess each)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

from sidecar.contracts import fileformat

from ..fakes import CAPITAL_CONTRACT

pytest_plugins = ["pytester"]

APP_TESTS = """
import requests

def ask(sidecar, content, **extra):
    return requests.post(sidecar.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {sidecar.api_key}"},
                         json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": content}], **extra})

def test_matched(mistral_sidecar):
    answer = ask(mistral_sidecar, "What is the capital of France?")
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Paris."
    assert mistral_sidecar.base_url == mistral_sidecar.url + "/v1"

def test_unmatched(mistral_sidecar):
    answer = ask(mistral_sidecar, "what is the capital of france?")
    assert answer.status_code == 501 and answer.json()["code"] == "no_matching_contract"
    print("MESSAGE:", answer.json()["message"])

def test_fallback(mistral_sidecar):
    answer = ask(mistral_sidecar, "Tell me about Rome")
    print("FALLBACK:", answer.status_code, answer.headers.get("x-sidecar-contract"))
"""


def _plugin_args() -> list[str]:
    """Load the plugin by its entry point when installed, else by module (a checkout on PYTHONPATH)."""
    installed = any(ep.name == "mistral_sidecar" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "sidecar.pytest_plugin"]


def _run(pytester, *args):
    return pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", "-s", *args, timeout=300)


@pytest.fixture
def app_tests(pytester):
    """An application's test folder: its own contract in tests/contracts, no conftest."""
    (pytester.path / "tests" / "contracts").mkdir(parents=True)
    (pytester.path / "tests" / "contracts" / "capital.yaml").write_text(CAPITAL_CONTRACT)
    (pytester.path / "tests" / "test_app.py").write_text(APP_TESTS)
    return pytester


def test_strict_by_default_with_the_closest_exchange_and_the_field_that_differs(app_tests):
    result = _run(app_tests)
    result.assert_outcomes(passed=3)
    contracts = app_tests.path / "tests" / "contracts"
    out = result.stdout.str()  # (fnmatch would read "[0]" as a character class)
    assert (f"MESSAGE: No contract in {contracts} answers POST /v1/chat/completions "
            "(chat_completion_v1_chat_completions_post). Closest: capital.yaml, exchange 'capital of France': "
            "json.messages[0].content: expected 'What is the capital of France?', got 'what is the capital of france?'.\n"
            ) in out
    assert "FALLBACK: 501 None" in out


def test_the_shipped_answers_back_yours_only_when_asked_and_say_so(app_tests):
    result = _run(app_tests, "--mistral-fallback=shipped")
    result.assert_outcomes(passed=2, failed=1)  # test_unmatched: the shipped answer now answers it
    result.stdout.fnmatch_lines(["*FALLBACK: 200 fallback (shipped) chat_completion_v1_chat_completions_post: plain answer"])


def test_a_misspelt_key_fails_the_session_naming_file_exchange_and_key(app_tests):
    bad = CAPITAL_CONTRACT.replace("  match:", "  macth:")
    (app_tests.path / "tests" / "contracts" / "capital.yaml").write_text(bad)
    result = _run(app_tests)
    result.assert_outcomes(errors=3)
    out = result.stdout.str()
    assert "mistral-sidecar could not start: invalid contracts:" in out
    assert "capital.yaml, exchange 'capital of France': unknown key 'macth' (did you mean 'match'?)" in out


def test_record_once_then_replay_offline_with_no_secret_written(app_tests, fake, monkeypatch):
    """``once`` records into an empty directory (secrets streamed 3 characters an event), then replays."""
    secret = "sk-test-real-mistral-key-0123456789"
    text = f"the key is {secret}, bye"
    chunks = [text[i:i + 3] for i in range(0, len(text), 3)]
    events = [b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                       "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]}).encode()
              + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    fake.stream("POST", "/v1/chat/completions", events)
    fake.on("GET", "/v1/models", json_body={"object": "list", "data": []})
    monkeypatch.setenv("MISTRAL_API_BASE", fake.url)
    monkeypatch.setenv("MISTRAL_API_KEY", secret)
    directory = app_tests.path / "recorded"
    (app_tests.path / "tests" / "test_app.py").write_text("""
import requests

def test_stream(mistral_sidecar):
    answer = requests.post(mistral_sidecar.url + "/v1/chat/completions",
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert answer.status_code == 200
    print("STREAMED:", len(answer.content))
""")
    _run(app_tests, f"--mistral-contracts={directory}", "--mistral-record=once").assert_outcomes(passed=1)
    written = (directory / "chat_completion_v1_chat_completions_post.yaml").read_text()
    recorded = fileformat.load_file(directory / "chat_completion_v1_chat_completions_post.yaml")[0]
    joined = "".join(e["data"]["choices"][0]["delta"]["content"] for e in recorded.response["events"][:-1])
    assert secret not in written and joined == "the key is <scrubbed>, bye"
    seen = len(fake.seen)
    monkeypatch.setenv("MISTRAL_API_KEY", "")
    _run(app_tests, f"--mistral-contracts={directory}", "--mistral-record=once").assert_outcomes(passed=1)
    assert len(fake.seen) == seen  # replayed: the second session never reached the network
