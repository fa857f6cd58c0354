"""Contracts checked against openapi.yaml, so the spec and the recorded exchanges cannot drift apart.

Used by the test suite and by ``scripts/make_contracts.py``. Requests are checked the way the sidecar
checks them (``validation.py``: ``oneOf`` read as ``anyOf``); responses strictly, ``oneOf`` as written,
because that is how clients and schemathesis read them. Every schema is compiled once, in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import jsonschema_rs

from sidecar.contracts.fileformat import Contract
from sidecar.contracts.matching import ContractIndex
from sidecar.core.errors import InvalidRequest
from sidecar.core.spec import Operation, Spec, resolve
from sidecar.core.validation import compile_validators

_NO_BODY = (None, "")


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _strict(node):
    """A schema tree without the OpenAPI-only ``discriminator`` (``oneOf`` stays exclusive)."""
    if isinstance(node, dict):
        return {k: _strict(v) for k, v in node.items() if k != "discriminator"}
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _responses(doc: dict, op: Operation) -> dict:
    key = op.path + ("#stream" if op.stream_twin else "")
    paths = doc["paths"]
    if key not in paths:  # path keys with other fragments (``#id``, ``#idOrName``)
        key = next(k for k in paths if k.split("#")[0] == op.path and op.method.lower() in paths[k]
                   and paths[k][op.method.lower()].get("operationId") == op.id)
    return paths[key][op.method.lower()].get("responses", {})


def declared(responses: dict, status: int) -> dict | None:
    """The response object a status falls under: exact, then ``4XX``-style range, then ``default``."""
    for key in (str(status), f"{str(status)[0]}XX", "default"):
        if key in responses:
            return responses[key]
    return None


@dataclass
class Conformance:
    """Checks contracts against the spec; ``problems(contract)`` lists what does not conform."""

    spec: Spec

    def __post_init__(self):
        doc = self.spec.document
        self.index = ContractIndex(self.spec, ())
        self.requests = compile_validators(self.spec)
        per_op: dict = {}
        for op in self.spec.operations:
            for status, response in _responses(doc, op).items():
                response = self._resolve(response)
                for ctype, media in (response.get("content") or {}).items():
                    if "schema" in media:
                        per_op.setdefault(op.id, {}).setdefault(str(status), {})[ctype] = media["schema"]
        compiled = jsonschema_rs.validator_map_for(_strict({"components": doc.get("components", {}), "x-ops": per_op}))
        self._compiled = compiled

    def _resolve(self, node: dict) -> dict:
        return resolve(self.spec.document, node)

    def response_validator(self, op_id: str, status_key: str, ctype: str):
        pointer = "/".join(quote(p.replace("~", "~0").replace("/", "~1"), safe="~") for p in (op_id, status_key, ctype))
        return self._compiled.get(f"#/x-ops/{pointer}")

    def problems(self, contract: Contract) -> list[str]:
        try:
            op = self.spec.operation(contract.operation)
        except KeyError:
            return [f"operation {contract.operation} is not in openapi.yaml"]
        if not op.proxied:
            return [f"{op.id} is the sidecar's own route; it needs no contract"]
        return self._request_problems(op, contract) + self._response_problems(op, contract)

    def _request_problems(self, op: Operation, contract: Contract) -> list[str]:
        asked = contract.recorded_request()
        found = self.index.route(asked.method, asked.path)
        if found is None or op.id not in (found[0].endpoint.plain.id, getattr(found[0].endpoint.stream, "id", None)):
            return [f"request {asked.method} {asked.path} is not {op.method} {op.path}"]
        validator = self.requests[op.id]
        try:
            validator.check_params(found[1], _Query(asked.query))
            if op.body_kind == "json" and asked.json is not None:
                validator.check_body(asked.json)
            elif op.body_kind == "json" and op.body_required:
                return ["request: the operation needs a JSON body"]
            elif op.body_kind == "multipart":
                validator.check_parts(set(asked.form))
        except InvalidRequest as error:
            return [f"request: {d['loc']}: {d['msg']}" for d in error.detail]
        return []

    def _response_problems(self, op: Operation, contract: Contract) -> list[str]:
        status = contract.status
        responses = _responses(self.spec.document, op)
        response = declared(responses, status)
        if response is None:
            return [f"response: status {status} is not declared"]
        status_key = next(k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses)
        content = self._resolve(response).get("content") or {}
        ctype = media_type(contract.content_type)
        if not content:
            has_body = contract.streams or any(contract.response.get(k) not in _NO_BODY
                                               for k in ("json", "body", "body_base64"))
            return [f"response: status {status} has no body in the spec"] if has_body else []
        match = next((c for c in content if media_type(c) == ctype), None)
        if match is None:
            return [f"response: content type {ctype or 'none'} is not declared for {status} ({', '.join(content)})"]
        validator = self.response_validator(op.id, status_key, match)
        if validator is None:
            return []
        if contract.streams:
            return self._event_problems(validator, contract)
        if "json" in contract.response:
            return [f"response: {e.instance_path}: {e.message}"[:300]
                    for e in list(validator.iter_errors(contract.response["json"]))[:5]]
        return []

    @staticmethod
    def _event_problems(validator, contract: Contract) -> list[str]:
        found = []
        for i, event in enumerate(contract.response.get("events") or ()):
            if event.get("data") == "[DONE]":
                continue
            instance = {k: event[k] for k in ("event", "data", "id", "retry") if k in event}
            found += [f"event {i}: {e.instance_path}: {e.message}"[:300] for e in list(validator.iter_errors(instance))[:3]]
        return found


class _Query(dict):
    """A name -> values mapping with the ``getlist`` the request validator reads query strings through."""

    def getlist(self, name: str) -> list:
        return self.get(name, [])
