"""Generic answers follow the request; matched and recorded exchanges are served as written."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest

from sidecar.contracts.checking import check_directory
from sidecar.contracts.fileformat import Asked, ContractError
from sidecar.contracts.responder import Responder, instance

from ..conftest import ROOT

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "minLength": 2},
                                            "unit": {"enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "unit"], "additionalProperties": False}
ORDER = {"type": "object", "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"},
                                                                              "qty": {"type": "integer", "minimum": 1}}}},
         "properties": {"lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 2},
                        "note": {"anyOf": [{"type": "null"}, {"type": "string", "format": "email"}]}}}


@pytest.fixture
def replay(make_app):
    return make_app(upstream_mode="replay", contracts_dir=ROOT / "contracts", mistral_api_key=None).test_client()


def _chat(**extra):
    return {"model": "mistral-large-latest", "messages": [{"role": "user", "content": "Weather in Lyon?"}], **extra}


@pytest.mark.parametrize("schema", [WEATHER, ORDER, {"type": "array", "items": {"type": "number"}, "minItems": 3}])
def test_instances_validate_against_their_schema(schema):
    assert jsonschema_rs.validator_for(schema).is_valid(instance(schema))


@pytest.mark.parametrize("choice, called", [("any", "get_weather_v2"), ("auto", "get_weather_v2"),
                                            ({"type": "function", "function": {"name": "get_order"}}, "get_order")])
def test_a_tool_request_gets_a_call_of_the_chosen_tool_with_fitting_arguments(replay, choice, called):
    tools = [{"type": "function", "function": {"name": "get_weather_v2", "parameters": WEATHER}},
             {"type": "function", "function": {"name": "get_order", "parameters": ORDER}}]
    answer = replay.post("/v1/chat/completions", json=_chat(tools=tools, tool_choice=choice)).json
    call = answer["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == called and answer["choices"][0]["finish_reason"] == "tool_calls"
    schema = WEATHER if called == "get_weather_v2" else ORDER
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(call["function"]["arguments"]))
    assert answer["model"] == "mistral-large-latest"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] > 0


def test_a_streamed_tool_request_streams_the_call(replay):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": WEATHER}}]
    raw = replay.post("/v1/chat/completions", json=_chat(tools=tools, stream=True)).data
    chunks = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and raw.endswith(b"data: [DONE]\n\n")


def test_json_schema_response_format_gets_content_that_validates(replay):
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}
    content = replay.post("/v1/chat/completions", json=_chat(response_format=fmt)).json["choices"][0]["message"]["content"]
    assert jsonschema_rs.validator_for(ORDER).is_valid(json.loads(content))


def test_a_client_schema_whose_refs_loop_or_name_nothing_still_gets_an_answer(replay):
    """A client's ``$ref`` is followed leniently and a bounded number of times (one naming itself hung the worker)."""
    schema = {"type": "object", "$defs": {"loop": {"$ref": "#/$defs/loop"}},
              "properties": {"a": {"anyOf": [{"$ref": "#/$defs/loop"}, {"type": "null"}]},
                             "b": {"$ref": "#/$defs/missing"}, "c": {"allOf": [{"$ref": "#/properties/0"}]}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "odd", "schema": schema}}
    response = replay.post("/v1/chat/completions", json=_chat(response_format=fmt))
    assert response.status_code == 200
    assert set(json.loads(response.json["choices"][0]["message"]["content"])) == {"a", "b", "c"}


def test_ids_differ_per_request_yet_repeat_run_after_run(replay, make_app):
    first = [replay.post("/v1/chat/completions", json=_chat()).json for _ in range(2)]
    assert first[0]["id"] != first[1]["id"] and first[0]["created"] != first[1]["created"]
    again = make_app(upstream_mode="replay", contracts_dir=ROOT / "contracts", mistral_api_key=None).test_client()
    assert [again.post("/v1/chat/completions", json=_chat()).json["id"] for _ in range(2)] == [a["id"] for a in first]


def test_get_by_id_answers_with_the_id_asked_for_and_embeddings_the_dimension(replay):
    file_id = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"  # file ids are UUIDs in the spec
    assert replay.get(f"/v1/files/{file_id}").json["id"] == file_id
    assert replay.get("/v1/models/ft:open-mistral-7b:xyz").json["id"] == "ft:open-mistral-7b:xyz"
    body = replay.post("/v1/embeddings", json={"model": "mistral-embed", "input": ["a", "bb", "ccc"],
                                               "output_dimension": 32}).json
    assert [len(d["embedding"]) for d in body["data"]] == [32, 32, 32] and [d["index"] for d in body["data"]] == [0, 1, 2]


def test_matched_and_recorded_exchanges_are_served_as_written(replay):
    asked = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "I am going to Paris, what should I see?"}]}
    answer = replay.post("/v1/chat/completions", json=asked).json  # recorded for exactly this request
    assert answer["id"] == "cmpl-3f1d7e2a9b6c4d58a0e1f2b3c4d5e6f7" and answer["usage"]["total_tokens"] == 53
    responder = Responder()
    assert responder.fit_json([1, 2], Asked("GET", "/v1/x"), {}) == [1, 2]


# -- contracts checked when loaded ------------------------------------------------------------------------

BAD = {
    "macth.yaml": ("operation: chat_completion_v1_chat_completions_post\nexchanges:\n- name: typo\n  macth: {json: {model: x}}\n"
                   "  request: {method: POST, path: /v1/chat/completions}\n  response: {status: 200, json: {}}\n",
                   "macth.yaml, exchange 'typo': unknown key 'macth' (did you mean 'match'?)"),
    "op.yaml": ("operation: chat_completions_v2\nexchanges:\n- name: lost\n  request: {method: GET, path: /v1/x}\n"
                "  response: {status: 200}\n", "op.yaml, exchange 'lost': operation: operation chat_completions_v2 is not in openapi.yaml"),
    "never.yaml": ("operation: files_api_routes_retrieve_file\nexchanges:\n- name: never\n  match: {path: {fileid: abc}}\n"
                   "  request: {method: GET, path: /v1/files/abc}\n  response: {status: 200, json: {id: abc, object: file,"
                   " bytes: 1, created_at: 1, filename: a, purpose: ocr, sample_type: ocr_input, source: upload, deleted: false}}\n",
                   "never.yaml, exchange 'never': match.path.fileid: files_api_routes_retrieve_file has no path parameter 'fileid'"),
    "shape.yaml": ("operation: embeddings_v1_embeddings_post\nexchanges:\n- name: bad body\n  request: {method: POST, path: /v1/embeddings,"
                   " json: {model: m, input: x}}\n  response: {status: 200, json: {id: e, object: list, model: m, data: not a list,"
                   " usage: {prompt_tokens: 1, total_tokens: 1}}}\n", "shape.yaml, exchange 'bad body': response: "),
}


def test_every_problem_of_a_directory_is_named_by_file_exchange_and_key(tmp_path):
    spec_path = ROOT / "openapi.yaml"
    from sidecar.core.spec import Spec
    spec = Spec.load(spec_path)
    for name, (text, _) in BAD.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ContractError) as caught:
        check_directory(tmp_path, spec)
    for _, expected in BAD.values():
        assert any(p.startswith(expected) for p in caught.value.problems), (expected, caught.value.problems)
    with pytest.raises(ContractError, match="no such contracts directory"):
        check_directory(tmp_path / "missing", spec)


def test_the_cli_check_exits_1_on_a_problem_and_0_on_the_shipped_contracts(tmp_path, capsys):
    from sidecar.cli import main
    (tmp_path / "macth.yaml").write_text(BAD["macth.yaml"][0])
    assert main(["contracts", "check", str(tmp_path)]) == 1
    assert "unknown key 'macth'" in capsys.readouterr().err
    assert main(["contracts", "check", str(ROOT / "contracts")]) == 0
