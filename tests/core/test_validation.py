"""Query parameters validated as the spec declares them, before anything is forwarded."""

import pytest
from werkzeug.datastructures import MultiDict

from sidecar import shipped
from sidecar.core.errors import InvalidRequest
from sidecar.core.validation import load_compiled


@pytest.fixture(scope="module")
def validators():
    return load_compiled(shipped.path("openapi.yaml"))[1]


def test_an_object_query_parameter_is_read_exploded_and_each_property_checked(validators):
    """``GET /v1/connectors?active=...``: ``query_filters`` is an object sent in OpenAPI's default form
    style, so ``active`` arrives as its own key and must be a boolean."""
    check = validators["connector_list_v1"].check_params
    check({}, MultiDict({"active": "true"}))
    check({}, MultiDict({"page_size": "5"}))
    with pytest.raises(InvalidRequest) as refused:
        check({}, MultiDict({"active": "maybe"}))
    assert refused.value.detail[0]["loc"] == ["query", "query_filters", "active"]


def test_operations_with_one_schema_share_its_compiled_validator_and_judge_alike(validators):
    """Identical schemas are compiled once (the master holds every validator, and each worker counts it)."""
    moderations, classifications = (validators[op] for op in ("moderations_v1_moderations_post",
                                                              "classifications_v1_classifications_post"))
    assert moderations._body_validator is classifications._body_validator
    assert validators["chat_completion_v1_chat_completions_post"]._body_validator is not moderations._body_validator
    for validator in (moderations, classifications):
        validator.check_body({"model": "mistral-moderation-latest", "input": "hi"})
        with pytest.raises(InvalidRequest):
            validator.check_body({"model": 42, "input": "hi"})
