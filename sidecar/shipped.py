"""Where the files shipped beside the code live: ``openapi.yaml`` (and its parse), ``spec/``, ``contracts/``.

In a checkout (and an editable install) they are the top-level files; the wheel carries copies made by the
build (``setup.py``) under ``sidecar/_shipped/``. This is the one place that knows both layouts.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "_shipped"
CHECKOUT = Path(__file__).resolve().parent.parent


def path(name: str) -> Path:
    """The shipped file or folder ``name``: the wheel's copy when installed, else the checkout's own."""
    packaged = PACKAGED / name
    return packaged if packaged.exists() else CHECKOUT / name


def version() -> str:
    """The installed distribution's version (pyproject.toml's), or 'unknown' when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mistral-sidecar")
    except PackageNotFoundError:
        return "unknown"
