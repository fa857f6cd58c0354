"""What one admission asks of the shared counters, and what a dead worker leaves behind.

An admission is written where the limits live (the limits file, or Redis) before a request of a
virtual key is forwarded: it reserves the request's worst-case cost and tokens, holds its parallel
slot while in flight, and stays until the request's spend record is committed. A worker that dies
leaves its admissions behind; the sweep claims them and records them at their estimated cost.
"""

from __future__ import annotations

from dataclasses import dataclass

EPSILON = 1e-12  # float sums of costs: 0.1 + 0.2 must still fit a budget of 0.3


@dataclass(slots=True)
class Ask:
    """One request's admission: its reservation and the key's limits, checked in one transaction."""

    id: str
    key: str
    owner: str
    cost: float  # reserved USD: the prompt estimate plus the output reserve at the model's prices
    tokens: int  # reserved tokens against tpm_limit
    record: str  # JSON: what the sweep needs to write this request's spend record
    budget: float | None = None
    committed: float = 0.0  # the key's committed spend this period, as read from the store
    epoch: int | None = None  # the key's epoch when ``committed`` was read
    tpm: int | None = None
    parallel: int | None = None
    rpm: int | None = None

    @property
    def limited(self) -> bool:
        """Whether anything about this key must be counted where every worker sees it."""
        return not (self.budget is None and self.tpm is None and self.parallel is None and self.rpm is None)

    def fits_budget(self, spend: float) -> bool:
        """Spend plus every reservation plus this one within the budget (and nothing left: refused)."""
        return spend < self.budget - EPSILON and spend + self.cost <= self.budget + EPSILON

    def fits_tpm(self, used: int) -> bool:
        """Within the minute's tokens; a request larger than the whole limit passes only alone."""
        return used < self.tpm and (used + self.tokens <= self.tpm or used == 0)


@dataclass(frozen=True, slots=True)
class Orphan:
    """An admission whose worker died before its spend record was committed."""

    id: str
    key: str
    amount: float  # the settled cost, or the reservation if it never settled
    tokens: int
    settled: bool
    record: str
