"""The admission decision, without a store: which limit refuses a request, in what order, with what detail.

Both stores only compare the counters they read with ``Ask.bounds()``; these tests hold the bounds to
the rules as a person states them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.access.admission import (
    EPSILON,
    Ask,
    KeyState,
    OverBudget,
    OverParallel,
    OverRpm,
    OverTpm,
    Stale,
    decide,
)

NOW, WINDOW = 1_000.0, 60.0


def _ask(**fields) -> Ask:
    return Ask(id="a", key="k", owner="o", cost=fields.pop("cost", 0.0), tokens=fields.pop("tokens", 0), record="{}",
               **fields)


def test_float_sums_of_costs_fit_a_budget_they_add_up_to():
    assert decide(_ask(budget=0.3, committed=0.1, cost=0.2), KeyState(NOW), WINDOW) is None
    assert decide(_ask(budget=0.3, cost=0.2), KeyState(NOW, held=0.1), WINDOW) is None
    assert decide(_ask(budget=0.3, cost=0.2001), KeyState(NOW, held=0.1), WINDOW) == OverBudget(pytest.approx(0.1))


def test_a_spent_budget_refuses_even_a_free_request():
    assert decide(_ask(budget=1.0, committed=0.2), KeyState(NOW, held=0.8), WINDOW) == OverBudget(pytest.approx(1.0))
    assert decide(_ask(budget=1.0, committed=0.2), KeyState(NOW, held=0.7), WINDOW) is None


@given(budget=st.floats(0, 10), committed=st.floats(0, 10), held=st.floats(0, 10), cost=st.floats(0, 10))
def test_the_budget_bound_is_the_rule_spend_plus_reservation_within_the_budget_and_something_left(
        budget, committed, held, cost):
    spend = committed + held
    rule = spend < budget - EPSILON and spend + cost <= budget + EPSILON
    refusal = decide(_ask(budget=budget, committed=committed, cost=cost), KeyState(NOW, held=held), WINDOW)
    if abs(spend + cost - budget) > 1e-9 and abs(spend - budget) > 1e-9:  # away from the edge, where rounding differs
        assert (refusal is None) == rule


@pytest.mark.parametrize(("tpm", "tokens", "used", "admitted"), [
    (100, 60, 40, True), (100, 60, 41, False),  # within the minute's tokens
    (100, 0, 99, True), (100, 0, 100, False),  # something left, even for a request reserving nothing
    (100, 500, 0, True), (100, 500, 1, False),  # larger than the whole limit: only alone
    (0, 0, 0, False), (0, 5, 0, False),  # a limit of nothing admits nothing
])
def test_the_tpm_bound(tpm, tokens, used, admitted):
    refusal = decide(_ask(tpm=tpm, tokens=tokens), KeyState(NOW, tpm=used, tpm_oldest=NOW - 15), WINDOW)
    assert refusal == (None if admitted else OverTpm(used, 45.0))


def test_parallel_and_rpm_admit_up_to_their_limit_and_say_how_long_to_wait():
    assert decide(_ask(parallel=2), KeyState(NOW, inflight=1), WINDOW) is None
    assert decide(_ask(parallel=2), KeyState(NOW, inflight=2), WINDOW) == OverParallel()
    assert decide(_ask(rpm=5), KeyState(NOW, rpm=4), WINDOW) is None
    assert decide(_ask(rpm=5), KeyState(NOW, rpm=5, rpm_oldest=NOW - 50), WINDOW) == OverRpm(10.0)
    assert decide(_ask(rpm=0), KeyState(NOW), WINDOW) == OverRpm(WINDOW)  # nothing to wait for: a whole minute


def test_refusals_are_told_in_order_stale_budget_tpm_parallel_rpm():
    over_everything = KeyState(NOW, epoch=3, held=2.0, tpm=100, inflight=1, rpm=1)
    limits = {"budget": 1.0, "epoch": 2, "tpm": 100, "parallel": 1, "rpm": 1}
    expected = [Stale(3), OverBudget(2.0), OverTpm(100, WINDOW), OverParallel(), OverRpm(WINDOW)]
    for dropped, refusal in zip(["epoch", "budget", "tpm", "parallel", "rpm"], expected, strict=True):
        assert decide(_ask(**limits), over_everything, WINDOW) == refusal
        limits.pop(dropped)
    assert decide(_ask(**limits), over_everything, WINDOW) is None


def test_a_key_without_a_current_epoch_takes_its_spend_as_it_is():
    assert decide(_ask(budget=1.0, epoch=None), KeyState(NOW, epoch=7), WINDOW) is None
    assert decide(_ask(budget=1.0, epoch=7), KeyState(NOW, epoch=7), WINDOW) is None
