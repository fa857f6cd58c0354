"""Vertex AI: Mistral's format at ``rawPredict``/``streamRawPredict``, with OAuth tokens minted from a service account.

The model name splits into name and version as Mistral's GCP SDK splits it (``mistral-large-2411``
-> ``mistral-large@2411``, the body naming ``mistral-large``); a name with ``@`` is taken as given.
Tokens come from ``google-auth`` (extra ``[vertex]``) and are refreshed ``REFRESH_MARGIN`` before
they expire, one refresh at a time, so no request leaves with a token about to lapse.
"""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path

import requests

from sidecar.clock import SYSTEM, Clock
from sidecar.core.config import ModelEntry
from sidecar.core.errors import UpstreamUnavailable
from sidecar.core.router import Target

from . import CHAT, FIM, Outbound, require

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN = datetime.timedelta(minutes=5)
DEFAULT_LOCATION = "us-central1"


def split_model(model: str) -> tuple[str, str]:
    """``mistral-large-2411`` -> (``mistral-large``, ``2411``); ``codestral@2405`` -> (``codestral``, ``2405``)."""
    if "@" in model:
        name, _, version = model.partition("@")
    else:
        name, _, version = model.rpartition("-")
    if not name or not version:
        raise ValueError(f"vertex_ai model {model!r} names no version (write it as name-version or name@version)")
    return name, version


class TokenSource:
    """A service account's access tokens, refreshed before expiry as the app's ``clock`` reads it."""

    def __init__(self, info: dict, *, clock: Clock = SYSTEM, session: requests.Session | None = None):
        service_account = require("google.oauth2.service_account", "vertex")
        transport = require("google.auth.transport.requests", "vertex")
        self.credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._request = transport.Request(session or requests.Session())
        self.clock = clock
        self._lock = threading.Lock()

    def _fresh(self) -> bool:
        creds = self.credentials
        return bool(creds.token) and creds.expiry is not None and creds.expiry - self._now() > REFRESH_MARGIN

    def _now(self) -> datetime.datetime:
        """The clock's wall time as google-auth writes ``expiry``: a naive UTC datetime."""
        return datetime.datetime.fromtimestamp(self.clock.wall(), datetime.timezone.utc).replace(tzinfo=None)

    def token(self) -> str:
        if not self._fresh():
            with self._lock:
                if not self._fresh():
                    exceptions = require("google.auth.exceptions", "vertex")
                    try:
                        self.credentials.refresh(self._request)
                    except exceptions.GoogleAuthError as exc:
                        raise UpstreamUnavailable(f"Vertex AI token could not be minted: {type(exc).__name__}") from None
        return self.credentials.token


def _service_account(value: str) -> dict:
    """``vertex_credentials``: the service account's JSON itself, or the path of its file."""
    text = value if value.lstrip().startswith("{") else Path(value).expanduser().read_text(encoding="utf-8")
    info = json.loads(text)
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError("vertex_credentials must be a service account key (type: service_account)")
    return info


class VertexTransport:
    provider = "vertex_ai"

    def __init__(self, entry: ModelEntry, clock: Clock = SYSTEM):
        self.project = entry.cloud["vertex_project"]
        self.location = entry.cloud.get("vertex_location") or DEFAULT_LOCATION
        self.name, self.version = split_model(entry.model)
        try:
            info = _service_account(entry.cloud["vertex_credentials"])
        except (OSError, ValueError) as exc:
            raise ValueError(f"{entry.name}: vertex_credentials cannot be used: {type(exc).__name__}") from None
        self.tokens = TokenSource(info, clock=clock)
        self.target = Target(entry.api_base or f"https://{self.location}-aiplatform.googleapis.com")

    def supports(self, op) -> bool:
        return op.path in (CHAT, FIM)

    def send(self, upstream, call: Outbound) -> requests.Response:
        action = "streamRawPredict" if call.stream else "rawPredict"
        path = (f"/v1/projects/{self.project}/locations/{self.location}/publishers/mistralai/models/"
                f"{self.name}@{self.version}:{action}")
        body = dict(call.json) if isinstance(call.json, dict) else {}
        body["model"] = self.name
        headers = {**call.headers, "Content-Type": "application/json",
                   "Authorization": f"Bearer {self.tokens.token()}"}
        return upstream.send(self.target, "POST", path, "", headers, json.dumps(body).encode())
