"""Build hook: the wheel carries openapi.yaml (and its kept parse), spec/ and contracts/ from the top of the checkout.

They stay where people edit them (one source); the build copies them into ``sidecar/_shipped/`` of the
wheel, where ``sidecar.shipped`` finds them once installed. An editable install reads them in place.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("openapi.yaml", "openapi.parsed.json", "spec", "contracts")  # keep in step with MANIFEST.in and sidecar/shipped.py


class BuildWithShipped(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # the checkout itself is on the path: no copy to go stale
            return
        target = Path(self.build_lib) / "sidecar" / "_shipped"
        for name in SHIPPED:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithShipped})
