"""A LiteLLM-style ``config.yaml`` read once at start-up into frozen data.

Pure (no Flask, no requests). ``load(path, env)`` takes the environment as a mapping so that
``settings.py`` stays the only reader of ``os.environ``. Values written ``os.environ/NAME`` are
filled from that mapping and treated as secrets: they never appear in reprs, warnings or errors.
Unknown keys are warned about (LiteLLM configs carry many we do not need), never fatal: the warnings are
collected in ``Config.warnings`` for the start-up summary to print once, not logged by every worker that loads
the file. Upstream keys are needed only when calls go upstream, so ``upstream_keys=False`` (replay mode) lets
their ``os.environ/NAME`` be unset.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

import yaml

from sidecar.core.deployments import Limits, RouterSettings, parse_router_settings

ENV_REF = re.compile(r"os\.environ/([A-Za-z_][A-Za-z0-9_]*)")

# provider prefix of litellm_params.model -> (default api_base or None for the sidecar's default, key variable)
PROVIDERS: Mapping[str, tuple[str | None, str]] = MappingProxyType({
    "mistral": (None, "MISTRAL_API_KEY"),
    "codestral": ("https://codestral.mistral.ai", "CODESTRAL_API_KEY"),
    "text-completion-codestral": ("https://codestral.mistral.ai", "CODESTRAL_API_KEY"),
})
# Mistral models on the clouds: reached only through a model_list entry (their credentials live there).
# provider -> {litellm_params key: environment fallback}
CLOUDS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "azure_ai": MappingProxyType({"api_key": ("AZURE_AI_API_KEY",), "api_base": ("AZURE_AI_API_BASE",),
                                  "api_version": ()}),
    "vertex_ai": MappingProxyType({"vertex_project": ("VERTEXAI_PROJECT",), "vertex_location": ("VERTEXAI_LOCATION",),
                                   "vertex_credentials": ("VERTEXAI_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS"),
                                   "api_base": ()}),
    "bedrock": MappingProxyType({
        "aws_access_key_id": ("AWS_ACCESS_KEY_ID",), "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "aws_session_token": ("AWS_SESSION_TOKEN",),
        "aws_region_name": ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION"),
        "aws_bedrock_runtime_endpoint": ("AWS_BEDROCK_RUNTIME_ENDPOINT",)}),
})
CLOUD_SECRETS = frozenset({"api_key", "vertex_credentials", "aws_secret_access_key", "aws_session_token"})
CLOUD_REQUIRED = MappingProxyType({"azure_ai": ("api_base", "api_key"), "vertex_ai": ("vertex_project", "vertex_credentials"),
                                   "bedrock": ("aws_access_key_id", "aws_secret_access_key", "aws_region_name")})
PRICE_KEYS = frozenset({
    "input_cost_per_token", "output_cost_per_token", "input_cost_per_page", "output_cost_per_page",
    "input_cost_per_second", "output_cost_per_second", "input_cost_per_character", "output_cost_per_character",
    "cache_read_input_token_cost", "ocr_cost_per_page", "annotation_cost_per_page",
})
TOP_KEYS = frozenset({"model_list", "general_settings", "litellm_settings", "router_settings", "environment_variables"})
PARAM_KEYS = (frozenset({"model", "api_key", "api_base", "rpm", "tpm", "weight", "order", "timeout", "max_retries"})
              | PRICE_KEYS | frozenset(k for keys in CLOUDS.values() for k in keys))
MODEL_KEYS = frozenset({"model_name", "litellm_params", "model_info"})
GENERAL_KEYS = frozenset({"master_key", "database_url", "pass_through_endpoints"})
# A pass-through header whose name says it carries a credential is a secret even when written literally;
# others (content-type, accept) are not, or scrubbing would rewrite every answer that echoes them.
# Values filled from os.environ/NAME are secrets whatever the header.
CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|signature|cookie|password", re.I)
PASS_KEYS = frozenset({"path", "target", "headers", "forward_headers", "include_subpath", "auth"})


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class ModelEntry:
    """One ``model_list`` entry: a deployment of the alias clients send, and where it really goes."""

    alias: str
    provider: str
    model: str  # the upstream model name, without the provider prefix
    api_key: str | None = field(default=None, repr=False)
    api_base: str | None = None  # None: the sidecar's default Mistral base
    prices: Mapping[str, float] = field(default_factory=dict)
    name: str = ""  # the deployment's name in logs, metrics and spend records (see _name_deployments)
    limits: Limits = Limits()
    cloud: Mapping[str, str] = field(default_factory=dict, repr=False)  # CLOUDS params, secrets included


@dataclass(frozen=True)
class PassThroughEndpoint:
    """A ``general_settings.pass_through_endpoints`` entry: a local path relayed to a fixed target URL."""

    path: str
    target: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    forward_headers: bool = False
    include_subpath: bool = False
    auth: bool = True


@dataclass(frozen=True)
class Config:
    path: Path
    models: tuple[ModelEntry, ...] = ()
    master_key: str | None = field(default=None, repr=False)
    database_url: str | None = field(default=None, repr=False)
    pass_through: tuple[PassThroughEndpoint, ...] = ()
    router: RouterSettings = RouterSettings()
    warnings: tuple[str, ...] = ()
    provider_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # e.g. codestral: CODESTRAL_API_KEY
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def model_prices(self) -> Mapping[str, Mapping[str, float]]:
        """Per-deployment price overrides from ``model_info`` / ``litellm_params`` (for the price table);
        a model with one deployment is named by its alias."""
        return MappingProxyType({m.name: m.prices for m in self.models if m.prices})

    def secrets(self) -> tuple[str, ...]:
        return tuple(sorted(self.secret_values))


class _Reader:
    """Walks the parsed YAML, collecting warnings and secrets; every error names file and key."""

    def __init__(self, path: Path, env: Mapping[str, str], upstream_keys: bool = True):
        self.path = path
        self.env = env
        self.upstream_keys = upstream_keys
        self.warnings: list[str] = []
        self.secrets: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}")

    def warn_unknown(self, node: Mapping, known: frozenset[str], where: str) -> None:
        for key in node:
            if key not in known:
                self.warnings.append(f"{self.path}: {where}{key}: unknown key, ignored")

    def mapping(self, node, key: str) -> Mapping:
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise self.fail(key, f"must be a mapping, got {type(node).__name__}")
        return node

    def string(self, node, key: str, *, required: bool = False, secret: bool = False,
               upstream: bool = False) -> str | None:
        if node is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if isinstance(node, bool) or not isinstance(node, (str, int, float)):
            raise self.fail(key, f"must be a string, got {type(node).__name__}")
        return self.substitute(str(node), key, secret=secret, upstream=upstream)

    def substitute(self, value: str, key: str, *, secret: bool = False, upstream: bool = False) -> str:
        """Fill ``os.environ/NAME`` references; what they bring in is a secret. An unset upstream credential
        is an error only when calls go upstream (``upstream_keys``); otherwise it stays empty."""
        def fill(match: re.Match) -> str:
            name = match.group(1)
            found = self.env.get(name)
            if found in (None, "") and upstream and not self.upstream_keys:
                return ""
            if found in (None, ""):
                raise self.fail(key, f"environment variable {name} is not set")
            self.secrets.add(found)
            return found
        filled = ENV_REF.sub(fill, value)
        if secret and filled:
            self.secrets.add(filled)
        return filled

    def flag(self, node, key: str, default: bool) -> bool:
        if node is None:
            return default
        if isinstance(node, bool):
            return node
        if isinstance(node, str) and node.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return node.strip().lower() in ("true", "yes", "1")
        raise self.fail(key, f"must be true or false, got {node!r}")

    def url(self, node, key: str, *, required: bool = False) -> str | None:
        value = self.string(node, key, required=required)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.fail(key, "must be an http(s) URL")
        return value.rstrip("/")


def _prices(reader: _Reader, *sources: tuple[Mapping, str]) -> dict[str, float]:
    prices: dict[str, float] = {}
    for node, where in sources:
        for name in PRICE_KEYS & set(node):
            value = node[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise reader.fail(f"{where}.{name}", f"must be a non-negative number, got {value!r}")
            prices[name] = float(value)
    return prices


def _number(reader: _Reader, node, key: str, kind=int):
    if node is None:
        return None
    if isinstance(node, bool) or not isinstance(node, (int, float)) or node < 0 or (kind is int and node != int(node)):
        raise reader.fail(key, f"must be a non-negative {'integer' if kind is int else 'number'}, got {node!r}")
    return kind(node)


def _cloud(reader: _Reader, provider: str, params: Mapping, where: str) -> dict[str, str]:
    """A cloud deployment's parameters, each from litellm_params or else its environment variables."""
    found: dict[str, str] = {}
    for key, variables in CLOUDS[provider].items():
        value = params.get(key)
        if key == "vertex_credentials" and isinstance(value, Mapping):  # the service account inline, as YAML
            value = json.dumps(dict(value))
        value = reader.string(value, f"{where}.{key}", secret=key in CLOUD_SECRETS)
        for variable in variables if value is None else ():
            value = reader.env.get(variable) or None
            if value is not None:
                if key in CLOUD_SECRETS:
                    reader.secrets.add(value)
                break
        if value is not None:
            found[key] = value
    missing = [key for key in CLOUD_REQUIRED[provider] if key not in found]
    if missing:
        hint = " or ".join(CLOUDS[provider][missing[0]]) or "litellm_params"
        raise reader.fail(f"{where}.{missing[0]}", f"is required for {provider} (or set {hint})")
    for key in ("api_base", "aws_bedrock_runtime_endpoint"):
        if key in found:
            found[key] = reader.url(found[key], f"{where}.{key}")
    return found


def _model(reader: _Reader, node, index: int) -> ModelEntry:
    where = f"model_list[{index}]"
    node = reader.mapping(node, where)
    reader.warn_unknown(node, MODEL_KEYS, f"{where}.")
    alias = reader.string(node.get("model_name"), f"{where}.model_name", required=True)
    params = reader.mapping(node.get("litellm_params"), f"{where}.litellm_params")
    reader.warn_unknown(params, PARAM_KEYS, f"{where}.litellm_params.")
    info = reader.mapping(node.get("model_info"), f"{where}.model_info")
    full = reader.string(params.get("model"), f"{where}.litellm_params.model", required=True)
    provider, slash, name = full.partition("/")
    if not slash or not name:
        provider, name = "mistral", full
    if provider not in PROVIDERS and provider not in CLOUDS:
        raise reader.fail(f"{where}.litellm_params.model",
                          f"provider '{provider}' is not served here (use one of {', '.join([*PROVIDERS, *CLOUDS])})")
    p = f"{where}.litellm_params"
    limits = Limits(rpm=_number(reader, params.get("rpm"), f"{p}.rpm"), tpm=_number(reader, params.get("tpm"), f"{p}.tpm"),
                    weight=_number(reader, params.get("weight"), f"{p}.weight", float),
                    order=_number(reader, params.get("order"), f"{p}.order"))
    prices = _prices(reader, (params, p), (info, f"{where}.model_info"))
    given_id = reader.string(info.get("id"), f"{where}.model_info.id")
    if provider in CLOUDS:
        cloud = _cloud(reader, provider, params, p)
        return ModelEntry(alias, provider, name, cloud.get("api_key"), cloud.get("api_base"),
                          MappingProxyType(prices), given_id or "", limits, MappingProxyType(cloud))
    default_base, key_variable = PROVIDERS[provider]
    api_key = reader.string(params.get("api_key"), f"{p}.api_key", secret=True,
                            upstream=True) or None
    if params.get("api_key") is None and default_base is not None:
        api_key = reader.env.get(key_variable) or None
        if api_key:
            reader.secrets.add(api_key)
        elif reader.upstream_keys:
            reader.warnings.append(f"{reader.path}: {where}.litellm_params.api_key: not set and {key_variable} is "
                                   f"not set either: calls to {alias!r} will reach {default_base} without a key")
    base = reader.url(params.get("api_base"), f"{p}.api_base") or default_base
    return ModelEntry(alias, provider, name, api_key, base, MappingProxyType(prices), given_id or "", limits)


def _name_deployments(reader: _Reader, models: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
    """Each deployment's name: its ``model_info.id``, else the alias when the alias has one
    deployment, else ``alias#n`` in file order. Names are label values: few, stable, no secrets."""
    counts = collections.Counter(m.alias for m in models)
    seen: collections.Counter = collections.Counter()
    named = []
    for entry in models:
        seen[entry.alias] += 1
        name = entry.name or (entry.alias if counts[entry.alias] == 1 else f"{entry.alias}#{seen[entry.alias]}")
        named.append(replace(entry, name=name))
    names = [m.name for m in named]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise reader.fail("model_list", f"deployment name {duplicated[0]!r} is used twice (model_info.id must be unique)")
    return tuple(named)


def _pass_through(reader: _Reader, node, index: int) -> PassThroughEndpoint:
    where = f"general_settings.pass_through_endpoints[{index}]"
    node = reader.mapping(node, where)
    reader.warn_unknown(node, PASS_KEYS, f"{where}.")
    path = reader.string(node.get("path"), f"{where}.path", required=True)
    if not path.startswith("/") or "<" in path or "{" in path or ".." in path.split("/"):
        raise reader.fail(f"{where}.path", "must be a plain absolute path such as /mistral/v1/ocr")
    target = reader.url(node.get("target"), f"{where}.target", required=True)
    headers = reader.mapping(node.get("headers"), f"{where}.headers")
    pairs = tuple((str(name), reader.string(value, f"{where}.headers.{name}", required=True,
                                            secret=bool(CREDENTIAL_HEADER.search(str(name))), upstream=True))
                  for name, value in headers.items())
    return PassThroughEndpoint(
        path=path.rstrip("/") or "/",
        target=target,
        headers=pairs,
        forward_headers=reader.flag(node.get("forward_headers"), f"{where}.forward_headers", False),
        include_subpath=reader.flag(node.get("include_subpath"), f"{where}.include_subpath", False),
        auth=reader.flag(node.get("auth"), f"{where}.auth", True),
    )


def load(path: Path | str, env: Mapping[str, str], *, upstream_keys: bool = True) -> Config:
    """Read and check ``path``; raises ``ConfigError`` naming the file, the key and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {type(exc).__name__}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse(document, path, env, upstream_keys=upstream_keys)


def parse(document, path: Path, env: Mapping[str, str], *, upstream_keys: bool = True) -> Config:
    reader = _Reader(path, env, upstream_keys)
    root = reader.mapping(document, "(top level)")
    reader.warn_unknown(root, TOP_KEYS, "")
    extra_env = reader.mapping(root.get("environment_variables"), "environment_variables")
    if extra_env:
        reader.env = {**{str(k): str(v) for k, v in extra_env.items()}, **env}
    models_node = root.get("model_list") or []
    if not isinstance(models_node, list):
        raise reader.fail("model_list", "must be a list")
    models = _name_deployments(reader, tuple(_model(reader, node, i) for i, node in enumerate(models_node)))
    general = reader.mapping(root.get("general_settings"), "general_settings")
    reader.warn_unknown(general, GENERAL_KEYS, "general_settings.")
    router = parse_router_settings(reader, root)  # fallbacks may name models outside model_list, as requests may
    endpoints_node = general.get("pass_through_endpoints") or []
    if not isinstance(endpoints_node, list):
        raise reader.fail("general_settings.pass_through_endpoints", "must be a list")
    endpoints = tuple(_pass_through(reader, node, i) for i, node in enumerate(endpoints_node))
    paths = [e.path for e in endpoints]
    if len(set(paths)) != len(paths):
        raise reader.fail("general_settings.pass_through_endpoints", "the same path is listed twice")
    provider_keys = {name: reader.env[variable] for name, (base, variable) in PROVIDERS.items()
                     if base is not None and reader.env.get(variable)}
    reader.secrets.update(provider_keys.values())
    return Config(
        path=path,
        models=models,
        master_key=reader.string(general.get("master_key"), "general_settings.master_key", secret=True),
        database_url=reader.string(general.get("database_url"), "general_settings.database_url", secret=True),
        pass_through=endpoints,
        router=router,
        warnings=tuple(reader.warnings),
        provider_keys=MappingProxyType(provider_keys),
        secret_values=frozenset(reader.secrets),
    )
