"""Deployments of one model and which to try first: LiteLLM's ``router_settings``, cooldowns, rpm/tpm headroom.

Pure (no Flask, no requests). ``Balancer`` keeps, per deployment and per process, the cooldown end,
recent failures, requests in flight and the last minute's requests and tokens; ``order`` turns a
model's deployments into the order to try them. Time comes from the injected ``clock`` (monotonic).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from sidecar.clock import SYSTEM, Clock

STRATEGIES = ("simple-shuffle", "least-busy", "usage-based-routing", "usage-based-routing-v2")
ROUTER_KEYS = frozenset({"routing_strategy", "num_retries", "allowed_fails", "cooldown_time", "fallbacks"})
WINDOW = 60.0  # seconds: rpm/tpm and allowed_fails count over the last minute, as LiteLLM does
MAX_COOLDOWN = 3600.0  # a Retry-After beyond an hour is an upstream's mistake, not a plan


@dataclass(frozen=True)
class RouterSettings:
    """``router_settings`` (and the same keys under ``litellm_settings``)."""

    routing_strategy: str = "simple-shuffle"
    num_retries: int | None = None  # extra deployments tried per model; None: every deployment once
    allowed_fails: int = 0  # failures (5xx, connection) per minute tolerated before a cooldown
    cooldown_time: float = 5.0  # seconds, when the upstream names no Retry-After
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """A deployment's own ``rpm``/``tpm`` (its key's rate limits), ``weight`` and ``order``."""

    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    order: int | None = None


def parse_router_settings(reader, root: Mapping) -> RouterSettings:
    """Read both sections (``router_settings`` wins); ``reader`` is config's ``_Reader``."""
    merged: dict = {}
    for section in ("litellm_settings", "router_settings"):
        node = reader.mapping(root.get(section), section)
        for key, value in node.items():
            if key in ROUTER_KEYS:
                merged[key] = (section, value)
            else:
                reader.warnings.append(f"{reader.path}: {section}.{key}: not used by mistral-sidecar, ignored")
    values: dict = {}
    if "routing_strategy" in merged:
        section, value = merged["routing_strategy"]
        if value not in STRATEGIES:
            raise reader.fail(f"{section}.routing_strategy", f"{value!r} is not supported (use one of {', '.join(STRATEGIES)})")
        values["routing_strategy"] = value
    for key, kind in (("num_retries", int), ("allowed_fails", int), ("cooldown_time", float)):
        if key in merged:
            section, value = merged[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    kind is int and value != int(value)):
                raise reader.fail(f"{section}.{key}", f"must be a non-negative {'integer' if kind is int else 'number'}")
            values[key] = kind(value)
    if "fallbacks" in merged:
        values["fallbacks"] = _fallbacks(reader, *merged["fallbacks"])
    return RouterSettings(**values)


def _fallbacks(reader, section: str, node) -> Mapping[str, tuple[str, ...]]:
    """``[{"mistral-large": ["mistral-medium"]}, ...]`` (LiteLLM's list of one-key mappings)."""
    where = f"{section}.fallbacks"
    if not isinstance(node, list):
        raise reader.fail(where, 'must be a list like [{"mistral-large": ["mistral-medium"]}]')
    found: dict[str, tuple[str, ...]] = {}
    for i, item in enumerate(node):
        if not isinstance(item, Mapping) or not item:
            raise reader.fail(f"{where}[{i}]", 'must be a mapping like {"mistral-large": ["mistral-medium"]}')
        for model, targets in item.items():
            targets = [targets] if isinstance(targets, str) else targets
            if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
                raise reader.fail(f"{where}[{i}].{model}", "must be a list of model names")
            found[str(model)] = tuple(targets)
    return MappingProxyType(found)


class _Health:
    __slots__ = ("cool_until", "fails", "in_flight", "requests")

    def __init__(self) -> None:
        self.cool_until = 0.0
        self.fails: collections.deque = collections.deque()  # monotonic times of recent failures
        self.in_flight = 0
        self.requests: collections.deque = collections.deque()  # (monotonic time, tokens) of the last minute


class Balancer:
    """What this process knows of each deployment's health and load, keyed by deployment name."""

    def __init__(self, settings: RouterSettings | None = None, *, clock: Clock = SYSTEM, rng=random.random):
        self.settings = settings or RouterSettings()
        self.clock = clock
        self.rng = rng
        self._health: dict[str, _Health] = collections.defaultdict(_Health)

    # -- what happened --------------------------------------------------------------------------------
    def started(self, deployment) -> None:
        """An attempt begins; the minute's requests are kept only where limits or the strategy read them."""
        health = self._health[deployment.name]
        health.in_flight += 1
        limits: Limits = deployment.limits
        if limits.rpm is not None or limits.tpm is not None or self.settings.routing_strategy.startswith("usage"):
            self.used(deployment.name)  # drops what left the window
            health.requests.append([self.clock.monotonic(), 0])

    def finished(self, name: str, tokens: int = 0) -> None:
        """The answer is complete: one fewer in flight, its tokens count against the deployment's tpm."""
        health = self._health[name]
        health.in_flight = max(0, health.in_flight - 1)
        if tokens and health.requests:
            health.requests[-1][1] += tokens

    def failed(self, name: str, *, rate_limited: bool, retry_after: float | None = None) -> float:
        """Count a failure; returns the seconds the deployment now cools down (0: not cooled)."""
        now = self.clock.monotonic()
        health = self._health[name]
        if rate_limited:  # a 429 is the upstream saying "not now": believe it at once
            wait = self.settings.cooldown_time if retry_after is None else min(max(retry_after, 0.0), MAX_COOLDOWN)
        else:
            health.fails.append(now)
            while health.fails and health.fails[0] <= now - WINDOW:
                health.fails.popleft()
            if len(health.fails) <= self.settings.allowed_fails:
                return 0.0
            health.fails.clear()
            wait = self.settings.cooldown_time
        health.cool_until = max(health.cool_until, now + wait)
        return wait

    # -- what to try ----------------------------------------------------------------------------------
    def cooling(self, name: str) -> float:
        """Seconds left of this deployment's cooldown (0 when it may be tried)."""
        return max(0.0, self._health[name].cool_until - self.clock.monotonic())

    def used(self, name: str) -> tuple[int, int]:
        """Requests and tokens of the last minute."""
        health = self._health[name]
        cutoff = self.clock.monotonic() - WINDOW
        while health.requests and health.requests[0][0] <= cutoff:
            health.requests.popleft()
        return len(health.requests), sum(tokens for _t, tokens in health.requests)

    def order(self, deployments: Sequence) -> list:
        """Deployments not cooling down, in the order to try them: by ``order``, then by strategy;
        within an order, those with rpm/tpm headroom left come before those that used theirs up."""
        ready = [d for d in deployments if self.cooling(d.name) == 0.0]
        ranked = []
        for level in sorted({_level(d) for d in ready}):
            same = [d for d in ready if _level(d) == level]
            fresh = [d for d in same if self._headroom(d) > 0]
            spent = [d for d in same if self._headroom(d) <= 0]
            ranked += self._by_strategy(fresh) + self._by_strategy(spent)
        return ranked

    def soonest(self, deployments: Sequence):
        """The cooling deployment that recovers first: tried when nothing else is left."""
        return min(deployments, key=lambda d: self.cooling(d.name), default=None)

    def _headroom(self, deployment) -> float:
        """The smaller fraction of the minute's rpm and tpm still unused (1.0 without limits)."""
        limits: Limits = deployment.limits
        if limits.rpm is None and limits.tpm is None:
            return 1.0
        requests, tokens = self.used(deployment.name)
        left = []
        if limits.rpm is not None:
            left.append((limits.rpm - requests) / limits.rpm if limits.rpm else 0.0)
        if limits.tpm is not None:
            left.append((limits.tpm - tokens) / limits.tpm if limits.tpm else 0.0)
        return min(left)

    def _by_strategy(self, deployments: list) -> list:
        if len(deployments) < 2:
            return deployments
        strategy = self.settings.routing_strategy
        if strategy == "least-busy":
            return sorted(deployments, key=lambda d: (self._health[d.name].in_flight, self.rng()))
        if strategy.startswith("usage-based-routing"):
            return sorted(deployments, key=lambda d: (-self._headroom(d), self.used(d.name)[1], self.rng()))
        return self._shuffle(deployments)

    def _shuffle(self, deployments: list) -> list:
        """simple-shuffle: a weighted draw without replacement. Weights are ``weight`` when given,
        else the rpm (then tpm) headroom left this minute, so a pool of keys fills evenly."""
        def weight(d) -> float:
            limits: Limits = d.limits
            if limits.weight is not None:
                return max(limits.weight, 0.0)
            requests, tokens = self.used(d.name)
            if limits.rpm is not None:
                return max(limits.rpm - requests, 0)
            if limits.tpm is not None:
                return max(limits.tpm - tokens, 0)
            return 1.0
        # Efraimidis-Spirakis: sort by u ** (1 / w); a zero weight goes last.
        keyed = [((self.rng() ** (1.0 / w)) if (w := weight(d)) > 0 else -1.0, d) for d in deployments]
        return [d for _key, d in sorted(keyed, key=lambda pair: -pair[0])]


def _level(deployment) -> float:
    order = deployment.limits.order
    return float("inf") if order is None else order
