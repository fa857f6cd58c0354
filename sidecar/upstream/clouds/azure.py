"""Azure AI Foundry: Mistral's own format on the deployment's endpoint, its key as a bearer token.

Chat goes to ``{api_base}/v1/chat/completions`` (Mistral's Azure SDK appends ``/v1`` to the
endpoint), OCR with Mistral Document AI to ``{origin}/providers/mistral/azure/ocr``. Azure's OCR
takes documents only as base64 data URIs; fetching a URL and encoding it is left to the client.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

from sidecar.core.config import ModelEntry
from sidecar.core.router import Target

from . import CHAT, OCR, Outbound

OCR_PATH = "/providers/mistral/azure/ocr"


class AzureTransport:
    provider = "azure_ai"

    def __init__(self, entry: ModelEntry):
        base = entry.cloud["api_base"].rstrip("/")
        self.chat_target = Target(base[:-3] if base.endswith("/v1") else base, entry.cloud["api_key"])
        parts = urlsplit(base)
        self.ocr_target = Target(f"{parts.scheme}://{parts.netloc}", entry.cloud["api_key"])
        self.api_version = entry.cloud.get("api_version")

    def supports(self, op) -> bool:
        return op.path in (CHAT, OCR)

    def send(self, upstream, call: Outbound) -> requests.Response:
        target, path = (self.ocr_target, OCR_PATH) if call.op.path == OCR else (self.chat_target, call.path)
        query = call.query
        if self.api_version:
            query = "&".join(q for q in (query, f"api-version={self.api_version}") if q)
        headers = {**call.headers, **target.credentials("bearer")}
        return upstream.send(target, call.op.method, path, query, headers, call.payload)
