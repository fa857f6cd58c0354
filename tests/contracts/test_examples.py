"""The example application users copy must keep working: run it as its own pytest session, as an app would."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from ..conftest import ROOT


def test_the_example_application_runs_its_tests_against_replay():
    installed = any(ep.name == "mistral_sidecar" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "sidecar.pytest_plugin"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin],
                            cwd=ROOT / "examples" / "app", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "6 passed" in result.stdout
