"""RDP accountant: published values, equality with Opacus, persistence, calibration."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from dp.accounting import (
    DEFAULT_ORDERS,
    MechanismStep,
    RdpAccountant,
    calibrate_noise_multiplier,
    epsilon_trajectory,
    recompute_epsilon,
)
from dp.accounting import rdp as rdp_module
from dp.errors import AccountingError, BudgetExceeded, InvalidPrivacyParameters

SIGMAS = [0.6, 0.8, 1.0, 1.3, 2.0, 4.5]
RATES = [0.001, 0.01, 0.05, 0.1, 0.37, 1.0]
DELTAS = [1e-3, 1e-5, 1e-7]


def opacus_epsilon(history: list[MechanismStep], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" is informative
        return float(accountant.get_epsilon(delta=delta))


def test_published_value_q001_sigma1_10k_steps() -> None:
    step = MechanismStep(noise_multiplier=1.0, sample_rate=0.01, steps=10_000)
    epsilon = recompute_epsilon([step], 1e-5)
    print(f"RDP epsilon (q=0.01, sigma=1, 10k steps, delta=1e-5) = {epsilon:.6f}")
    assert epsilon == pytest.approx(6.71, abs=0.005)
    assert epsilon == pytest.approx(opacus_epsilon([step], 1e-5), abs=1e-9)


def test_default_orders_are_opacus_default_alphas() -> None:
    assert list(DEFAULT_ORDERS) == [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(
        st.builds(
            MechanismStep,
            noise_multiplier=st.sampled_from(SIGMAS),
            sample_rate=st.sampled_from(RATES),
            steps=st.integers(min_value=1, max_value=5_000),
        ),
        min_size=1,
        max_size=4,
    ),
    delta=st.sampled_from(DELTAS),
)
def test_cached_running_vector_equals_opacus(history: list[MechanismStep], delta: float) -> None:
    accountant = RdpAccountant()
    for step in history:
        accountant.record(step)
    ours = accountant.epsilon(delta)
    assert ours == pytest.approx(opacus_epsilon(history, delta), abs=1e-9, rel=0)


@settings(max_examples=4, deadline=None)
@given(
    sigma=st.floats(min_value=0.5, max_value=5.0),
    rate=st.floats(min_value=1e-4, max_value=0.5),
    steps=st.integers(min_value=1, max_value=20_000),
)
def test_arbitrary_float_parameters_equal_opacus(sigma: float, rate: float, steps: int) -> None:
    history = [
        MechanismStep(noise_multiplier=sigma, sample_rate=rate, steps=steps),
        MechanismStep(noise_multiplier=1.0, sample_rate=0.01, steps=100),
    ]
    assert recompute_epsilon(history, 1e-5) == pytest.approx(
        opacus_epsilon(history, 1e-5), abs=1e-9, rel=0
    )


@settings(max_examples=25, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.builds(
                MechanismStep,
                noise_multiplier=st.sampled_from(SIGMAS),
                sample_rate=st.sampled_from(RATES),
                steps=st.integers(min_value=1, max_value=5_000),
            ),
            st.sampled_from(DELTAS),
        ),
        max_size=12,
    ),
    block=st.integers(min_value=1, max_value=5),
)
def test_trajectory_equals_the_running_accountant_bit_for_bit(
    rounds: list[tuple[MechanismStep, float]], block: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        # Small blocks exercise the carry from one block to the next.
        patch.setattr(rdp_module, "_TRAJECTORY_BLOCK", block)
        trajectory = epsilon_trajectory([s for s, _ in rounds], [d for _, d in rounds])
    accountant = RdpAccountant()
    expected = []
    for step, delta in rounds:
        accountant.record(step)
        expected.append(accountant.epsilon(delta))
    assert trajectory.tolist() == expected


def test_trajectory_rejects_bad_input() -> None:
    step = MechanismStep(noise_multiplier=1.0, sample_rate=0.01, steps=10)
    with pytest.raises(InvalidPrivacyParameters, match="one delta per round"):
        epsilon_trajectory([step], [])
    with pytest.raises(InvalidPrivacyParameters):
        epsilon_trajectory([step], [1.5])
    with pytest.raises(TypeError, match="MechanismStep"):
        epsilon_trajectory([(1.0, 0.01, 10)], [1e-5])  # type: ignore[list-item]
    assert epsilon_trajectory([], []).shape == (0,)


def test_projection_equals_later_spend_bit_for_bit() -> None:
    accountant = RdpAccountant()
    steps = [MechanismStep(noise_multiplier=1.1, sample_rate=0.2, steps=9) for _ in range(7)]
    projected = accountant.projected_epsilon_many(steps, 1e-5)
    for step in steps:
        accountant.record(step)
    assert accountant.epsilon(1e-5) == projected


def test_projection_does_not_record() -> None:
    accountant = RdpAccountant()
    step = MechanismStep(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    accountant.projected_epsilon(step, 1e-5)
    assert accountant.history == ()
    assert accountant.epsilon(1e-5) == 0.0


def test_json_round_trip_keeps_spend_and_history() -> None:
    accountant = RdpAccountant()
    for sigma, q, n in [(1.0, 0.1, 10), (2.5, 0.05, 300), (1.0, 0.1, 10)]:
        accountant.record(MechanismStep(noise_multiplier=sigma, sample_rate=q, steps=n))
    restored = RdpAccountant.from_json(accountant.to_json())
    assert restored.history == accountant.history
    assert np.array_equal(restored.rdp, accountant.rdp)
    assert restored.epsilon(1e-6) == accountant.epsilon(1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"format": "something-else", "history": [], "orders": [2.0]}',
        '{"format": "secagg.dp.rdp-accountant/v1", "history": {}, "orders": [2.0]}',
    ],
)
def test_from_json_rejects_foreign_state(text: str) -> None:
    with pytest.raises(AccountingError):
        RdpAccountant.from_json(text)


def test_from_json_rejects_invalid_stored_round() -> None:
    bad = (
        '{"format":"secagg.dp.rdp-accountant/v1","orders":[2.0],'
        '"history":[{"noise_multiplier":0.0,"sample_rate":0.1,"steps":1}]}'
    )
    with pytest.raises(InvalidPrivacyParameters):
        RdpAccountant.from_json(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": -1.0, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": math.nan, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": math.inf, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": True, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 2.0},
        {"noise_multiplier": "1", "sample_rate": 0.1, "steps": 1},
    ],
)
def test_mechanism_step_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidPrivacyParameters):
        MechanismStep(**kwargs)  # type: ignore[arg-type]


def test_mechanism_step_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        MechanismStep(1.0, 0.1, 1)  # type: ignore[call-arg]
    step = MechanismStep(noise_multiplier=1, sample_rate=1, steps=1)
    assert isinstance(step.noise_multiplier, float)
    with pytest.raises(AttributeError):
        step.steps = 2  # type: ignore[misc]


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
def test_epsilon_rejects_bad_delta(delta: float) -> None:
    with pytest.raises(InvalidPrivacyParameters):
        RdpAccountant().epsilon(delta)


def test_calibration_is_tight_and_fits_every_planned_round() -> None:
    kwargs = {"target_epsilon": 2.0, "delta": 1e-4, "sample_rate": 0.2, "steps_per_round": 10}
    sigma = calibrate_noise_multiplier(rounds=5, **kwargs)  # type: ignore[arg-type]
    step = MechanismStep(noise_multiplier=sigma, sample_rate=0.2, steps=10)
    accountant = RdpAccountant()
    for _ in range(5):
        assert accountant.projected_epsilon(step, 1e-4) <= 2.0
        accountant.record(step)
    assert accountant.epsilon(1e-4) <= 2.0
    # 0.2% less noise would not fit: the search is tight to its tolerance.
    smaller = MechanismStep(noise_multiplier=sigma * 0.998, sample_rate=0.2, steps=10)
    assert RdpAccountant().projected_epsilon_many([smaller] * 5, 1e-4) > 2.0


def test_calibration_accounts_for_history() -> None:
    spent = [MechanismStep(noise_multiplier=4.0, sample_rate=0.2, steps=10)] * 3
    fresh = calibrate_noise_multiplier(
        target_epsilon=3.0, delta=1e-4, sample_rate=0.2, steps_per_round=10, rounds=2, rel_tol=0.01
    )
    after = calibrate_noise_multiplier(
        target_epsilon=3.0,
        delta=1e-4,
        sample_rate=0.2,
        steps_per_round=10,
        rounds=2,
        history=spent,
        rel_tol=0.01,
    )
    assert after > fresh


def test_calibration_refuses_a_budget_no_noise_can_meet() -> None:
    with pytest.raises(BudgetExceeded, match="cannot pay"):
        calibrate_noise_multiplier(
            target_epsilon=1e-5, delta=1e-6, sample_rate=1.0, steps_per_round=100, rounds=10
        )
