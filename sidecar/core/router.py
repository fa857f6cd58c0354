"""Model aliases -> (upstream ``Target``, upstream model name), built once from the config's ``model_list``.

The pipeline asks ``resolve`` for every request that names a model, on native and OpenAI routes
alike; an unknown model goes to the default target unchanged. A LiteLLM-style provider prefix
(``mistral/x``, ``codestral/x``) is understood even without an alias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar.clock import SYSTEM, Clock
from sidecar.core.config import PROVIDERS, Config


@dataclass(frozen=True)
class Target:
    """Where an operation is sent and with which credentials (per model alias, see config)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)

    def credentials(self, auth: str) -> dict[str, str]:
        if auth == "x-api-key":
            return {"x-api-key": self.api_key} if self.api_key else {}
        key = self.admin_key if auth == "admin" and self.admin_key else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


class ModelRouter:
    """Resolves model names; holds one ``Target`` per distinct (base, key), shared by its aliases."""

    def __init__(self, default: Target, routes: dict[str, tuple[Target, str]], providers: dict[str, Target],
                 clock: Clock = SYSTEM):
        self.default = default
        self.routes = MappingProxyType(dict(routes))
        self.providers = MappingProxyType(dict(providers))
        self.created = int(clock.wall())

    @classmethod
    def from_config(cls, config: Config | None, default: Target, clock: Clock = SYSTEM) -> ModelRouter:
        keys = config.provider_keys if config else {}
        targets: dict[tuple[str, str | None], Target] = {}

        def target(base: str | None, key: str | None) -> Target:
            if base is None or base == default.base_url:
                return default if key in (None, default.api_key) else Target(default.base_url, key)
            return targets.setdefault((base, key), Target(base, key))

        routes = {}
        for entry in config.models if config else ():
            routes[entry.alias] = (target(entry.api_base, entry.api_key), entry.model)
        providers = {name: target(base, keys.get(name)) for name, (base, _variable) in PROVIDERS.items()}
        return cls(default, routes, providers, clock)

    def resolve(self, model: str) -> tuple[Target, str]:
        found = self.routes.get(model)
        if found is not None:
            return found
        provider, slash, name = model.partition("/")
        if slash and name and provider in self.providers:
            return self.providers[provider], name
        return self.default, model

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self.routes)

    def model_cards(self) -> list[dict]:
        """The aliases as OpenAI-compatible model objects (``GET /v1/models`` lists them too)."""
        return [{"id": alias, "object": "model", "created": self.created, "owned_by": "mistral-sidecar",
                 "type": "base", "root": upstream_model}
                for alias, (_target, upstream_model) in self.routes.items()]
