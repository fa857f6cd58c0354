"""Contracts: recorded Mistral exchanges in readable YAML, the index that picks one per request, secret scrubbing.

Pure (no Flask, no requests): ``transports.py`` turns a picked ``Contract`` into an HTTP response. The file
format and the matching order are documented in ``contracts/README.md``; the short version is in
``ContractIndex.answer``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from sidecar.core import sse
from sidecar.core.errors import NoContract
from sidecar.core.spec import Endpoint, Spec

SCRUBBED = "<scrubbed>"
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "set-cookie", "proxy-authorization"})
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Writes repeated values out in full: anchors and aliases (``&id001``) are not for people."""

    def ignore_aliases(self, data) -> bool:
        return True


# -- the request as matching sees it ------------------------------------------------------------------

@dataclass(frozen=True)
class Asked:
    """What an outgoing request says, reduced to the features contracts match on."""

    method: str
    path: str
    query: dict = field(default_factory=dict)  # name -> list of values
    json: object = None
    form: dict = field(default_factory=dict)  # multipart text fields
    headers: dict = field(default_factory=dict)  # lower-case names

    @property
    def stream(self) -> bool:
        if isinstance(self.json, dict):
            return self.json.get("stream") is True
        return str(self.form.get("stream", "")).strip().lower() == "true"

    @property
    def model(self) -> str | None:
        model = self.json.get("model") if isinstance(self.json, dict) else self.form.get("model")
        return model if isinstance(model, str) else None

    @classmethod
    def from_url(cls, method: str, url: str, **features) -> Asked:
        parts = urlsplit(url)
        return cls(method.upper(), parts.path, parse_qs(parts.query, keep_blank_values=True), **features)


# -- one recorded exchange ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Contract:
    """One recorded exchange: the request that was sent and the response that came back."""

    operation: str
    name: str
    source: str  # hand-written | generated | recorded
    request: dict
    response: dict
    match: dict | None = None
    file: Path | None = None

    @property
    def status(self) -> int:
        return int(self.response.get("status", 200))

    @property
    def streams(self) -> bool:
        return "events" in self.response

    @property
    def content_type(self) -> str | None:
        for name, value in (self.response.get("headers") or {}).items():
            if name.lower() == "content-type":
                return value
        if self.streams:
            return "text/event-stream"
        return "application/json" if "json" in self.response else None

    def recorded_request(self) -> Asked:
        req = self.request
        query = {k: v if isinstance(v, list) else [v] for k, v in (req.get("query") or {}).items()}
        query = {k: [str(x) for x in v] for k, v in query.items()}
        return Asked(req.get("method", "GET").upper(), req.get("path", ""), query, req.get("json"),
                     {k: str(v) for k, v in (req.get("form") or {}).items()})

    def body(self) -> bytes:
        """The whole body of a plain (non-stream) response."""
        res = self.response
        if "json" in res:
            return json.dumps(res["json"], ensure_ascii=False).encode()
        if "body_base64" in res:
            return base64.b64decode(res["body_base64"])
        return str(res.get("body") or "").encode()

    def chunks(self) -> Iterator[bytes]:
        """A stream's events framed as on the wire, one chunk per event."""
        for event in self.response.get("events") or ():
            yield frame(event)


def frame(event: dict) -> bytes:
    """``{event?, id?, data}`` -> SSE bytes; JSON data is written compact, strings as they are."""
    lines = []
    if event.get("event"):
        lines.append(f"event: {event['event']}")
    if event.get("id") is not None:
        lines.append(f"id: {event['id']}")
    data = event.get("data")
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    lines += [f"data: {line}" for line in text.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def unframe(raw: bytes) -> dict:
    """SSE bytes of one event -> ``{event?, id?, data}``, JSON data parsed when it is JSON."""
    parsed = sse.parse_event(raw)
    event: dict = {}
    if parsed.event:
        event["event"] = parsed.event
    if parsed.id is not None:
        event["id"] = parsed.id
    try:
        event["data"] = json.loads(parsed.data) if parsed.data[:1] in ("{", "[", '"') else parsed.data
    except ValueError:
        event["data"] = parsed.data
    return event


# -- matchers: small functions returning (ok, reason) ---------------------------------------------------

def subset(expected, actual) -> bool:
    """Dicts match when every expected key matches; lists element by element; anything else by equality."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            subset(e, a) for e, a in zip(expected, actual, strict=True))
    return expected == actual


def leaves(node) -> int:
    """How many values a ``match`` block pins (its specificity)."""
    if isinstance(node, dict):
        return sum(leaves(v) for v in node.values())
    if isinstance(node, list):
        return sum(leaves(v) for v in node) or 1
    return 1


def match_json(expected, asked: Asked, path_params: dict) -> tuple[bool, str]:
    return (True, "") if subset(expected, asked.json) else (False, "JSON body differs")


def match_form(expected, asked: Asked, path_params: dict) -> tuple[bool, str]:
    ok = all(str(asked.form.get(k)) == str(v) for k, v in expected.items())
    return (True, "") if ok else (False, "form fields differ")


def match_query(expected, asked: Asked, path_params: dict) -> tuple[bool, str]:
    ok = all(asked.query.get(k, [None])[-1] == str(v) for k, v in expected.items())
    return (True, "") if ok else (False, "query differs")


def match_path(expected, asked: Asked, path_params: dict) -> tuple[bool, str]:
    ok = all(path_params.get(k) == str(v) for k, v in expected.items())
    return (True, "") if ok else (False, "path parameters differ")


def match_headers(expected, asked: Asked, path_params: dict) -> tuple[bool, str]:
    ok = all(asked.headers.get(k.lower()) == str(v) for k, v in expected.items())
    return (True, "") if ok else (False, "headers differ")


MATCHERS = {"json": match_json, "form": match_form, "query": match_query, "path": match_path,
            "headers": match_headers}


def satisfied(match: dict, asked: Asked, path_params: dict) -> tuple[bool, str]:
    for kind, expected in match.items():
        ok, reason = MATCHERS[kind](expected, asked, path_params)
        if not ok:
            return False, reason
    return True, ""


# -- the index -----------------------------------------------------------------------------------------

class Candidate(NamedTuple):
    """A contract filed under an endpoint, with what its recorded request says, worked out once."""

    contract: Contract
    params: dict  # path parameters of the recorded path
    stream: bool  # the recorded request asked for a stream (or belongs to a ``#stream`` twin)
    asked: Asked


@dataclass(frozen=True)
class Route:
    """One endpoint of the spec as a compiled path pattern, with the contracts that can answer it."""

    endpoint: Endpoint
    pattern: re.Pattern
    candidates: tuple[Candidate, ...] = ()

    def path_params(self, path: str) -> dict | None:
        found = self.pattern.fullmatch(path)
        return {k: unquote(v) for k, v in found.groupdict().items()} if found else None


def path_pattern(template: str) -> re.Pattern:
    """``/v1/files/{file_id}`` -> a regex with one named group per parameter."""
    out, pos = [], 0
    for found in re.finditer(r"{([^}/]+)}", template):
        out.append(re.escape(template[pos:found.start()]))
        out.append(f"(?P<{found.group(1)}>[^/]+)")
        pos = found.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _literal_first(endpoint: Endpoint) -> tuple[int, int]:
    """Sort key putting literal segments first: ``/v1/agents/pages`` before ``/v1/agents/{agent_id}``."""
    return (endpoint.path.count("{"), -len(re.sub(r"{[^}]+}", "", endpoint.path)))


class ContractIndex:
    """Every contract of a directory, grouped by endpoint; built once at start-up."""

    def __init__(self, spec: Spec, contracts: Iterable[Contract], directory: Path | None = None):
        self.directory = directory
        self.contracts = tuple(contracts)
        by_op: dict[str, list[Contract]] = {}
        for contract in self.contracts:
            by_op.setdefault(contract.operation, []).append(contract)
        routes = []
        for endpoint in sorted(spec.endpoints, key=_literal_first):
            route = Route(endpoint, path_pattern(endpoint.path))
            ops = [endpoint.plain] + ([endpoint.stream] if endpoint.stream else [])
            candidates = []
            for op in ops:
                for contract in by_op.get(op.id, ()):
                    asked = contract.recorded_request()
                    candidates.append(Candidate(contract, route.path_params(asked.path) or {},
                                                asked.stream or op.stream_twin, asked))
            routes.append(Route(endpoint, route.pattern, tuple(candidates)))
        self.routes = tuple(routes)

    @classmethod
    def load(cls, directory: Path | str, spec: Spec) -> ContractIndex:
        directory = Path(directory)
        return cls(spec, load_directory(directory), directory)

    def route(self, method: str, path: str) -> tuple[Route, dict] | None:
        for route in self.routes:
            if route.endpoint.method == method:
                params = route.path_params(path)
                if params is not None:
                    return route, params
        return None

    def answer(self, asked: Asked) -> Contract:
        """The contract that answers ``asked``, or ``NoContract`` saying why none does.

        Order: the request's stream flag must agree and a contract's ``match`` must hold; then contracts
        with a ``match`` win, the more values they pin the better; then one recorded for exactly this
        request; then a success over an error; then the most shared features (path ids, model, query);
        then the first in file order.
        """
        found = self.route(asked.method, asked.path)
        if found is None:
            raise NoContract(f"No operation of openapi.yaml serves {asked.method} {asked.path}.")
        route, params = found
        reasons: list[str] = []
        ranked = [(rank, -position, candidate.contract)
                  for position, candidate in enumerate(route.candidates)
                  if (rank := _rank(candidate, asked, params, reasons)) is not None]
        if not ranked:
            raise NoContract(self._why_not(route, asked, reasons))
        return max(ranked, key=lambda item: item[:2])[2]

    @staticmethod
    def _why_not(route: Route, asked: Asked, reasons: list[str]) -> str:
        op = route.endpoint.pick(asked.stream)
        where = f"contracts/{op.id}.yaml"
        if not route.candidates:
            return f"No contract recorded for {op.id} ({asked.method} {route.endpoint.path}); add {where} or record one."
        kind = "streaming " if asked.stream else "non-streaming "
        why = "; ".join(sorted(set(reasons)))
        return (f"No {kind}contract answers {asked.method} {asked.path} ({op.id}): {len(route.candidates)} on file, "
                f"{why}. Add one to {where} or record one.")


def _rank(candidate: Candidate, asked: Asked, params: dict, reasons: list[str]):
    contract = candidate.contract
    if candidate.stream != asked.stream:
        reasons.append("those are streaming" if candidate.stream else "those are not streaming")
        return None
    specificity = 0
    if contract.match:
        ok, reason = satisfied(contract.match, asked, params)
        if not ok:
            reasons.append(f"'{contract.name}' has a match block: {reason}")
            return None
        specificity = leaves(contract.match)
    recorded = candidate.asked
    exact = (candidate.params == params and recorded.query == asked.query and recorded.json == asked.json
             and all(asked.form.get(k) == v for k, v in recorded.form.items()))
    shared = sum(candidate.params.get(k) == v for k, v in params.items())
    shared += recorded.model is not None and recorded.model == asked.model
    shared += bool(recorded.query) and recorded.query == asked.query
    return specificity, exact, contract.status < 400, shared


# -- files ---------------------------------------------------------------------------------------------

def load_file(path: Path) -> list[Contract]:
    """One contract file: ``operation``, ``source`` and a list of ``exchanges``."""
    with open(path, "rb") as fh:
        doc = yaml.load(fh, Loader=_Loader) or {}
    operation = doc.get("operation") or path.stem
    default_source = doc.get("source", "hand-written")
    out = []
    for i, item in enumerate(doc.get("exchanges") or ()):
        out.append(Contract(operation, item.get("name") or f"{operation} #{i + 1}", item.get("source", default_source),
                            item.get("request") or {}, item.get("response") or {}, item.get("match"), path))
    return out


def load_directory(directory: Path) -> list[Contract]:
    """Every ``*.yaml`` file under ``directory`` (sorted, so the order is the same on every machine)."""
    found: list[Contract] = []
    for path in sorted(directory.rglob("*.yaml")):
        found += load_file(path)
    return found


def dump(value) -> str:
    """YAML as people read it: block style, keys in the order written, unicode kept."""
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def exchange_document(contract: Contract) -> dict:
    """A contract as one entry of a file's ``exchanges`` list."""
    entry: dict = {"name": contract.name, "source": contract.source}
    if contract.match:
        entry["match"] = contract.match
    entry["request"] = contract.request
    entry["response"] = contract.response
    return entry


# -- scrubbing -----------------------------------------------------------------------------------------

def scrub(value, secrets: Iterable[str]):
    """Replace every secret anywhere in a JSON-like value (keys, strings) with ``<scrubbed>``."""
    secrets = tuple(s for s in secrets if s)
    if not secrets:
        return value
    return _scrub(value, secrets)


def _scrub(value, secrets):
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, SCRUBBED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def scrub_headers(headers: dict, secrets: Iterable[str]) -> dict:
    """Headers safe to write: credentials and cookies dropped, any other value holding a secret scrubbed."""
    kept = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
    return scrub(kept, secrets)
