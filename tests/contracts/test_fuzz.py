"""Schemathesis over every operation of openapi.yaml, in-process against the sidecar in replay mode.

Each operation is its own test (``test_every_operation[POST /v1/chat/completions]``), with positive and
negative cases generated the same way every run; ``SIDECAR_FUZZ_EXAMPLES=N`` raises the fuzzing examples.
"""

from __future__ import annotations

import io
import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test  # 4.x internals: see schemathesis_test()
from schemathesis.python._constants.orchestrator import make_constants_value_source

from sidecar.core import dialect
from sidecar.core.spec import Spec
from sidecar.core.sse import EventSplitter, parse_event
from sidecar.settings import Settings

from ..apps import build_app
from ..conftest import ROOT

MASTER_KEY = "sk-fuzz-master-0123456789"
EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "3"))
CHECKS = [getattr(checks, name) for name in ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                                             "response_schema_conformance", "negative_data_rejection")]
SPEC = Spec.load(ROOT / "openapi.yaml")
# A `#stream` twin shares its URL with the plain operation, and the body picks which one answers: a request that
# breaks the twin's schema by leaving out `stream: true` is a valid request for the plain operation, which answers
# it. So twins get positive cases only; the plain operation at the same URL takes the negative ones.
STREAM_TWINS = [op.id for op in SPEC.operations if op.stream_twin]
CONFIG = SchemathesisConfig.from_dict({
    "seed": 20251125,
    "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": True,
                   "database": "none"},
    "output": {"sanitization": {"enabled": False}},  # the keys are the test's own; show every value sent
    "auth": {"openapi": {"ApiKey": {"bearer": MASTER_KEY}, "AdminApiKey": {"bearer": MASTER_KEY},
                         "DashboardUserContextAuth": {"api_key": MASTER_KEY}}},
    "operations": [{"include-operation-id": STREAM_TWINS, "generation": {"mode": "positive"}}],
})

SCHEMA = schemathesis.openapi.from_path(ROOT / "openapi.yaml", config=CONFIG)
OPERATIONS_BY_ID = {op.definition.raw["operationId"]: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
# label ("POST /v1/chat/completions") -> operationId, in spec order: the test ids
OPERATIONS = {op.label: op_id for op_id, op in OPERATIONS_BY_ID.items()}

# The unprefixed routes also take OpenAI's fields for these operations (dialect.py: a function without
# parameters, max_completion_tokens, ...), on purpose; the spec describes the native pass-through under /mistral.
BASE_URLS = dict.fromkeys(dialect.STEPS, "http://localhost/mistral")
# Multipart text fields reach the server as text, so schemathesis' type mutations can be valid requests: an object
# as an item of context_bias (strings without commas or spaces) arrives as the text "{}", which Mistral and the
# sidecar rightly accept. test_form_fields_are_checked_like_query_values makes this check by hand instead.
UNCHECKED = {"audio_api_v1_transcriptions_post": {"negative_data_rejection"}}


@schemathesis.deserializer("text/event-stream")
def events_as_the_spec_reads_them(ctx, response):
    """Mistral's spec (Speakeasy's convention, as sidecar/conformance.py reads it) describes an event with its
    ``data`` already parsed from JSON, and the ``[DONE]`` terminator is no event: read a stream the same way."""
    splitter = EventSplitter()
    blocks = [*splitter.feed(response.content), *filter(None, [splitter.close()])]
    return [_event(parse_event(raw)) for raw in blocks if parse_event(raw).data not in ("", "[DONE]")]


def _event(event) -> dict:
    try:
        data = json.loads(event.data)
    except ValueError:
        data = event.data
    found = {"event": event.event, "data": data, "id": event.id}
    return {k: v for k, v in found.items() if v is not None or k == "data"}


@pytest.fixture(scope="module")
def replay_app(tmp_path_factory):
    """The sidecar answering from the shipped contracts, behind a master key."""
    return build_app(Settings(spec_path=ROOT / "openapi.yaml", upstream_mode="replay",
                               contracts_dir=ROOT / "contracts", master_key=MASTER_KEY,
                               database_url=f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'sidecar.db'}"))


def call_and_validate(case, app, base_url, unchecked):
    case.call_and_validate(app=app, base_url=base_url, checks=[c for c in CHECKS if c.__name__ not in unchecked])


FEEDBACK = FeedbackSources(constants_value_source=make_constants_value_source(SCHEMA))


def schemathesis_test(operation_id: str):
    """The schemathesis test of one operation (examples, coverage and fuzzing phases), built from the one schema:
    what ``@schema.parametrize()`` builds per operation, without building the other 298 in each worker."""
    return build_operation_test(config=SCHEMA.config, operation=OPERATIONS_BY_ID[operation_id],
                                test_func=call_and_validate, given_kwargs={}, feedback=FEEDBACK,
                                explicit_settings=settings(suppress_health_check=list(HealthCheck)))


@pytest.mark.parametrize("operation_id", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_every_operation(operation_id, replay_app):
    # schemathesis' own @schema.parametrize() items all share one node id under pytest 9.2 (ids now come from
    # the callspec), so each operation is parametrized here, by its label, and runs its own schemathesis test.
    schemathesis_test(operation_id)(app=replay_app, base_url=BASE_URLS.get(operation_id, "http://localhost"),
                                    unchecked=UNCHECKED.get(operation_id, set()))


def test_every_operation_of_the_spec_is_fuzzed():
    assert len(OPERATIONS) == len(SPEC.operations)
    assert sorted(OPERATIONS.values()) == sorted(op.id for op in SPEC.operations)


def test_form_fields_are_checked_like_query_values(replay_app):
    client = replay_app.test_client()
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}

    def transcribe(granularity):
        form = {"model": "voxtral-mini-2507", "file": (io.BytesIO(b"RIFF"), "a.wav"), "timestamp_granularities": granularity}
        return client.post("/v1/audio/transcriptions", headers=headers, data=form)

    refused = transcribe("AAA")
    assert refused.status_code == 422 and refused.json["detail"][0]["loc"][:2] == ["body", "timestamp_granularities"]
    assert transcribe("segment").status_code == 200
