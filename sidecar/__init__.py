"""mistral-sidecar: the whole Mistral API behind one local gateway.

``create_app`` (from ``sidecar.factory``) builds the WSGI app. Importing the package itself is cheap on
purpose: gunicorn's master reads ``sidecar.gunicorn_conf`` (which needs ``sidecar.accounting.metrics`` and
``sidecar.settings``) before forking, and must not import requests, urllib3 or ssl there, or the gevent
workers would patch ``ssl`` after it was imported.
"""

from __future__ import annotations

__all__ = ["create_app", "Settings", "shutdown_hooks"]


def __getattr__(name: str):
    if name in __all__:
        from . import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'sidecar' has no attribute {name!r}")
