"""Building apps in tests: every app is built here, so the log scan (conftest) knows each secret it holds."""

from __future__ import annotations

from sidecar import create_app
from sidecar.settings import Settings

SECRETS: set[str] = set()  # every secret of every app the run built; no log line may carry one


def build_app(settings: Settings, **kwargs):
    """``create_app`` that first remembers the app's secrets (master, Mistral, config keys)."""
    SECRETS.update(s for s in settings.secrets() if len(s) >= 12)  # short test words ("fixed") are no keys
    return create_app(settings, **kwargs)
