"""Several deployments per model: config as LiteLLM writes it, and the order a pool is tried in."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from sidecar.core.config import ConfigError, load, parse
from sidecar.core.deployments import Balancer, Limits, RouterSettings
from sidecar.core.router import Deployment, ModelRouter, Target

from ..conftest import ROOT

CONFIGS = ROOT / "tests" / "configs"
ENV = {"MISTRAL_API_KEY": "sk-mistral-secret-1", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
       "AWS_SECRET_ACCESS_KEY": "aws-secret-from-the-environment", "AWS_REGION_NAME": "eu-west-3"}
POOL = """
model_list:
  - model_name: large
    litellm_params: {model: mistral/mistral-large-latest, api_key: sk-key-one-000000, rpm: 100, order: 1}
  - model_name: large
    litellm_params: {model: mistral/mistral-large-latest, api_key: sk-key-two-000000, tpm: 5000, weight: 2}
    model_info: {id: second-key}
  - model_name: medium
    litellm_params: {model: mistral/mistral-medium-latest}
litellm_settings:
  num_retries: 3
  drop_params: true
router_settings:
  routing_strategy: least-busy
  allowed_fails: 2
  cooldown_time: 30
  fallbacks: [{"large": ["medium"]}]
"""


def config(text: str, env=ENV):
    return parse(yaml.safe_load(text), Path("config.yaml"), env)


def test_seed_004_with_its_bedrock_models_loads_with_the_aws_environment():
    loaded = load(CONFIGS / "bedrock_seed.yaml", ENV)
    bedrock = [m for m in loaded.models if m.provider == "bedrock"]
    assert [(m.alias, m.model) for m in bedrock] == [("mistral-7b", "mistral.mistral-7b-instruct-v0:2"),
                                                      ("mixtral-8x7b", "mistral.mixtral-8x7b-instruct-v0:1")]
    assert bedrock[0].cloud["aws_region_name"] == "eu-west-3"
    assert "aws-secret-from-the-environment" in loaded.secrets()
    assert "aws-secret-from-the-environment" not in repr(loaded)


def test_bedrock_without_credentials_fails_naming_the_key_and_the_variable():
    with pytest.raises(ConfigError, match=r"model_list\[2\]\.litellm_params\.aws_access_key_id: is required for "
                                          r"bedrock \(or set AWS_ACCESS_KEY_ID\)"):
        load(CONFIGS / "bedrock_seed.yaml", {"MISTRAL_API_KEY": "sk-mistral-secret-1"})


def test_repeated_model_names_are_deployments_with_limits_and_router_settings():
    loaded = config(POOL)
    assert [(m.alias, m.name) for m in loaded.models] == [("large", "large#1"), ("large", "second-key"),
                                                           ("medium", "medium")]
    assert loaded.models[0].limits == Limits(rpm=100, order=1)
    assert loaded.models[1].limits == Limits(tpm=5000, weight=2.0)
    assert loaded.router == RouterSettings(routing_strategy="least-busy", num_retries=3, allowed_fails=2,
                                           cooldown_time=30.0, fallbacks={"large": ("medium",)})
    assert any("litellm_settings.drop_params" in w for w in loaded.warnings)


@pytest.mark.parametrize("text, problem", [
    ("router_settings: {routing_strategy: latency-based-routing}", "routing_strategy: 'latency-based-routing' is not supported"),
    ("router_settings: {cooldown_time: -1}", "cooldown_time: must be a non-negative number"),
    ("router_settings: {fallbacks: {large: medium}}", "fallbacks: must be a list"),
    ("model_list: [{model_name: a, litellm_params: {model: mistral/x, rpm: many}}]", "rpm: must be a non-negative integer"),
    ("model_list: [{model_name: a, litellm_params: {model: azure_ai/x, api_key: k}}]", "api_base: is required for azure_ai"),
])
def test_bad_router_settings_fail_naming_the_key(text, problem):
    with pytest.raises(ConfigError, match=problem):
        config(text)


def pool(*limits: Limits) -> list[Deployment]:
    return [Deployment(f"d{i}", "mistral", "m", Target("http://x", f"k{i}"), lim) for i, lim in enumerate(limits)]


def test_a_429_cools_a_deployment_for_its_retry_after_then_it_comes_back(clock):
    balancer = Balancer(RouterSettings(cooldown_time=5), clock=clock)
    a, b = pool(Limits(order=1), Limits(order=2))
    assert balancer.order([a, b]) == [a, b]
    assert balancer.failed("d0", rate_limited=True, retry_after=30) == 30
    assert balancer.order([a, b]) == [b]
    clock.advance(29.9)
    assert balancer.order([a, b]) == [b]
    clock.advance(0.2)
    assert balancer.order([a, b]) == [a, b]


def test_server_errors_cool_down_only_past_allowed_fails_within_a_minute(clock):
    balancer = Balancer(RouterSettings(allowed_fails=1, cooldown_time=5), clock=clock)
    a, = pool(Limits())
    assert balancer.failed("d0", rate_limited=False) == 0
    clock.advance(61)  # the first failure left the window
    assert balancer.failed("d0", rate_limited=False) == 0
    assert balancer.failed("d0", rate_limited=False) == 5
    assert balancer.order([a]) == [] and balancer.soonest([a]) is a


def test_simple_shuffle_spreads_a_key_pool_by_rpm_headroom(clock):
    balancer = Balancer(RouterSettings(), clock=clock, rng=random.Random(7).random)
    small, big = pool(Limits(rpm=10), Limits(rpm=30))
    firsts = [balancer.order([small, big])[0] for _ in range(2000)]
    assert 400 < firsts.count(small) < 600  # a quarter of the headroom, a quarter of the first picks
    for _ in range(10):
        balancer.started(small)  # its ten requests of the minute are used
    assert all(balancer.order([small, big]) == [big, small] for _ in range(50))
    clock.advance(60.1)  # the minute is over: its headroom is back
    assert 400 < [balancer.order([small, big])[0] for _ in range(2000)].count(small) < 600


def test_weights_override_headroom_and_order_comes_first():
    balancer = Balancer(RouterSettings())
    a, b, c = pool(Limits(weight=0), Limits(weight=1), Limits(order=0))
    assert all(balancer.order([a, b, c]) == [c, b, a] for _ in range(50))


def test_least_busy_picks_the_deployment_with_fewest_requests_in_flight():
    balancer = Balancer(RouterSettings(routing_strategy="least-busy"))
    a, b = pool(Limits(), Limits())
    balancer.started(a)
    balancer.started(a)
    balancer.started(b)
    assert balancer.order([a, b]) == [b, a]
    balancer.finished("d0")
    balancer.finished("d0")
    assert balancer.order([a, b]) == [a, b]


def test_the_plan_tries_healthy_deployments_then_fallbacks_and_caps_by_num_retries():
    router = ModelRouter.from_config(config(POOL.replace("num_retries: 3", "num_retries: 0")), Target("http://m"))
    plan = router.plan("large")
    assert [d.name for d, _m in plan] == ["large#1", "medium"]  # order 1 first; one attempt per model
    assert plan[1][1] == "mistral-medium-latest"
    router.balancer.failed("large#1", rate_limited=True, retry_after=60)
    assert [d.name for d, _m in router.plan("large")] == ["second-key", "medium"]
    router.balancer.failed("second-key", rate_limited=True)
    router.balancer.failed("medium", rate_limited=True, retry_after=1)
    assert [d.name for d, _m in router.plan("large")] == ["medium"]  # all cooling: the first to recover


def test_a_cloud_only_alias_plans_nothing_for_an_operation_its_cloud_lacks():
    loaded = load(CONFIGS / "bedrock_seed.yaml", ENV)

    class Chat:
        def supports(self, op):
            return op == "chat"
    router = ModelRouter.from_config(loaded, Target("http://m"), lambda entry: Chat())
    assert router.plan("mistral-7b", lambda d: d.transport is None or d.transport.supports("embeddings")) == []
    (deployment, model), = router.plan("mistral-7b", lambda d: d.transport.supports("chat"))
    assert deployment.priced_as == "bedrock/mistral.mistral-7b-instruct-v0:2"
