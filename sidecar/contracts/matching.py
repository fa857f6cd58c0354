"""Which contract answers a request: small matchers returning (ok, reason), and the index that ranks them.

Pure (no Flask, no requests). A reason names the first field that differs
(``json.messages[0].content: expected 'Hi', got 'hi'``) so a 501 tells a person what to fix.
A strict index (a user's own directory) answers a request only from an exchange whose ``match`` holds or
whose recorded request is exactly this one; a loose one (the shipped directory) also gives its generic
answers, which the responder then fits to the request.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

from sidecar.contracts.fileformat import Asked, Contract
from sidecar.core.errors import NoContract
from sidecar.core.spec import PATH_PARAM, Endpoint, Spec

MISSING = object()


def _show(value) -> str:
    if value is MISSING:
        return "nothing"
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def differences(expected, actual, where: str, exact: bool = False) -> Iterator[str]:
    """Every place where ``actual`` fails ``expected``: dicts by the keys expected (all keys when ``exact``),
    lists item by item and of the same length, anything else by equality."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            yield f"{where}: expected an object, got {_show(actual)}"
            return
        for key, value in expected.items():
            yield from differences(value, actual.get(key, MISSING), f"{where}.{key}", exact)
        if exact:
            for key in actual.keys() - expected.keys():
                yield f"{where}.{key}: expected nothing, got {_show(actual[key])}"
    elif isinstance(expected, list):
        if not isinstance(actual, list):
            yield f"{where}: expected a list, got {_show(actual)}"
        elif len(expected) != len(actual):
            yield f"{where}: expected {len(expected)} items, got {len(actual)}"
        else:
            for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
                yield from differences(e, a, f"{where}[{i}]", exact)
    elif expected != actual:
        yield f"{where}: expected {_show(expected)}, got {_show(actual)}"


def _first(found: Iterator[str]) -> tuple[bool, str]:
    reason = next(found, None)
    return (True, "") if reason is None else (False, reason)


def _text(values: dict) -> dict:
    return {k: str(v) for k, v in values.items()}


def json_differences(expected, asked: Asked, path_params: dict) -> Iterator[str]:
    return differences(expected, asked.json, "json")


def form_differences(expected, asked: Asked, path_params: dict) -> Iterator[str]:
    return differences(_text(expected), asked.form, "form")


def query_differences(expected, asked: Asked, path_params: dict) -> Iterator[str]:
    return differences(_text(expected), {k: v[-1] for k, v in asked.query.items() if v}, "query")


def path_differences(expected, asked: Asked, path_params: dict) -> Iterator[str]:
    return differences(_text(expected), path_params, "path")


def header_differences(expected, asked: Asked, path_params: dict) -> Iterator[str]:
    return differences({k.lower(): str(v) for k, v in expected.items()}, asked.headers, "headers")


DIFFERENCES = {"json": json_differences, "form": form_differences, "query": query_differences,
               "path": path_differences, "headers": header_differences}


def match_differences(match: dict, asked: Asked, path_params: dict) -> Iterator[str]:
    """Every way ``asked`` fails a ``match`` block, kind by kind in the order written."""
    for kind, expected in match.items():
        yield from DIFFERENCES[kind](expected, asked, path_params)


def satisfied(match: dict, asked: Asked, path_params: dict) -> tuple[bool, str]:
    """``(True, "")`` when the block holds, else ``(False, the first field that differs)``."""
    return _first(match_differences(match, asked, path_params))


def leaves(node) -> int:
    """How many values a ``match`` block pins (its specificity)."""
    if isinstance(node, dict):
        return sum(leaves(v) for v in node.values())
    if isinstance(node, list):
        return sum(leaves(v) for v in node) or 1
    return 1


def _likeness(recorded: Asked, asked: Asked) -> float:
    """How alike two requests read (0..1, letter case ignored): breaks ties between equally close exchanges."""
    def text(a: Asked) -> str:
        return json.dumps([a.path, a.query, a.json, a.form], sort_keys=True, default=str).lower()
    return difflib.SequenceMatcher(None, text(recorded), text(asked), autojunk=False).ratio()


# -- the index -----------------------------------------------------------------------------------------

class Candidate(NamedTuple):
    """A contract filed under an endpoint, with what its recorded request says, worked out once."""

    contract: Contract
    params: dict  # path parameters of the recorded path
    stream: bool  # the recorded request asked for a stream (or belongs to a ``#stream`` twin)
    asked: Asked

    def stream_agrees(self, asked: Asked) -> bool:
        """Errors answer streaming and plain requests alike (Mistral refuses before it streams)."""
        return self.contract.status >= 400 or self.stream == asked.stream

    def exact_differences(self, asked: Asked, params: dict) -> Iterator[str]:
        """Where ``asked`` differs from the request this exchange was recorded for."""
        yield from differences(self.params, params, "path", exact=True)
        yield from differences(self.asked.query, asked.query, "query", exact=True)
        if self.asked.json is not None or asked.json is not None:
            yield from differences(self.asked.json, asked.json, "json", exact=True)
        yield from differences(self.asked.form, asked.form, "form", exact=bool(self.asked.form))


class Pick(NamedTuple):
    """The contract that answers, and how it was chosen: ``match``, ``exact``, ``generic`` or ``fallback``."""

    contract: Contract
    how: str


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
    for found in PATH_PARAM.finditer(template):
        out.append(re.escape(template[pos:found.start()]))
        out.append(f"(?P<{found.group(1)}>[^/]+)")
        pos = found.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _literal_first(endpoint: Endpoint) -> tuple[int, int]:
    """Sort key putting literal segments first: ``/v1/agents/pages`` before ``/v1/agents/{agent_id}``."""
    return (endpoint.path.count("{"), -len(PATH_PARAM.sub("", endpoint.path)))


class ContractIndex:
    """Every contract of a directory, grouped by endpoint; built once at start-up.

    ``strict``: answer only from a ``match`` that holds or an exactly recorded request (a user's directory).
    ``fallback``: another index asked when this one has no answer (the shipped contracts, on request).
    """

    def __init__(self, spec: Spec, contracts: Iterable[Contract], directory: Path | None = None, *,
                 strict: bool = False, fallback: ContractIndex | None = None):
        self.directory = directory
        self.strict = strict
        self.fallback = fallback
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

    def route(self, method: str, path: str) -> tuple[Route, dict] | None:
        for route in self.routes:
            if route.endpoint.method == method:
                params = route.path_params(path)
                if params is not None:
                    return route, params
        return None

    def answer(self, asked: Asked) -> Pick:
        """The contract that answers ``asked``, or ``NoContract`` naming the closest one and what differs.

        Order: the request's stream flag must agree (errors answer both) and a contract's ``match`` must hold
        (in a strict index, a contract without one must have been recorded for exactly this request); then
        contracts with a ``match`` win, the more values they pin the better; then one recorded for exactly this
        request; then a success over an error; then the most shared features (path ids, model, query); then
        the first in file order.
        """
        found = self.route(asked.method, asked.path)
        if found is None:
            raise NoContract(f"No operation of openapi.yaml serves {asked.method} {asked.path}.")
        route, params = found
        ranked = [(rank, -position, candidate.contract)
                  for position, candidate in enumerate(route.candidates)
                  if (rank := self._rank(candidate, asked, params)) is not None]
        if ranked:
            (specificity, exact, *_), _, contract = max(ranked, key=lambda item: item[:2])
            return Pick(contract, "match" if specificity else "exact" if exact else "generic")
        if self.fallback is not None:
            try:
                return Pick(self.fallback.answer(asked).contract, "fallback")
            except NoContract:
                pass
        raise NoContract(self.why_not(route, asked, params))

    def _rank(self, candidate: Candidate, asked: Asked, params: dict):
        contract = candidate.contract
        if not candidate.stream_agrees(asked):
            return None
        specificity = 0
        if contract.match:
            if not satisfied(contract.match, asked, params)[0]:
                return None
            specificity = leaves(contract.match)
        exact = next(candidate.exact_differences(asked, params), None) is None
        if self.strict and not specificity and not exact:
            return None
        recorded = candidate.asked
        shared = sum(candidate.params.get(k) == v for k, v in params.items())
        shared += recorded.model is not None and recorded.model == asked.model
        shared += bool(recorded.query) and recorded.query == asked.query
        return specificity, exact, contract.status < 400, shared

    def why_not(self, route: Route, asked: Asked, params: dict) -> str:
        """The 501 message: the directory, the operation, the closest exchange and the first field that differs."""
        op = route.endpoint.pick(asked.stream)
        where = str(self.directory) if self.directory else "the contracts"
        head = f"No contract in {where} answers {asked.method} {asked.path} ({op.id})"
        if not route.candidates:
            return f"{head}: none is filed for this operation; add one to {where}/{op.id}.yaml or record one."
        closest, reasons = min(((c, self._differences(c, asked, params)) for c in route.candidates),
                               key=lambda item: (len(item[1]), -_likeness(item[0].asked, asked)))
        return (f"{head}. Closest: {closest.contract.where}: {reasons[0]}"
                + (f" (and {len(reasons) - 1} more difference{'s' * (len(reasons) > 2)})" if len(reasons) > 1 else "")
                + ".")

    def _differences(self, candidate: Candidate, asked: Asked, params: dict) -> list[str]:
        found, stream_field = [], "form.stream" if asked.form else "json.stream"
        if not candidate.stream_agrees(asked):
            found.append(f"{stream_field}: expected {'true' if candidate.stream else 'not true'}, "
                         f"got {'true' if asked.stream else 'not true'}")
        if candidate.contract.match:
            found += list(match_differences(candidate.contract.match, asked, params))
        elif self.strict:
            found += [d for d in candidate.exact_differences(asked, params)
                      if not (found and d.startswith(stream_field + ":"))]
        return found or ["no difference found"]
