"""What one admission asks of the shared counters, the decision on it, and what a dead worker leaves behind.

An admission is written where the limits live (the limits file, or Redis) before a request of a
virtual key is forwarded: it reserves the request's worst-case cost and tokens, holds its parallel
slot while in flight, and stays until the request's spend record is committed. A worker that dies
leaves its admissions behind; the sweep claims them and records them at their estimated cost.

The decision is made here once, as **bounds**: for each counter the request is counted in, the most
that counter may read for the request to be admitted, in the order refusals are told. A store does
only storage steps (``Counters.admit``): read the key's counters and, if none is over its bound, write
the admission, atomically; then ``refusal`` says which limit refused and why. A conditional write, as
SQL's ``UPDATE ... WHERE`` or DynamoDB's condition expressions are: SQLite compares inside its one
transaction, Redis inside its one script, and neither knows the order of the checks, the epsilon or
the rule for a request larger than the whole tpm limit. (Not optimistic versions, read-decide-commit:
a burst of N requests on one key would commit one per round, N rounds for the last of them.)
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

EPSILON = 1e-12  # float sums of costs: 0.1 + 0.2 must still fit a budget of 0.3


class Counter(str, enum.Enum):
    """What a store counts per key; the value names the ``KeyState`` field that holds it."""

    EPOCH = "epoch"  # moves whenever the key's committed spend moves (its records landed, an operator's change)
    HELD = "held"  # USD of the key's admissions not yet recorded: reservations, or settled costs
    TPM = "tpm"  # tokens admitted in the sliding minute
    INFLIGHT = "inflight"  # admissions still answering, of owners still beating
    RPM = "rpm"  # requests admitted in the sliding minute


@dataclass(frozen=True, slots=True)
class Bound:
    """The request is admitted only if ``counter`` reads at most ``most``."""

    counter: Counter
    most: float


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key's counters as a store read them at ``now`` (its own clock); a counter not read stays 0."""

    now: float
    epoch: int = 0
    held: float = 0.0
    tpm: int = 0
    tpm_oldest: float | None = None  # when the oldest entry in the minute was written: it leaves first
    inflight: int = 0
    rpm: int = 0
    rpm_oldest: float | None = None

    def of(self, counter: Counter) -> float:
        return getattr(self, counter.value)


# -- refusals: values with a shape; Limits turns them into Mistral-shaped errors ----------------------
@dataclass(frozen=True, slots=True)
class Stale:
    """The key's records moved since its committed spend was read: read it again, then ask again."""

    epoch: int


@dataclass(frozen=True, slots=True)
class OverBudget:
    spend: float  # committed plus every admission not yet recorded


@dataclass(frozen=True, slots=True)
class OverTpm:
    used: int
    wait: float  # seconds until the oldest tokens leave the minute


@dataclass(frozen=True, slots=True)
class OverParallel:
    pass


@dataclass(frozen=True, slots=True)
class OverRpm:
    wait: float


Refusal = Stale | OverBudget | OverTpm | OverParallel | OverRpm


@dataclass(slots=True)
class Ask:
    """One request's admission: its reservation and the key's limits."""

    id: str
    key: str
    owner: str
    cost: float  # reserved USD: the prompt estimate plus the output reserve at the model's prices
    tokens: int  # reserved tokens against tpm_limit
    record: str  # JSON: what the sweep needs to write this request's spend record
    budget: float | None = None
    committed: float = 0.0  # the key's committed spend this period, as read from the store
    epoch: int | None = None  # the key's epoch when ``committed`` was read; None: take it as it is
    tpm: int | None = None
    parallel: int | None = None
    rpm: int | None = None

    @property
    def limited(self) -> bool:
        """Whether anything about this key must be counted where every worker sees it."""
        return not (self.budget is None and self.tpm is None and self.parallel is None and self.rpm is None)

    def bounds(self) -> tuple[Bound, ...]:
        """The decision: the counters this request is counted in, each with the most it may read."""
        bounds = []
        if self.budget is not None:
            if self.epoch is not None:  # epochs only grow, so "at most the one read" is "still the one read"
                bounds.append(Bound(Counter.EPOCH, self.epoch))
            # Spend plus this reservation within the budget, and something left (spend below the
            # budget) even for a free request; spend is the committed part plus what the store holds.
            room = self.budget - self.committed
            bounds.append(Bound(Counter.HELD, min(room + EPSILON - self.cost, math.nextafter(room - EPSILON, -math.inf))))
        if self.tpm is not None:
            # Within the minute's tokens, and something left; a request larger than the whole limit
            # passes only alone (nothing used), so a limit below one request's tokens is not a wall.
            most = self.tpm - max(self.tokens, 1) if self.tokens <= self.tpm else min(0, self.tpm - 1)
            bounds.append(Bound(Counter.TPM, most))
        if self.parallel is not None:
            bounds.append(Bound(Counter.INFLIGHT, self.parallel - 1))
        if self.rpm is not None:
            bounds.append(Bound(Counter.RPM, self.rpm - 1))
        return tuple(bounds)

    def refusal(self, counter: Counter, state: KeyState, window: float) -> Refusal:
        """Why ``counter`` over its bound refuses this request, with what the answer tells the caller."""
        match counter:
            case Counter.EPOCH:
                return Stale(state.epoch)
            case Counter.HELD:
                return OverBudget(self.committed + state.held)
            case Counter.TPM:
                return OverTpm(state.tpm, _wait(state.tpm_oldest, state.now, window))
            case Counter.INFLIGHT:
                return OverParallel()
            case Counter.RPM:
                return OverRpm(_wait(state.rpm_oldest, state.now, window))
        raise ValueError(f"no refusal for counter {counter!r}")


def decide(ask: Ask, state: KeyState, window: float) -> Refusal | None:
    """None: admitted; else the refusal of the first counter over its bound."""
    for bound in ask.bounds():
        if state.of(bound.counter) > bound.most:
            return ask.refusal(bound.counter, state, window)
    return None


def _wait(oldest: float | None, now: float, window: float) -> float:
    return (oldest + window - now) if oldest is not None else window


@dataclass(frozen=True, slots=True)
class Orphan:
    """An admission whose worker died before its spend record was committed."""

    id: str
    key: str
    amount: float  # the settled cost, or the reservation if it never settled
    tokens: int
    settled: bool
    record: str


log = logging.getLogger("sidecar.access.limits")
_foreign_said: set[str] = set()  # stores whose admissions this process has said it leaves


def of_store(record: str, store: str) -> bool:
    """Whether an admission's record belongs to ``store`` (``limits.store_tag``): a sweep writes what it
    claims into its own spend log, so it must never claim another database's admissions (two sidecars
    on one Redis). A record that names no store (written before stores were named) belongs to any."""
    if not store:
        return True
    try:
        named = json.loads(record).get("store")
    except (ValueError, AttributeError):
        return True
    if named is None or named == store:
        return True
    if named not in _foreign_said:  # once per process and store: a sweep runs every 2 s
        _foreign_said.add(named)
        log.warning("dead workers' admissions of another database's sidecar (store %s; this one is %s) are in "
                    "these shared limits: left for that sidecar's sweep, which records them in its own database. "
                    "If that sidecar is this one under another DATABASE_URL spelling, spell it one way.", named, store)
    return False


class Counters(Protocol):
    """The storage steps of the limits, shared by every worker: ``LocalCounters`` (SQLite, one machine)
    and ``RedisCounters`` (every instance). Each step is atomic where the counters live."""

    errors: tuple[type[BaseException], ...]  # what the store raises when it cannot answer

    def admit(self, ask: Ask, *, window: float) -> Refusal | None:
        """Write the admission if no counter of ``ask.bounds()`` is over its bound; else the refusal."""

    def settle(self, admission: str, cost: float, tokens: int, tpm: bool, window: float) -> None:
        """The answer ended: its real cost and tokens replace the reservation, its slot is free."""

    def free(self, admission: str) -> None:
        """Its answer is over: it holds no parallel slot (its amount still counts)."""

    def recorded(self, admissions: list[str], keys: set[str]) -> None:
        """Their spend records are committed: the admissions go, the keys' epochs move."""

    def bump(self, key: str) -> None:
        """The key's committed spend moved outside the records (an operator's change)."""

    def total(self, name: str, window: float) -> tuple[int, float | None]:
        """A window's total and oldest entry (``rpm:<key>``, ``tpm:<key>``), for ``/key/info``."""

    def beat(self, owner: str, pid: int, host: str, ttl: float) -> None:
        """The owner is alive for ``ttl`` more seconds."""

    def leave(self, owner: str) -> None:
        """The owner exits: what it still holds is swept by the others."""

    def sweep(self, *, host: str, grace: float, alive: Callable[[int], bool], mine: str = "",
              store: str = "") -> list[Orphan]:
        """Claim (delete and return) the admissions of dead owners whose records are ``store``'s (``of_store``)."""
