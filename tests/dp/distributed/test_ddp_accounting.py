"""Accounting: Skellam and DDG RDP against the continuous Gaussian, bit-width curve, planning."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from dp.distributed import (
    RDP_ORDERS,
    UNIT_OF_PRIVACY,
    DistributedDPConfig,
    Mechanism,
    ddg_rdp,
    gaussian_rdp,
    plan,
    rdp_to_epsilon,
    skellam_rdp,
)
from dp.errors import BitWidthTooSmall, InvalidPrivacyParameters

DELTA = 1e-5
ISSUE_CASE = {"l2_norm_clip": 1.0, "noise_multiplier": 8.0, "rounds": 50, "n_silos": 10}
DIMENSION = 2**20


def _gaussian_epsilon() -> float:
    return rdp_to_epsilon(50 * gaussian_rdp(noise_multiplier=8.0), delta=DELTA)[0]


def test_gaussian_reference_is_about_4_1() -> None:
    # Published figure for z = 8, 50 compositions, delta = 1e-5 with RDP: about 4.1.
    assert 4.0 < _gaussian_epsilon() < 4.2


def test_balle_conversion_matches_the_formula_by_hand() -> None:
    rdp = 50 * gaussian_rdp(noise_multiplier=8.0)
    by_hand = min(
        r - (math.log(DELTA) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for r, a in zip(rdp, RDP_ORDERS, strict=True)
    )
    assert rdp_to_epsilon(rdp, delta=DELTA)[0] == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("mechanism", ["skellam", "ddg"])
def test_epsilon_at_20_bits_is_within_a_few_percent_of_gaussian(mechanism: Mechanism) -> None:
    config = DistributedDPConfig(mechanism=mechanism, bits=20, **ISSUE_CASE)
    eps = plan(config, DIMENSION).epsilon
    gaussian = _gaussian_epsilon()
    assert gaussian <= eps < 1.03 * gaussian


@pytest.mark.parametrize("mechanism", ["skellam", "ddg"])
def test_epsilon_degrades_as_bits_shrink(
    mechanism: Mechanism, capsys: pytest.CaptureFixture[str]
) -> None:
    curve = {}
    for bits in range(12, 21):
        config = DistributedDPConfig(mechanism=mechanism, bits=bits, **ISSUE_CASE)
        p = plan(config, DIMENSION)
        curve[bits] = p.epsilon
    with capsys.disabled():
        print(
            f"\n{mechanism}: silo-level epsilon (n=10, d=2^20, z=8, 50 rounds, delta=1e-5); "
            f"continuous Gaussian {_gaussian_epsilon():.3f}"
        )
        for bits, eps in curve.items():
            print(f"  bits={bits:2d}  epsilon={eps:9.3f}")
    values = [curve[b] for b in range(12, 21)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert curve[14] > 4 * curve[20]


def test_skellam_rdp_tends_to_gaussian_for_large_variance() -> None:
    v = 1e12
    rdp = skellam_rdp(l2_sensitivity=1e6, l1_sensitivity=1e6 * 1024, variance=v)
    gaussian = gaussian_rdp(noise_multiplier=math.sqrt(v) / 1e6)
    assert np.allclose(rdp, gaussian, rtol=1e-6)
    # The correction term is never negative.
    assert np.all(rdp >= gaussian)


def test_ddg_rdp_with_one_contributor_is_the_gaussian_rdp() -> None:
    rdp = ddg_rdp(
        l2_sensitivity=10.0,
        l1_sensitivity=100.0,
        local_variance=400.0,
        n_contributors=1,
        dimension=100,
    )
    assert np.allclose(rdp, gaussian_rdp(noise_multiplier=2.0))


def test_ddg_tau_penalty_is_visible_for_tiny_noise() -> None:
    small = ddg_rdp(
        l2_sensitivity=1.0,
        l1_sensitivity=1.0,
        local_variance=0.05,
        n_contributors=10,
        dimension=1000,
    )
    gaussian = gaussian_rdp(noise_multiplier=math.sqrt(0.5))
    assert np.all(small > gaussian)


def test_noise_shares_are_sized_for_the_minimum_honest_survivors() -> None:
    base = DistributedDPConfig(**ISSUE_CASE, dropouts_tolerated=2, collusion_bound=1)
    assert base.min_honest == 7
    p = plan(base, 4096)
    assert p.share_variance * 7 == pytest.approx(p.central_variance)
    assert p.central_variance == pytest.approx((8.0 * p.scale) ** 2)
    # The Skellam parameter is the Poisson mean: variance 2 mu per share.
    assert p.share_parameter * 2 == pytest.approx(p.share_variance)


def test_target_epsilon_is_met_and_tight() -> None:
    config = DistributedDPConfig(l2_norm_clip=1.0, target_epsilon=4.0, rounds=50, n_silos=10)
    p = plan(config, DIMENSION)
    assert 3.95 < p.epsilon <= 4.0
    assert p.noise_multiplier > 8.0  # a little more noise than the continuous z=8 for 4.1


def test_unreachable_target_epsilon_raises() -> None:
    config = DistributedDPConfig(
        l2_norm_clip=1.0, target_epsilon=0.5, rounds=50, n_silos=10, bits=10
    )
    with pytest.raises(InvalidPrivacyParameters, match="out of reach"):
        plan(config, DIMENSION)


def test_bit_width_too_small_for_the_cohort_raises() -> None:
    config = DistributedDPConfig(
        l2_norm_clip=1.0, noise_multiplier=1.0, rounds=1, n_silos=200, bits=8
    )
    with pytest.raises(BitWidthTooSmall):
        plan(config, 64)


def test_silo_level_epsilon_is_labelled_and_composes_over_rounds() -> None:
    p = plan(DistributedDPConfig(**ISSUE_CASE), 4096)
    first = p.silo_level_epsilon(rounds=1)
    last = p.silo_level_epsilon(rounds=50)
    assert first.unit_of_privacy == UNIT_OF_PRIVACY
    assert "silo" in first.unit_of_privacy and "per round" in first.unit_of_privacy
    assert first.mechanism == "skellam"
    assert 0 < first.epsilon < last.epsilon
    assert last.epsilon == pytest.approx(p.epsilon)


def test_plan_states_the_wrap_bound_and_probability() -> None:
    p = plan(DistributedDPConfig(**ISSUE_CASE), 4096)
    assert p.sum_bound <= 2 ** (p.bits - 1) - 1
    assert p.wrap_probability_bound == p.config.wrap_probability
    assert p.sum_bound_for(5) < p.sum_bound


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("l2_norm_clip", 0.0),
        ("l2_norm_clip", float("inf")),
        ("noise_multiplier", -1.0),
        ("bits", 7),
        ("bits", 63),
        ("beta", 1.0),
        ("wrap_probability", 0.0),
        ("rounds", 0),
        ("mechanism", "gaussian"),
        ("dropouts_tolerated", 10),
        ("target_delta", 1.0),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    good = DistributedDPConfig(**ISSUE_CASE)
    with pytest.raises(InvalidPrivacyParameters):
        dataclasses.replace(good, **{field: value})


def test_config_needs_exactly_one_of_noise_and_target() -> None:
    with pytest.raises(InvalidPrivacyParameters, match="exactly one"):
        DistributedDPConfig(l2_norm_clip=1.0, rounds=1, n_silos=3)
    with pytest.raises(InvalidPrivacyParameters, match="exactly one"):
        DistributedDPConfig(
            l2_norm_clip=1.0, rounds=1, n_silos=3, noise_multiplier=1.0, target_epsilon=1.0
        )


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        DistributedDPConfig("skellam", 1.0, 1, 3)  # type: ignore[misc]
    config = DistributedDPConfig(**ISSUE_CASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 8  # type: ignore[misc]
