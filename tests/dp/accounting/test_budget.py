"""Budgets: validation, refusal before a round, delta versus silo size, federation ceiling."""

from __future__ import annotations

import math

import pytest

from dp.accounting import (
    BudgetLedger,
    MechanismStep,
    PrivacyBudget,
    RdpAccountant,
    check_ceiling,
    recompute_epsilon,
)
from dp.errors import BudgetExceeded, InvalidPrivacyParameters

STEP = MechanismStep(noise_multiplier=1.0, sample_rate=0.1, steps=50)


@pytest.mark.parametrize(
    ("epsilon", "delta"),
    [
        (0.0, 1e-5),
        (-1.0, 1e-5),
        (math.inf, 1e-5),
        (math.nan, 1e-5),
        (1.0, 0.0),
        (1.0, 1.0),
        (1.0, math.nan),
        (True, 1e-5),
        ("1", 1e-5),
    ],
)
def test_budget_validates(epsilon: float, delta: float) -> None:
    with pytest.raises(InvalidPrivacyParameters):
        PrivacyBudget(epsilon=epsilon, delta=delta)


def test_budget_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        PrivacyBudget(1.0, 1e-5)  # type: ignore[call-arg]
    budget = PrivacyBudget(epsilon=1, delta=1e-5)
    assert budget.epsilon == 1.0
    assert isinstance(budget.epsilon, float)
    with pytest.raises(AttributeError):
        budget.epsilon = 2.0  # type: ignore[misc]


def test_delta_must_be_below_one_over_records() -> None:
    with pytest.raises(InvalidPrivacyParameters, match="1/records"):
        BudgetLedger(budget=PrivacyBudget(epsilon=1.0, delta=1e-3), records=1000)
    BudgetLedger(budget=PrivacyBudget(epsilon=1.0, delta=1e-3), records=999)


def test_ledger_refuses_the_round_that_would_exceed_the_budget() -> None:
    one_round = recompute_epsilon([STEP], 1e-5)
    two_rounds = recompute_epsilon([STEP, STEP], 1e-5)
    budget = PrivacyBudget(epsilon=(one_round + two_rounds) / 2, delta=1e-5)
    ledger = BudgetLedger(budget=budget, records=10_000)
    assert ledger.record(STEP) == pytest.approx(one_round)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.check(STEP)
    message = str(refused.value)
    assert f"spent epsilon={one_round:.4f}" in message
    assert f"projected after this round {two_rounds:.4f}" in message
    assert f"budget epsilon={budget.epsilon:.4f}" in message
    # The refusal recorded nothing.
    assert ledger.accountant.history == (STEP,)
    assert ledger.remaining() == pytest.approx(budget.epsilon - one_round)


def test_ledger_refuses_to_load_a_history_already_over_budget() -> None:
    accountant = RdpAccountant(history=[STEP] * 5)
    with pytest.raises(BudgetExceeded, match="already spent"):
        BudgetLedger(
            budget=PrivacyBudget(epsilon=0.5, delta=1e-5), records=100, accountant=accountant
        )


def test_federation_ceiling() -> None:
    history = [STEP, STEP]
    spent = recompute_epsilon(history, 1e-5)
    ceiling = PrivacyBudget(epsilon=spent + 1e-6, delta=1e-5)
    assert check_ceiling(ceiling=ceiling, history=history, delta=1e-5) == pytest.approx(spent)
    with pytest.raises(BudgetExceeded, match="federation ceiling"):
        check_ceiling(ceiling=ceiling, history=history, delta=1e-5, next_step=STEP)
    with pytest.raises(BudgetExceeded, match="delta"):
        check_ceiling(ceiling=ceiling, history=history, delta=1e-4)
