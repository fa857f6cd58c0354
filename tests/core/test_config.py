"""config.yaml: the seeds' LiteLLM configs load unchanged; bad ones fail naming file, key and problem."""

from __future__ import annotations

import logging

import pytest

from sidecar.core.config import ConfigError, load
from sidecar.core.router import ModelRouter, Target
from sidecar.settings import Settings

from ..conftest import ROOT

CONFIGS = ROOT / "tests" / "configs"
ENV = {"MISTRAL_API_KEY": "sk-mistral-secret-1", "CODESTRAL_API_KEY": "sk-codestral-secret-2",
       "LITELLM_MASTER_KEY": "sk-master-secret-3"}


@pytest.mark.parametrize("name", ["provider_page.yaml", "proxy_tutorial.yaml", "ocr_passthrough.yaml",
                                  "codestral.yaml"])
def test_the_seed_configs_load_unchanged(name):
    config = load(CONFIGS / name, ENV)
    assert config.path.name == name
    assert not any("secret" in w for w in config.warnings)


def test_model_list_becomes_aliases_with_environment_keys():
    config = load(CONFIGS / "proxy_tutorial.yaml", ENV)
    assert [(m.alias, m.provider, m.model) for m in config.models] == [
        ("mistral-small-latest", "mistral", "mistral-small-latest"), ("mistral-nemo", "mistral", "open-mistral-nemo")]
    assert config.models[0].api_key == "sk-mistral-secret-1"
    assert config.models[0].api_base is None  # the sidecar's own Mistral base
    assert "sk-mistral-secret-1" not in repr(config)


def test_codestral_gets_its_own_endpoint_key_and_prices():
    config = load(CONFIGS / "codestral.yaml", ENV)
    codestral = config.models[0]
    assert codestral.api_base == "https://codestral.mistral.ai"
    assert codestral.api_key == "sk-codestral-secret-2"
    assert config.model_prices["codestral"] == {"input_cost_per_token": 3e-7, "output_cost_per_token": 9e-7}
    assert config.master_key == "sk-master-secret-3"
    assert config.database_url == "sqlite:///spend.db"


def test_unknown_keys_warn_instead_of_crashing(caplog):
    with caplog.at_level(logging.DEBUG):
        config = load(CONFIGS / "codestral.yaml", ENV)
    assert any("general_settings.alerting: unknown key" in w for w in config.warnings)
    assert any("litellm_settings" in w for w in config.warnings)
    # Collected, not logged: every worker loads the file, and the start-up summary prints them once.
    assert "alerting" not in caplog.text


def test_upstream_keys_may_be_unset_in_replay_but_not_the_master_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: a\n    litellm_params: {model: mistral/x, api_key: os.environ/NOPE}\n"
                    "general_settings:\n  master_key: os.environ/NOPE_MASTER\n  pass_through_endpoints:\n"
                    "    - {path: /x, target: 'https://a', headers: {Authorization: 'Bearer os.environ/NOPE'}}\n")
    with pytest.raises(ConfigError, match="NOPE is not set"):
        load(path, {"NOPE_MASTER": "sk-m"})
    config = load(path, {"NOPE_MASTER": "sk-m"}, upstream_keys=False)
    assert config.models[0].api_key is None and config.master_key == "sk-m"
    with pytest.raises(ConfigError, match="NOPE_MASTER is not set"):
        load(path, {}, upstream_keys=False)


def test_a_codestral_model_without_any_key_is_warned_about_where_calls_go_upstream(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: code\n    litellm_params: {model: codestral/codestral-latest}\n")
    assert any("CODESTRAL_API_KEY is not set" in w for w in load(path, {}).warnings)
    assert load(path, {"CODESTRAL_API_KEY": "sk-c"}).warnings == ()
    assert load(path, {}, upstream_keys=False).warnings == ()


def test_pass_through_headers_fill_environment_references_inside_values():
    endpoint = load(CONFIGS / "ocr_passthrough.yaml", ENV).pass_through[0]
    assert endpoint.path == "/mistral/v1/ocr" and endpoint.target == "https://api.mistral.ai/v1/ocr"
    assert dict(endpoint.headers)["Authorization"] == "bearer sk-mistral-secret-1"
    assert endpoint.forward_headers is True and endpoint.auth is True and endpoint.include_subpath is False
    assert "sk-mistral-secret-1" not in repr(endpoint)


@pytest.mark.parametrize("text, key, problem", [
    ("model_list: {a: 1}", "model_list", "must be a list"),
    ("model_list:\n  - litellm_params: {model: mistral/x}", "model_list[0].model_name", "is required"),
    ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/gpt-4o}", "model_list[0].litellm_params.model",
     "provider 'openai' is not served here"),
    ("model_list:\n  - model_name: a\n    litellm_params: {model: mistral/x, api_key: os.environ/NOPE_KEY}",
     "model_list[0].litellm_params.api_key", "environment variable NOPE_KEY is not set"),
    ("model_list:\n  - model_name: a\n    litellm_params: {model: mistral/x}\n    model_info: {input_cost_per_token: -1}",
     "model_list[0].model_info.input_cost_per_token", "non-negative number"),
    ("general_settings:\n  pass_through_endpoints:\n    - {path: /x, target: 'ftp://a'}",
     "general_settings.pass_through_endpoints[0].target", "http(s) URL"),
    ("general_settings:\n  pass_through_endpoints:\n    - {path: /x, target: 'https://a', forward_headers: maybe}",
     "general_settings.pass_through_endpoints[0].forward_headers", "true or false"),
    ("model_list: [\n", "not valid YAML at line", ""),
])
def test_a_bad_config_names_the_file_the_key_and_the_problem(tmp_path, text, key, problem):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(path, ENV)
    message = str(error.value)
    assert str(path) in message and key in message and problem in message


def test_errors_never_print_secret_values(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: a\n    litellm_params:\n      model: mistral/x\n"
                    "      api_key: os.environ/MISTRAL_API_KEY\n      api_base: os.environ/MISTRAL_API_KEY\n")
    with pytest.raises(ConfigError) as error:
        load(path, ENV)
    assert "api_base" in str(error.value) and "sk-mistral-secret-1" not in str(error.value)


def test_settings_take_master_key_and_database_from_the_config_unless_the_environment_sets_them():
    env = {**ENV, "SIDECAR_CONFIG": str(CONFIGS / "codestral.yaml")}
    settings = Settings.from_env(env)
    assert settings.master_key == "sk-master-secret-3" and settings.config.models[0].alias == "codestral"
    assert "sk-codestral-secret-2" in settings.secrets()
    assert Settings.from_env({**env, "SIDECAR_MASTER_KEY": "sk-env"}).master_key == "sk-env"


def test_the_router_resolves_aliases_provider_prefixes_and_passes_unknown_models():
    default = Target("http://mistral.local", "sk-default")
    router = ModelRouter.from_config(load(CONFIGS / "codestral.yaml", ENV), default)
    def resolve(model):
        (deployment, upstream_model), = router.plan(model)
        return deployment.target, upstream_model
    target, model = resolve("codestral")
    assert (target.base_url, target.api_key, model) == ("https://codestral.mistral.ai", "sk-codestral-secret-2",
                                                        "codestral-latest")
    assert resolve("small") == (default, "mistral-small-latest")
    assert resolve("mistral/mistral-large-latest") == (default, "mistral-large-latest")
    assert resolve("codestral/codestral-2508")[0].base_url == "https://codestral.mistral.ai"
    assert resolve("open-mistral-7b") == (default, "open-mistral-7b")
