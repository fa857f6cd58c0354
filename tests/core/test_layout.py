"""The package layout is the flow: a pure core that neither serves HTTP nor talks to it.

``sidecar.core`` and the contract format are unit-testable without an app; this proves they import
neither the web stack (Flask, Werkzeug), the HTTP client (requests, urllib3) nor the store (SQLAlchemy).
"""

import json
import pkgutil
import subprocess
import sys

import sidecar.contracts
import sidecar.core

IMPURE = ("flask", "werkzeug", "requests", "urllib3", "sqlalchemy", "gevent", "gunicorn")
PURE_PACKAGES = (sidecar.core, sidecar.contracts)


def pure_modules() -> list[str]:
    return [m.name for pkg in PURE_PACKAGES for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]


def test_the_pure_core_imports_no_web_client_or_store_library():
    modules = pure_modules()
    assert "sidecar.core.spec" in modules and "sidecar.core.pricing" in modules
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({IMPURE!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [], f"the pure core pulled in {out.strip()}"


def test_no_module_is_over_400_lines():
    import pathlib

    root = pathlib.Path(sidecar.core.__file__).parent.parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400 and "migrations" not in p.parts}
    assert long == {}
