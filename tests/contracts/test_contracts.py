"""Contracts: every proxied operation has one, each conforms to openapi.yaml, and matching picks as documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar.contracts import fileformat as contracts
from sidecar.contracts import scrubbing
from sidecar.contracts.conformance import Conformance
from sidecar.contracts.fileformat import Asked, Contract
from sidecar.contracts.matching import ContractIndex
from sidecar.core.errors import NoContract
from sidecar.core.spec import Spec

from ..conftest import ROOT

CONTRACTS = ROOT / "contracts"
HAND_WRITTEN_CORE = {
    "chat_completion_v1_chat_completions_post", "fim_completion_v1_fim_completions_post",
    "agents_completion_v1_agents_completions_post", "embeddings_v1_embeddings_post", "moderations_v1_moderations_post",
    "chat_moderations_v1_chat_moderations_post", "classifications_v1_classifications_post",
    "chat_classifications_v1_chat_classifications_post", "ocr_v1_ocr_post", "files_api_routes_upload_file",
    "files_api_routes_list_files", "files_api_routes_retrieve_file", "files_api_routes_delete_file",
    "files_api_routes_download_file", "files_api_routes_get_signed_url", "jobs_api_routes_batch_create_batch_job",
    "jobs_api_routes_batch_get_batch_job", "jobs_api_routes_batch_get_batch_jobs", "jobs_api_routes_batch_cancel_batch_job",
    "list_models_v1_models_get", "retrieve_model_v1_models__model_id__get", "delete_model_v1_models__model_id__delete",
    "agents_api_v1_conversations_start", "agents_api_v1_conversations_start_stream", "agents_api_v1_conversations_append",
    "agents_api_v1_conversations_append_stream", "agents_api_v1_conversations_restart",
    "agents_api_v1_conversations_restart_stream", "audio_api_v1_transcriptions_post",
    "audio_api_v1_transcriptions_post_stream", "speech_v1_audio_speech_post",
}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec.load(ROOT / "openapi.yaml")


@pytest.fixture(scope="module")
def on_file() -> list[Contract]:
    return contracts.load_directory(CONTRACTS)


def test_every_proxied_operation_has_a_contract_and_own_routes_have_none(spec, on_file):
    covered = {c.operation for c in on_file}
    proxied = {op.id for op in spec.operations if op.proxied}
    assert proxied - covered == set()
    assert covered - proxied == set()
    assert len(proxied) == 288


def test_every_streaming_operation_has_a_streaming_contract_at_its_endpoint(spec, on_file):
    index = ContractIndex(spec, on_file)
    streaming = [op for op in spec.operations if op.streams]
    assert len(streaming) == 16
    for op in streaming:
        route = next(r for r in index.routes if (r.endpoint.method, r.endpoint.path) == (op.method, op.path))
        assert any(c.contract.streams for c in route.candidates), op.id


def test_core_operations_are_hand_written_with_their_wire_facts(on_file):
    sources = {}
    for c in on_file:
        sources.setdefault(c.operation, set()).add(c.source)
    assert {op for op in HAND_WRITTEN_CORE if sources.get(op) != {"hand-written"}} == set()
    chat = [c for c in on_file if c.operation == "chat_completion_v1_chat_completions_post"]
    stream = next(c for c in chat if c.streams)
    events = stream.response["events"]
    assert events[-1] == {"data": "[DONE]"} and "usage" in events[-2]["data"]
    assert all("event" not in e for e in events)  # data-only SSE
    assert {c.status for c in chat} >= {200, 401, 422, 429}
    conversation = next(c for c in on_file if c.operation == "agents_api_v1_conversations_start_stream")
    assert conversation.response["events"][-1]["event"] == "conversation.response.done"
    ocr = next(c for c in on_file if c.operation == "ocr_v1_ocr_post")
    assert ocr.response["json"]["usage_info"]["pages_processed"] >= 1


def test_every_contract_conforms_to_openapi(spec, on_file):
    checker = Conformance(spec)
    problems = {f"{c.operation}: {c.name}": found for c in on_file if (found := checker.problems(c))}
    assert problems == {}


def test_conformance_catches_drift(spec):
    checker = Conformance(spec)
    good = Contract("embeddings_v1_embeddings_post", "x", "hand-written",
                    {"method": "POST", "path": "/v1/embeddings", "json": {"model": "mistral-embed", "input": "hi"}},
                    {"status": 200, "json": {"id": "e", "object": "list", "model": "m", "data": [],
                                             "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}}})
    assert checker.problems(good) == []
    assert checker.problems(Contract(**{**good.__dict__, "response": {"status": 200, "json": {"id": 1}}}))
    assert checker.problems(Contract(**{**good.__dict__, "response": {"status": 299, "json": {}}}))
    assert checker.problems(Contract(**{**good.__dict__, "request": {"method": "POST", "path": "/v1/embeddings",
                                                                      "json": {"inputs": "hi"}}}))


def test_readme_lists_every_hand_written_contract(on_file):
    readme = (CONTRACTS / "README.md").read_text()
    hand = {c.file.name for c in on_file if c.source == "hand-written"}
    assert {name for name in hand if name not in readme} == set()


def test_generated_contracts_are_what_the_script_makes(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_contracts.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# -- matching, as documented in contracts/README.md ------------------------------------------------------

def _contract(name, json=None, status=200, match=None, events=None, path="/v1/chat/completions"):
    response = {"status": status, **({"events": events} if events else {"json": {"name": name}})}
    return Contract("chat_completion_v1_chat_completions_post", name, "hand-written",
                    {"method": "POST", "path": path, "json": json or {"model": "m", "messages": []}}, response, match)


def _ask(json):
    return Asked("POST", "/v1/chat/completions", json=json)


def test_a_satisfied_match_wins_and_the_more_specific_one_first(spec):
    index = ContractIndex(spec, [
        _contract("plain"),
        _contract("paris", match={"json": {"messages": [{"content": "Paris?"}]}}),
        _contract("paris large", match={"json": {"model": "large", "messages": [{"content": "Paris?"}]}}),
    ])
    assert index.answer(_ask({"model": "m", "messages": [{"role": "user", "content": "Paris?"}]})).contract.name == "paris"
    assert index.answer(_ask({"model": "large", "messages": [{"role": "user", "content": "Paris?"}]})).contract.name == "paris large"
    assert index.answer(_ask({"model": "m", "messages": [{"role": "user", "content": "Rome?"}]})).contract.name == "plain"


def test_stream_flag_must_agree_and_errors_answer_only_when_nothing_better(spec):
    index = ContractIndex(spec, [
        _contract("error", status=429),
        _contract("ok"),
        _contract("streamed", json={"model": "m", "messages": [], "stream": True}, events=[{"data": "[DONE]"}]),
    ])
    assert index.answer(_ask({"model": "x", "messages": []})).contract.name == "ok"
    assert index.answer(_ask({"model": "x", "messages": [], "stream": True})).contract.name == "streamed"
    exact = ContractIndex(spec, [_contract("ok"), _contract("error", json={"model": "bad", "messages": []}, status=400)])
    assert exact.answer(_ask({"model": "bad", "messages": []})).contract.name == "error"  # recorded for exactly this request


def test_no_contract_names_the_closest_exchange_and_the_first_field_that_differs(spec):
    index = ContractIndex(spec, [_contract("only plain")], ROOT / "my-contracts", strict=True)
    with pytest.raises(NoContract) as caught:
        index.answer(_ask({"model": "m", "messages": [], "stream": True}))
    assert caught.value.status == 501
    assert caught.value.message == (
        f"No contract in {ROOT / 'my-contracts'} answers POST /v1/chat/completions "
        "(chat_completion_v1_chat_completions_post). Closest: <memory>, exchange 'only plain': "
        "json.stream: expected not true, got true.")
    with pytest.raises(NoContract, match="none is filed for this operation; add one to .*embeddings_v1_embeddings_post"):
        index.answer(Asked("POST", "/v1/embeddings", json={}))


def test_a_strict_index_answers_only_matches_and_exact_recordings(spec):
    asked = {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    index = ContractIndex(spec, [_contract("recorded", json=asked),
                                 _contract("capital", match={"json": {"messages": [{"content": "Capital?"}]}})],
                          strict=True)
    assert index.answer(_ask(asked)) == (index.contracts[0], "exact")
    with pytest.raises(NoContract) as caught:
        index.answer(_ask({**asked, "messages": [{"role": "user", "content": "what is the capital of france?"}]}))
    assert caught.value.message.endswith("Closest: <memory>, exchange 'recorded': json.messages[0].content: "
                                         "expected 'What is the capital of France?', got 'what is the capital of france?'.")
    with pytest.raises(NoContract, match=r"json.temperature: expected nothing, got 0.5"):
        index.answer(_ask({**asked, "temperature": 0.5}))
    loose = ContractIndex(spec, index.contracts)
    assert loose.answer(_ask({**asked, "temperature": 0.5})).how == "generic"


def test_errors_answer_streaming_requests_too(spec):
    index = ContractIndex(spec, [_contract("limited", status=429, match={"json": {"messages": [{"content": "simulate: 429"}]}})])
    asked = {"model": "m", "messages": [{"role": "user", "content": "simulate: 429"}], "stream": True}
    assert index.answer(_ask(asked)).contract.name == "limited"


def test_literal_paths_are_routed_before_templated_ones(spec):
    index = ContractIndex(spec, ())
    assert index.route("GET", "/v1/agents/pages")[0].endpoint.plain.id == "agents_api_v1_agents_list_pages"
    route, params = index.route("GET", "/v1/files/abc%2Fdef")
    assert route.endpoint.plain.id == "files_api_routes_retrieve_file" and params == {"file_id": "abc/def"}


def test_events_frame_and_unframe_as_on_the_wire():
    event = {"event": "message.output.delta", "data": {"type": "message.output.delta", "content": "é"}}
    raw = contracts.frame(event)
    assert raw == 'event: message.output.delta\ndata: {"type":"message.output.delta","content":"é"}\n\n'.encode()
    assert contracts.unframe(raw.rstrip(b"\n")) == event
    assert contracts.frame({"data": "[DONE]"}) == b"data: [DONE]\n\n"


def test_scrub_removes_secrets_from_keys_values_and_headers():
    secret = "sk-very-secret-123456"
    value = {"a": f"Bearer {secret}", secret: [secret, 1]}
    assert secret not in repr(scrubbing.scrub(value, [secret]))
    assert scrubbing.scrub_headers({"Authorization": "x", "Cookie": "y", "X-Echo": secret}, [secret]) == \
        {"X-Echo": "<scrubbed>"}
