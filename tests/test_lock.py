"""The hashed lock files agree with pyproject.toml: a dependency or an extra changed without `make lock` fails here."""

from __future__ import annotations

import importlib.util
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
lock_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_script)

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
FIX = "pyproject.toml and {lock} disagree: run `make lock` and commit requirements/ (see README, Dependencies)"


def pins(path) -> dict[str, set[str]]:
    """name -> pinned versions (a universal lock may pin one name twice, under different markers)."""
    found: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found.setdefault(canonicalize_name(match.group(1)), set()).add(match.group(2))
    return found


def requirements(extras) -> list[Requirement]:
    project = lock_script.tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chosen = project["optional-dependencies"] if extras == "*" else {e: project["optional-dependencies"][e]
                                                                     for e in extras}
    return [Requirement(r) for r in project["dependencies"] + [r for rs in chosen.values() for r in rs]]


LOCKS = {"test.lock": "*", "run.lock": lock_script.RUN_EXTRAS}


@pytest.mark.parametrize("name", LOCKS)
def test_the_lock_was_made_from_this_pyproject(name):
    lock = ROOT / "requirements" / name
    first = lock.read_text().splitlines()[0]
    assert first == f"{lock_script.STAMP}{lock_script.dependency_stamp()}", FIX.format(lock=f"requirements/{name}")


@pytest.mark.parametrize("name", LOCKS)
def test_every_requirement_is_pinned_within_its_range_with_hashes(name):
    lock = ROOT / "requirements" / name
    pinned = pins(lock)
    for requirement in requirements(LOCKS[name]):
        versions = pinned.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} is not in requirements/{name}: " + FIX.format(lock=name)
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements/{name} pins {requirement.name}=={version}, outside {requirement}: " + FIX.format(lock=name))
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 3)[-1])
    unhashed = [b.split()[0] for b in blocks if PIN.match(b) and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without hashes in requirements/{name}: {unhashed}"


def test_make_run_installs_the_same_versions_make_test_does():
    test, run = pins(ROOT / "requirements" / "test.lock"), pins(ROOT / "requirements" / "run.lock")
    assert set(run) <= set(test)
    assert {name: versions for name, versions in run.items() if not versions <= test[name]} == {}


def test_the_stamp_changes_when_an_extra_gains_a_dependency(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(text)
    before = lock_script.dependency_stamp(pyproject)
    pyproject.write_text(text.replace('redis = ["redis>=5"]', 'redis = ["redis>=5", "botocore>=1.34"]', 1))
    assert lock_script.dependency_stamp(pyproject) != before
    pyproject.write_text(text.replace("# tests/test_install.py runs the Procfile", "# a comment changed"))
    assert lock_script.dependency_stamp(pyproject) == before  # only what pip reads counts
