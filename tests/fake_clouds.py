"""Local fakes of Bedrock, Vertex AI and Azure AI Foundry that check what the real services check.

Each is a ``FakeMistral`` (a real loopback HTTP server recording what it receives) whose fallback
handler plays the cloud: the fake Bedrock recomputes the SigV4 signature (its own implementation
of the spec, not botocore's) with the same secret and answers Converse / ConverseStream, streams in
AWS event-stream frames built here per the spec; the fake Vertex serves the service account's token
endpoint (verifying the signed JWT) and refuses unknown or expired tokens; the fake Azure requires
its key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import itertools
import json
import re
import struct
import time
from urllib.parse import parse_qsl, quote, unquote

from werkzeug.wrappers import Response

from .fakes import FakeMistral, chat_body, chat_events, tool_call_body


# -- AWS event-stream framing (the spec: prelude, prelude CRC, headers, payload, message CRC) ------------
def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return bytes([len(raw_name)]) + raw_name + bytes([7]) + struct.pack(">H", len(raw_value)) + raw_value


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total length, headers length, CRC32 of those 8 bytes, headers, payload, CRC32."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    body = prelude + struct.pack(">I", binascii.crc32(prelude)) + head + payload
    return body + struct.pack(">I", binascii.crc32(body))


def event(kind: str, payload: dict) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(payload).encode())


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                 json.dumps({"message": message}).encode())


def text_events(words: list[str], usage=(11, 4)) -> list[bytes]:
    return [event("messageStart", {"role": "assistant"}),
            *[event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in words],
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": "end_turn"}),
            event("metadata", {"usage": {"inputTokens": usage[0], "outputTokens": usage[1],
                                         "totalTokens": sum(usage)}, "metrics": {"latencyMs": 12}})]


def tool_events() -> list[bytes]:
    return [event("messageStart", {"role": "assistant"}),
            event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {
                "toolUseId": "tooluse_1", "name": "get_current_weather"}}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"location": '}}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '"Boston"}'}}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": "tool_use"}),
            event("metadata", {"usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29},
                               "metrics": {"latencyMs": 12}})]


def converse_answer(text="Bonjour!", tool=False) -> dict:
    content = [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_current_weather", "input": {"location": "Boston"}}}
               ] if tool else [{"text": text}]
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if tool else "end_turn",
            "usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15}, "metrics": {"latencyMs": 40}}


# -- SigV4, recomputed independently -------------------------------------------------------------------
def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_problem(request, secrets: dict[str, str], region: str, service: str = "bedrock",
                  token: str | None = None) -> str | None:
    """Why this request's SigV4 signature is wrong (None when it is right), as AWS checks it."""
    auth = request.headers.get("Authorization", "")
    found = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", auth)
    if not found:
        return "missing or malformed Authorization"
    key_id, day, scope_region, scope_service, signed, signature = found.groups()
    if key_id not in secrets:
        return "UnrecognizedClientException"
    if (scope_region, scope_service) != (region, service):
        return "wrong credential scope"
    stamp = request.headers.get("X-Amz-Date", "")
    try:
        when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "missing X-Amz-Date"
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 300 or stamp[:8] != day:
        return "signature expired"
    if token is not None and request.headers.get("X-Amz-Security-Token") != token:
        return "security token missing or wrong"
    names = signed.split(";")
    if "host" not in names or (token is not None and "x-amz-security-token" not in names):
        return "host (and the token) must be signed"
    raw_path = request.environ.get("RAW_URI", request.path).split("?", 1)[0]
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(parse_qsl(request.query_string.decode(), keep_blank_values=True)))
    canonical_headers = "".join(f"{n}:{' '.join(request.headers.get(n, '').split())}\n" for n in names)
    canonical = "\n".join([request.method, quote(raw_path, safe="/~"), query, canonical_headers, signed,
                           hashlib.sha256(request.get_data()).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secrets[key_id]}".encode(), day), region), service), "aws4_request")
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, signature) else "SignatureDoesNotMatch"


def _bedrock_error(status: int, kind: str, message: str, **headers) -> Response:
    return Response(json.dumps({"message": message}), status,
                    {"Content-Type": "application/json", "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/",
                     **headers})


class FakeBedrock(FakeMistral):
    """Bedrock runtime: SigV4 checked, ``/model/{id}/converse`` and ``/converse-stream`` answered as
    programmed (``answer``, ``events``, or ``error`` = (status, type, message))."""

    def __init__(self, key_id: str, secret: str, region: str, token: str | None = None):
        super().__init__()
        self.secrets, self.region, self.token = {key_id: secret}, region, token
        self.answer, self.events, self.error = converse_answer(), text_events(["Bon", "jour"]), None
        self.requests: list[tuple[str, dict]] = []  # (model id, Converse body) of each signed request
        self.fallback = self.handle

    def handle(self, request):
        problem = sigv4_problem(request, self.secrets, self.region, token=self.token)
        if problem:
            kind = "UnrecognizedClientException" if "Unrecognized" in problem else "InvalidSignatureException"
            return _bedrock_error(403, kind, problem)
        found = re.fullmatch(r"/model/([^/]+)/(converse|converse-stream)", request.path)
        if not found or request.method != "POST":
            return _bedrock_error(404, "UnknownOperationException", "no such operation")
        body = json.loads(request.get_data())
        problem = _converse_problem(body)
        if problem:
            return _bedrock_error(400, "ValidationException", problem)
        self.requests.append((unquote(found.group(1)), body))
        if self.error:
            status, kind, message = self.error
            return _bedrock_error(status, kind, message)
        if found.group(2) == "converse":
            return Response(json.dumps(self.answer), 200, {"Content-Type": "application/json",
                                                           "x-amzn-RequestId": "req-123"})
        return Response(iter(self.events), 200, {"Content-Type": "application/vnd.amazon.eventstream",
                                                  "x-amzn-RequestId": "req-456"})


def _converse_problem(body: dict) -> str | None:
    """What Bedrock's validation would refuse: unknown top-level fields, roles not alternating from user,
    tool results or uses without a tool configuration."""
    allowed = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
               "additionalModelRequestFields", "additionalModelResponseFieldPaths", "promptVariables", "requestMetadata",
               "performanceConfig"}
    if set(body) - allowed:
        return f"unknown fields: {sorted(set(body) - allowed)}"
    messages = body.get("messages")
    if not messages or messages[0].get("role") != "user":
        return "A conversation must start with a user message."
    for before, after in itertools.pairwise(messages):
        if before["role"] == after["role"]:
            return "A conversation must alternate between user and assistant roles."
    blocks = [b for m in messages for b in m["content"]]
    if any(set(b) - {"text", "image", "toolUse", "toolResult"} for b in blocks):
        return "unknown content block"
    if any("toolUse" in b or "toolResult" in b for b in blocks) and "toolConfig" not in body:
        return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    return None


# -- Vertex AI ----------------------------------------------------------------------------------------------
def service_account(token_uri: str) -> tuple[dict, object]:
    """A service-account key made for the test (a fresh RSA key) and its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "proj-1", "private_key_id": "kid-1", "private_key": pem,
            "client_email": "sidecar@proj-1.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}
    return info, key.public_key()


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class FakeVertex(FakeMistral):
    """The token endpoint (``/token``: a JWT bearer grant signed by the service account) and
    ``rawPredict``/``streamRawPredict``, which refuse a missing, unknown or expired token.
    ``clock`` is the fake's own time, which a test can move forward."""

    def __init__(self, project="proj-1", location="europe-west4", expires_in=3600):
        super().__init__()
        self.project, self.location, self.expires_in = project, location, expires_in
        self.offset = 0.0
        self.tokens: dict[str, float] = {}  # token -> when it expires (fake clock)
        self.grants = 0
        self.public_key = None  # the service account's, set by the test that makes the account
        self.client_email = "sidecar@proj-1.iam.gserviceaccount.com"
        self.fallback = self.handle

    def clock(self) -> float:
        return time.time() + self.offset

    def handle(self, request):
        if request.path == "/token":
            return self._grant(request)
        found = re.fullmatch(rf"/v1/projects/{self.project}/locations/{self.location}/publishers/mistralai/models/"
                             r"([a-z0-9.-]+)@([a-z0-9.-]+):(rawPredict|streamRawPredict)", request.path)
        if not found:
            return _google_error(404, "NOT_FOUND", "no such model or method")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.tokens.get(token, 0) <= self.clock():
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        body = json.loads(request.get_data())
        if body.get("model") != found.group(1):
            return _google_error(400, "INVALID_ARGUMENT", "model in body differs from the URL")
        if found.group(3) == "streamRawPredict":
            return Response(b"".join(chat_events(2, model=body["model"])), 200, {"Content-Type": "text/event-stream"})
        if body.get("tools"):
            return Response(json.dumps(tool_call_body()), 200, {"Content-Type": "application/json"})
        content = "def f(): return 1" if "prompt" in body else "Hello from Vertex"
        return Response(json.dumps(chat_body(model=body["model"], content=content)), 200,
                        {"Content-Type": "application/json"})

    def _grant(self, request):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        form = request.form
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _oauth_error("unsupported_grant_type")
        try:
            head, claims, signature = form["assertion"].split(".")
            self.public_key.verify(_b64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
            claims = json.loads(_b64(claims))
        except Exception:  # any malformed or badly signed assertion is refused the same way
            return _oauth_error("invalid_grant")
        # Google's token endpoint wants its own URL as the audience, wherever the grant is posted
        if (claims.get("aud") != "https://oauth2.googleapis.com/token" or claims.get("iss") != self.client_email or "cloud-platform" not in claims.get("scope", "")
                or claims.get("exp", 0) < time.time()):
            return _oauth_error("invalid_grant")
        self.grants += 1
        token = f"ya29.fake-token-{self.grants}"
        self.tokens[token] = self.clock() + self.expires_in
        return Response(json.dumps({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}),
                        200, {"Content-Type": "application/json"})


def _google_error(status: int, kind: str, message: str) -> Response:
    return Response(json.dumps({"error": {"code": status, "message": message, "status": kind}}), status,
                    {"Content-Type": "application/json"})


def _oauth_error(kind: str) -> Response:
    return Response(json.dumps({"error": kind}), 400, {"Content-Type": "application/json"})


# -- Azure AI Foundry ---------------------------------------------------------------------------------------
class FakeAzure(FakeMistral):
    """A serverless Mistral deployment: Mistral's format at ``/v1/chat/completions`` and Document AI
    at ``/providers/mistral/azure/ocr`` (data URIs only); the key as a bearer token or ``api-key``."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.fallback = self.handle

    def handle(self, request):
        given = request.headers.get("api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            return Response(json.dumps({"error": {"code": "401", "message": "Access denied due to invalid key."}}),
                            401, {"Content-Type": "application/json"})
        body = json.loads(request.get_data())
        if request.path == "/providers/mistral/azure/ocr":
            document = body.get("document") or {}
            url = document.get("document_url") or document.get("image_url") or ""
            url = url.get("url", "") if isinstance(url, dict) else url
            if not url.startswith("data:"):
                return Response(json.dumps({"error": {"code": "400", "message": "documents must be data URIs"}}), 400,
                                {"Content-Type": "application/json"})
            return Response(json.dumps({"pages": [{"index": 0, "markdown": "# azure", "images": [],
                                                   "dimensions": {"dpi": 200, "height": 1, "width": 1}}],
                                        "model": body.get("model"), "usage_info": {"pages_processed": 1,
                                                                                   "doc_size_bytes": 3}}),
                            200, {"Content-Type": "application/json"})
        if request.path != "/v1/chat/completions":
            return Response(json.dumps({"error": {"code": "404", "message": "Resource not found"}}), 404,
                            {"Content-Type": "application/json"})
        if body.get("stream"):
            return Response(b"".join(chat_events(3, model=body["model"])), 200, {"Content-Type": "text/event-stream"})
        if body.get("tools"):
            return Response(json.dumps(tool_call_body()), 200, {"Content-Type": "application/json"})
        return Response(json.dumps(chat_body(model=body["model"], content="Hello from Azure")), 200,
                        {"Content-Type": "application/json"})
