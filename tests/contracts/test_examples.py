"""The examples users copy must keep working: run each one as its own pytest session."""

from __future__ import annotations

import subprocess
import sys

from ..conftest import ROOT


def test_replay_example_runs_with_the_official_sdk():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_with_replay.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 passed" in result.stdout
