"""GET /health answers like LiteLLM's model health route, from the sidecar's settings, never by calling Mistral."""

from __future__ import annotations

from sidecar.core.config import load

from ..conftest import MISTRAL_KEY

MASTER = "sk-health-master-0123456789"
CONFIG = ("model_list:\n"
          "  - model_name: small\n    litellm_params: {model: mistral/mistral-small-latest}\n"
          "  - model_name: code\n    litellm_params: {model: codestral/codestral-latest, api_key: os.environ/CODE_KEY}\n"
          "  - model_name: code-nokey\n    litellm_params: {model: codestral/codestral-2508}\n")


def _config(tmp_path, env, **kwargs):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return load(path, env, **kwargs)


def test_each_configured_model_is_healthy_when_the_sidecar_holds_its_key(make_app, fake, tmp_path):
    client = make_app(config=_config(tmp_path, {"CODE_KEY": "sk-code-secret"})).test_client()
    answer = client.get("/health")
    assert answer.status_code == 200
    health = answer.get_json()
    assert [e["model_name"] for e in health["healthy_endpoints"]] == ["*", "small", "code"]
    assert health["healthy_endpoints"][2] == {"model": "codestral/codestral-latest", "model_name": "code",
                                              "api_base": "https://codestral.mistral.ai"}
    (unhealthy,) = health["unhealthy_endpoints"]
    assert unhealthy["model_name"] == "code-nokey" and "CODESTRAL_API_KEY" in unhealthy["error"]
    assert (health["healthy_count"], health["unhealthy_count"]) == (3, 1)
    assert "sk-code-secret" not in answer.get_data(as_text=True) and MISTRAL_KEY not in answer.get_data(as_text=True)
    assert fake.seen == []  # decided locally: nothing went upstream


def test_without_the_mistral_key_the_default_endpoint_is_unhealthy(make_app):
    health = make_app(mistral_api_key=None).test_client().get("/health").get_json()
    assert health["healthy_count"] == 0 and health["unhealthy_endpoints"][0]["error"] == "no key: set MISTRAL_API_KEY"


def test_in_replay_every_endpoint_is_healthy_without_keys(make_app, tmp_path):
    config = _config(tmp_path, {}, upstream_keys=False)
    health = make_app(upstream_mode="replay", mistral_api_key=None, config=config).test_client().get("/health").get_json()
    assert health["unhealthy_count"] == 0 and health["healthy_count"] == 4 and "replay" in health["checked"]


def test_health_needs_a_key_when_the_sidecar_has_a_master_key(make_app):
    client = make_app(master_key=MASTER).test_client()
    assert client.get("/health").status_code == 401
    assert client.get("/health", headers={"Authorization": "Bearer sk-not-a-key"}).status_code == 401
    assert client.get("/health", headers={"Authorization": f"Bearer {MASTER}"}).status_code == 200
    assert client.get("/health/liveliness").status_code == 200  # the probes stay open
