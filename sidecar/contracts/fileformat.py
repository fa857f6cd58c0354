"""The contract file format: what a file may say (checked key by key when read), and the records it becomes.

Pure (no Flask, no requests). ``contracts/README.md`` documents the format for people; ``EXCHANGE_KEYS`` and
friends below are the same list for the loader, which refuses anything else (a misspelt ``macth:`` would
otherwise turn an exchange into a catch-all).
"""

from __future__ import annotations

import base64
import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from sidecar.core import sse
from sidecar.core.fields import model_of, wants_stream

SOURCES = ("hand-written", "generated", "recorded")
FILE_KEYS = ("operation", "source", "exchanges")
EXCHANGE_KEYS = ("name", "source", "match", "request", "response")
REQUEST_KEYS = ("method", "path", "query", "json", "form")
RESPONSE_KEYS = ("status", "headers", "json", "body", "body_base64", "events", "cut")
EVENT_KEYS = ("event", "id", "data", "retry", "delay")
MATCH_KEYS = ("json", "form", "query", "path", "headers")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Writes repeated values out in full: anchors and aliases (``&id001``) are not for people."""

    def ignore_aliases(self, data) -> bool:
        return True


class ContractError(ValueError):
    """Contracts that cannot be used as written; ``problems`` holds one line per problem, each naming the
    file, the exchange, the key and what is wrong."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid contracts:\n  " + "\n  ".join(self.problems))


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
        return wants_stream(self.json, self.form)

    @property
    def model(self) -> str | None:
        return model_of(self.json, self.form)

    @classmethod
    def from_url(cls, method: str, url: str, **features) -> Asked:
        parts = urlsplit(url)
        return cls(method.upper(), parts.path, parse_qs(parts.query, keep_blank_values=True), **features)


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
    position: int = 0  # index in its file's ``exchanges``

    @property
    def where(self) -> str:
        """How a person finds it: ``file.yaml, exchange 'name'``."""
        return f"{self.file.name if self.file else '<memory>'}, exchange '{self.name}'"

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

    def events(self) -> list[dict]:
        return list(self.response.get("events") or ())


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


# -- reading files, key by key -------------------------------------------------------------------------

def _unknown(where: str, node, allowed: tuple[str, ...]) -> list[str]:
    if not isinstance(node, dict):
        return [f"{where}: expected a mapping, got {type(node).__name__}"]
    found = []
    for key in node:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(allowed)})"
            found.append(f"{where}: unknown key '{key}'{hint}")
    return found


def exchange_problems(where: str, item) -> list[str]:
    """What is wrong with one entry of ``exchanges`` as written (keys and shapes, not the spec)."""
    found = _unknown(where, item, EXCHANGE_KEYS)
    if not isinstance(item, dict):
        return found
    if item.get("source", "hand-written") not in SOURCES:
        found.append(f"{where}: source: '{item['source']}' is none of {', '.join(SOURCES)}")
    for key, allowed in (("request", REQUEST_KEYS), ("response", RESPONSE_KEYS), ("match", MATCH_KEYS)):
        if key in item:
            found += _unknown(f"{where}: {key}", item[key], allowed)
    if not isinstance(item.get("request"), dict) or "path" not in item["request"]:
        found.append(f"{where}: request: needs at least 'method' and 'path'")
    response = item.get("response")
    if not isinstance(response, dict):
        found.append(f"{where}: response: missing")
        return found
    if sum(k in response for k in ("json", "body", "body_base64", "events")) > 1:
        found.append(f"{where}: response: give one of json, body, body_base64, events")
    for i, event in enumerate(response.get("events") or ()):
        found += _unknown(f"{where}: response.events[{i}]", event, EVENT_KEYS)
        delay = event.get("delay", 0) if isinstance(event, dict) else 0
        if not isinstance(delay, (int, float)) or delay < 0:
            found.append(f"{where}: response.events[{i}].delay: expected seconds >= 0, got {delay!r}")
    if "events" not in response and "cut" in response:
        found.append(f"{where}: response.cut: only a stream (events) can be cut")
    return found


def read_file(path: Path) -> tuple[list[Contract], list[str]]:
    """One contract file -> its exchanges and the problems found in how it is written."""
    try:
        with open(path, "rb") as fh:
            doc = yaml.load(fh, Loader=_Loader)
    except yaml.YAMLError as error:
        return [], [f"{path.name}: not valid YAML: {error}".replace("\n", " ")]
    if doc is None:
        return [], [f"{path.name}: empty file"]
    problems = _unknown(path.name, doc, FILE_KEYS)
    if not isinstance(doc, dict):
        return [], problems
    operation = doc.get("operation") or path.stem
    default_source = doc.get("source", "hand-written")
    if default_source not in SOURCES:
        problems.append(f"{path.name}: source: '{default_source}' is none of {', '.join(SOURCES)}")
    exchanges = doc.get("exchanges")
    if not isinstance(exchanges, list) or not exchanges:
        problems.append(f"{path.name}: exchanges: expected a list of at least one exchange")
        exchanges = []
    out = []
    for i, item in enumerate(exchanges):
        name = (item.get("name") if isinstance(item, dict) else None) or f"{operation} #{i + 1}"
        item_problems = exchange_problems(f"{path.name}, exchange '{name}'", item)
        problems += item_problems
        if not item_problems:
            out.append(Contract(operation, name, item.get("source", default_source), item.get("request") or {},
                                item.get("response") or {}, item.get("match"), path, i))
    return out, problems


def load_file(path: Path) -> list[Contract]:
    """One contract file's exchanges; ``ContractError`` when it is not written as the format says."""
    found, problems = read_file(Path(path))
    if problems:
        raise ContractError(problems)
    return found


def contract_files(directory: Path) -> list[Path]:
    """Every ``*.yaml`` file under ``directory``, sorted (the same order on every machine)."""
    return sorted(p for p in Path(directory).rglob("*.yaml") if p.is_file())


def load_directory(directory: Path) -> list[Contract]:
    """Every exchange of every file under ``directory``, read key by key; problems raise ``ContractError``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ContractError([f"{directory}: no such contracts directory"])
    found, problems = [], []
    for path in contract_files(directory):
        contracts, file_problems = read_file(path)
        found += contracts
        problems += file_problems
    if problems:
        raise ContractError(problems)
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


def chunks(events: list[dict]) -> Iterator[tuple[float, bytes]]:
    """A stream's events framed as on the wire, each with the delay (seconds) recorded before it."""
    for event in events:
        yield float(event.get("delay") or 0), frame({k: v for k, v in event.items() if k != "delay"})
