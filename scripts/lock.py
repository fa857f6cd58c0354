"""Write the hashed lock files `make run` and `make test` install from: `make lock` runs this.

requirements/test.lock pins every extra (what `make test` installs); requirements/run.lock pins the
dependencies and the postgres and redis extras (what `make run` installs) at the same versions. Both come
from uv's universal resolver, so one file holds the right pins for every platform and Python >= 3.10, each
with its sha256 hashes. Each file starts with a stamp of pyproject.toml's dependency tables: the suite
fails when pyproject.toml changes and the lock does not (tests/test_lock.py).
Needs only the standard library and uv (`make lock` installs uv into a throwaway venv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
RUN_EXTRAS = ("postgres", "redis")
STAMP = "# pyproject-dependencies-sha256: "
PYTHON_FLOOR = "3.10"


def dependency_stamp(pyproject: Path = REPO / "pyproject.toml") -> str:
    """A hash of what the locks are made from: the dependencies and every extra, as pyproject.toml lists them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    tables = {"dependencies": project.get("dependencies", []),
              "optional-dependencies": project.get("optional-dependencies", {})}
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def compile_lock(uv: str, out: Path, extras: list[str], constraint: Path | None = None) -> None:
    command = [uv, "pip", "compile", "pyproject.toml", "--generate-hashes", "--universal",
               "--python-version", PYTHON_FLOOR, "--quiet", "--custom-compile-command", "make lock",
               "-o", str(out.relative_to(REPO))]
    command += ["--all-extras"] if extras == ["*"] else [f"--extra={e}" for e in extras]
    if constraint is not None:
        command += ["--constraint", str(constraint.relative_to(REPO))]
    subprocess.run(command, cwd=REPO, check=True)
    out.write_text(f"{STAMP}{dependency_stamp()}\n" + out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default=shutil.which("uv") or str(Path(sys.executable).with_name("uv")))
    args = parser.parse_args()
    LOCKS.mkdir(exist_ok=True)
    test_lock, run_lock = LOCKS / "test.lock", LOCKS / "run.lock"
    compile_lock(args.uv, test_lock, ["*"])
    compile_lock(args.uv, run_lock, list(RUN_EXTRAS), constraint=test_lock)  # the same versions, fewer of them
    print(f"wrote {test_lock.relative_to(REPO)} and {run_lock.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
