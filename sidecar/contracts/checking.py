"""Contracts checked when they are loaded: the format, the operation, the ``match`` block and the spec.

Pure (no Flask, no requests). Replay start-up, the pytest plugin and ``mistral-sidecar contracts check DIR``
all call ``check_directory``; each problem names the file, the exchange, the key and what is wrong, so a
misspelt key or a contract that drifted from ``openapi.yaml`` stops start-up instead of answering wrongly.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.contracts import fileformat
from sidecar.contracts.conformance import Conformance
from sidecar.contracts.fileformat import Contract, ContractError
from sidecar.contracts.matching import ContractIndex, satisfied
from sidecar.core.spec import Operation, Spec, resolve


def match_problems(op: Operation, contract: Contract, spec: Spec, index: ContractIndex) -> list[str]:
    """Ways a ``match`` block can never hold: fields the operation does not have, or a stream flag the
    response contradicts, or a block its own recorded request fails."""
    match = contract.match or {}
    found = []
    names = {kind: {p.name for p in op.params if p.location == kind} for kind in ("path", "query")}
    for kind in ("path", "query"):
        for name in match.get(kind) or {}:
            if name not in names[kind]:
                found.append(f"match.{kind}.{name}: {op.id} has no {kind} parameter '{name}' "
                             f"(it has: {', '.join(sorted(names[kind])) or 'none'})")
    for kind, body in (("json", "json"), ("form", "multipart")):
        if kind in match and op.body_kind != body:
            found.append(f"match.{kind}: {op.id} takes no {kind} body")
        elif kind in match and isinstance(match[kind], dict):
            props = (resolve(spec.document, op.body_schema) or {}).get("properties")
            for name in match[kind]:
                if props is not None and name not in props:
                    found.append(f"match.{kind}.{name}: not a field of {op.id}'s request")
    pinned = (match.get("json") or {}).get("stream") if isinstance(match.get("json"), dict) else None
    if pinned is not None and contract.status < 400 and bool(pinned) != contract.streams:
        found.append(f"match.json.stream: pins {pinned!r} but the response is "
                     f"{'a stream' if contract.streams else 'not a stream'}")
    if match and not found:
        asked = contract.recorded_request()
        route = index.route(asked.method, asked.path)
        ok, reason = satisfied(match, asked, route[1] if route else {})
        if not ok:
            found.append(f"match: does not hold for the exchange's own request ({reason})")
    return found


def contract_problems(contract: Contract, spec: Spec, conformance: Conformance, index: ContractIndex) -> list[str]:
    found = conformance.problems(contract)
    try:
        op = spec.operation(contract.operation)
    except KeyError:
        return [f"{contract.where}: operation: {p}" for p in found]
    found += match_problems(op, contract, spec, index)
    return [f"{contract.where}: {p}" for p in found]


def check_directory(directory: Path | str, spec: Spec, conformance: Conformance | None = None) -> list[Contract]:
    """Every contract of ``directory`` if all of them can be used as written, else ``ContractError`` listing
    every problem of every file (how it is written, then what the spec says of what could be read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ContractError([f"{directory}: no such contracts directory"])
    contracts, problems = [], []
    for path in fileformat.contract_files(directory):
        found, file_problems = fileformat.read_file(path)
        contracts += found
        problems += file_problems
    conformance = conformance or Conformance(spec)
    index = ContractIndex(spec, ())
    problems += [p for contract in contracts for p in contract_problems(contract, spec, conformance, index)]
    if problems:
        raise ContractError(problems)
    return contracts


def drift(directory: Path | str, spec: Spec) -> list[str]:
    """Operations that have contracts in ``directory`` but are no longer in the spec (``make spec`` prints them)."""
    known = {op.id for op in spec.operations}
    found = []
    for path in fileformat.contract_files(Path(directory)):
        contracts, _ = fileformat.read_file(path)
        found += sorted({f"{path.name}: operation {c.operation} is no longer in openapi.yaml"
                         for c in contracts if c.operation not in known})
    return found
