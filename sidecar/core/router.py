"""Model names -> the deployments to try, in order: config aliases (several deployments each, see
``deployments.py``), their fallbacks, LiteLLM-style provider prefixes, else the default target.

The pipeline asks ``plan`` for every request that names a model, on native and OpenAI routes alike;
an unknown model goes to the default target unchanged. Built once from the config's ``model_list``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar.clock import SYSTEM, Clock
from sidecar.core.config import CLOUDS, PROVIDERS, Config, ModelEntry
from sidecar.core.deployments import Balancer, Limits, RouterSettings


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


@dataclass(frozen=True, eq=False)
class Deployment:
    """One way to reach a model: a Mistral key and base, or a cloud deployment (``transport`` sends it)."""

    name: str  # in logs, metrics (label ``deployment``) and spend records
    provider: str  # mistral, codestral, azure_ai, vertex_ai, bedrock
    model: str  # the upstream model name
    target: Target
    limits: Limits = Limits()
    priced_as: str | None = None  # the price table's name for what this deployment bills
    transport: object = field(default=None, repr=False)  # None: Mistral's own API through the upstream client
    entry: ModelEntry | None = field(default=None, repr=False)

    @property
    def cloud(self) -> bool:
        return self.provider in CLOUDS

    def serves(self, op) -> bool:
        """Mistral's API serves every operation; a cloud a few (``CloudTransport.supports``)."""
        return self.transport is None or self.transport.supports(op)


class ModelRouter:
    """Resolves model names to deployments; holds one ``Target`` per distinct (base, key)."""

    def __init__(self, default: Target, groups: dict[str, tuple[Deployment, ...]], providers: dict[str, Deployment],
                 settings: RouterSettings | None = None, *, clock: Clock = SYSTEM):
        self.default = Deployment("default", "mistral", "", default)
        self.groups = MappingProxyType(dict(groups))
        self.providers = MappingProxyType(dict(providers))
        self.settings = settings or RouterSettings()
        self.balancer = Balancer(self.settings, clock=clock)
        self.created = int(clock.wall())

    @classmethod
    def from_config(cls, config: Config | None, default: Target, transport_for: Callable | None = None,
                    *, clock: Clock = SYSTEM) -> ModelRouter:
        """``transport_for(entry)`` builds a cloud entry's transport (the upstream layer owns them)."""
        keys = config.provider_keys if config else {}
        targets: dict[tuple[str, str | None], Target] = {}

        def target(base: str | None, key: str | None) -> Target:
            if base is None or base == default.base_url:
                return default if key in (None, default.api_key) else Target(default.base_url, key)
            return targets.setdefault((base, key), Target(base, key))

        groups: dict[str, list[Deployment]] = {}
        for entry in config.models if config else ():
            if entry.provider in CLOUDS:
                if transport_for is None:
                    raise ValueError(f"{entry.name}: a {entry.provider} deployment needs the cloud transports")
                deployment = Deployment(entry.name, entry.provider, entry.model, Target(entry.api_base or ""),
                                        entry.limits, entry.name if entry.prices else f"{entry.provider}/{entry.model}",
                                        transport_for(entry), entry)
            else:
                deployment = Deployment(entry.name, entry.provider, entry.model, target(entry.api_base, entry.api_key),
                                        entry.limits, entry.name if entry.prices else entry.model, None, entry)
            groups.setdefault(entry.alias, []).append(deployment)
        providers = {name: Deployment(name, name, "", target(base, keys.get(name)))
                     for name, (base, _variable) in PROVIDERS.items()}
        return cls(default, {a: tuple(d) for a, d in groups.items()}, providers,
                   config.router if config else None, clock=clock)

    def candidates(self, model: str) -> list[tuple[Deployment, str]]:
        """Every deployment of ``model`` with the upstream model name each sends, health ignored."""
        group = self.groups.get(model)
        if group is not None:
            return [(d, d.model) for d in group]
        provider, slash, name = model.partition("/")
        if slash and name and provider in self.providers:
            return [(self.providers[provider], name)]
        return [(self.default, model)]

    def plan(self, model: str, supports: Callable[[Deployment], bool] | None = None) -> list[tuple[Deployment, str]]:
        """The (deployment, upstream model) pairs to try for ``model``, in order: its deployments that
        are not cooling down (at most ``1 + num_retries``), then its fallbacks' alike. When every one
        is cooling down, the one that recovers first, alone. Empty when none ``supports`` the operation."""
        fallbacks = self.settings.fallbacks.get(model, ())
        first = self.candidates(model)
        if len(first) == 1 and not fallbacks and (supports is None or supports(first[0][0])):
            return first  # one way to go (the common case): nothing to weigh
        plan: list[tuple[Deployment, str]] = []
        cooling: list[tuple[Deployment, str]] = []
        limit = None if self.settings.num_retries is None else 1 + self.settings.num_retries
        for name in (model, *fallbacks):
            group = [pair for pair in (first if name == model else self.candidates(name))
                     if supports is None or supports(pair[0])]
            models = {id(d): m for d, m in group}
            ready = self.balancer.order([d for d, _m in group])
            plan += [(d, models[id(d)]) for d in ready[:limit]]
            cooling += [pair for pair in group if pair[0] not in ready]
        if not plan and cooling:
            soonest = self.balancer.soonest([d for d, _m in cooling])
            plan = [next(pair for pair in cooling if pair[0] is soonest)]
        return plan

    def settle(self, ex) -> None:
        """Accountant sink: the answering deployment's attempt is over; its tokens count against its tpm."""
        if ex.deployment:
            self.balancer.finished(ex.deployment, ex.usage.total_tokens if ex.usage is not None else 0)

    def deployments(self) -> list[Deployment]:
        return [d for group in self.groups.values() for d in group]

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self.groups)

    def model_cards(self) -> list[dict]:
        """The aliases as OpenAI-compatible model objects (``GET /v1/models`` lists them too)."""
        return [{"id": alias, "object": "model", "created": self.created, "owned_by": "mistral-sidecar",
                 "type": "base", "root": group[0].model}
                for alias, group in self.groups.items()]
