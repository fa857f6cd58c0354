"""AWS Bedrock: Mistral chat translated to Converse / ConverseStream, signed with SigV4 by botocore.

Credentials come from the deployment's ``aws_*`` parameters, else the environment's AWS variables
(read by config). ConverseStream answers in AWS event-stream frames, parsed by botocore's own
parser and turned into Mistral's SSE chunks as they arrive. Bedrock errors keep their status and
take Mistral's error shape. Needs the ``[bedrock]`` extra (botocore).
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import quote

import requests

from sidecar.clock import SYSTEM, Clock
from sidecar.core import converse, sse
from sidecar.core.config import ModelEntry
from sidecar.core.router import Target
from sidecar.upstream.client import upstream_chunks

from . import CHAT, Outbound, mistral_error, read_all, require, translated_response

SERVICE = "bedrock"


class BedrockTransport:
    provider = "bedrock"

    def __init__(self, entry: ModelEntry, clock: Clock = SYSTEM):
        self.clock = clock  # the answers' ``created``
        credentials = require("botocore.credentials", "bedrock")
        self._auth = require("botocore.auth", "bedrock")
        self._awsrequest = require("botocore.awsrequest", "bedrock")
        self._eventstream = require("botocore.eventstream", "bedrock")
        cloud = entry.cloud
        self.region = cloud["aws_region_name"]
        self.credentials = credentials.Credentials(cloud["aws_access_key_id"], cloud["aws_secret_access_key"],
                                                   cloud.get("aws_session_token"))
        endpoint = cloud.get("aws_bedrock_runtime_endpoint") or f"https://bedrock-runtime.{self.region}.amazonaws.com"
        self.target = Target(endpoint.rstrip("/"))
        self.model_id = entry.model

    def supports(self, op) -> bool:
        return op.path == CHAT

    def _signed(self, url: str, body: bytes, stream: bool) -> dict:
        """The SigV4 headers for this exact request (host, date, payload hash, token)."""
        headers = {"Content-Type": "application/json",
                   "Accept": "application/vnd.amazon.eventstream" if stream else "application/json"}
        request = self._awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
        self._auth.SigV4Auth(self.credentials, SERVICE, self.region).add_auth(request)
        return dict(request.headers.items())

    def send(self, upstream, call: Outbound) -> requests.Response:
        body = json.dumps(converse.to_converse(call.json if isinstance(call.json, dict) else {})).encode()
        path = f"/model/{quote(self.model_id, safe='')}/{'converse-stream' if call.stream else 'converse'}"
        headers = self._signed(self.target.base_url + path, body, call.stream)
        response = upstream.send(self.target, "POST", path, "", headers, body)
        answer_id = f"bedrock-{response.headers.get('x-amzn-RequestId') or uuid.uuid4().hex}"
        if response.status_code >= 400:
            return self._error(response)
        if call.stream:
            translator = converse.StreamTranslator(model=self.model_id, id=answer_id, created=int(self.clock.wall()))
            return translated_response(200, "text/event-stream", self._events(response, translator), source=response)
        try:
            data = json.loads(read_all(response))
        except ValueError:
            return mistral_error(502, "Bedrock answered with a body that is not JSON.", type="upstream_error",
                                 code="upstream_invalid_response", source=response)
        answer = converse.from_converse(data, model=self.model_id, id=answer_id, created=int(self.clock.wall()))
        return translated_response(200, "application/json", [json.dumps(answer).encode()], source=response)

    def _error(self, response: requests.Response) -> requests.Response:
        kind = response.headers.get("x-amzn-ErrorType")
        try:
            data = json.loads(read_all(response, 64 * 1024))
            message = data.get("message") or data.get("Message") if isinstance(data, dict) else None
        except ValueError:
            message = None
        status, type_, code = converse.error_kind(kind, response.status_code)
        headers = {"Retry-After": response.headers["Retry-After"]} if response.headers.get("Retry-After") else None
        return mistral_error(status, f"Bedrock: {message or kind or 'error ' + str(response.status_code)}",
                             type=type_, code=code, source=response, headers=headers)

    def _events(self, response: requests.Response, translator: converse.StreamTranslator):
        """Frames as they arrive -> SSE chunks; an exception frame ends the stream with an error event."""
        buffer = self._eventstream.EventStreamBuffer()
        for data in upstream_chunks(response):
            buffer.add_data(data)
            for message in buffer:
                headers = message.headers
                payload = json.loads(message.payload or b"{}")
                if headers.get(":message-type") != "event":
                    kind = headers.get(":exception-type") or headers.get(":error-code") or "error"
                    _status, type_, code = converse.error_kind(kind, 500)
                    yield sse.error_event(f"Bedrock: {payload.get('message') or kind}", type=type_, code=code)
                    return
                yield from translator.feed(headers.get(":event-type", ""), payload)
        yield from translator.close()
