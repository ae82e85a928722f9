"""The plan's digest (what secure aggregation binds into the session) and composition over a silo's releases."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from dp.distributed import RDP_ORDERS, DistributedDPConfig, DistributedDPPlan, plan, rdp_to_epsilon
from dp.errors import InvalidPrivacyParameters

CONFIG = DistributedDPConfig(
    l2_norm_clip=1.0,
    rounds=10,
    n_silos=5,
    noise_multiplier=1.0,
    dropouts_tolerated=1,
    collusion_bound=1,
)


@pytest.fixture(scope="module")
def p() -> DistributedDPPlan:
    return plan(CONFIG, 100)


def test_the_digest_is_a_known_answer(p: DistributedDPPlan) -> None:
    """A regression vector: changing the canonical encoding changes every session id of silo-DP rounds."""
    assert p.digest().hex() == "395894e11e4bc4efd4fcc991e8eda57a41f03464ab8f6f6487e705578722a3df"


def test_the_digest_is_sha256_of_sorted_compact_json_with_exact_floats(
    p: DistributedDPPlan,
) -> None:
    fields = {
        "domain": "dp.distributed/plan/v1",
        "mechanism": "skellam",
        "l2_norm_clip": (1.0).hex(),
        "noise_multiplier": (1.0).hex(),
        "bits": 20,
        "n_silos": 5,
        "dropouts_tolerated": 1,
        "collusion_bound": 1,
        "rounds": 10,
        "target_delta": (1e-5).hex(),
        "rotation": True,
        "beta": CONFIG.beta.hex(),
        "wrap_probability": (1e-9).hex(),
        "guard_bits": 1,
        "dimension": 100,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert p.digest() == hashlib.sha256(canonical).digest()


def test_a_plan_made_from_a_target_epsilon_digests_its_resolved_noise() -> None:
    by_target = plan(
        DistributedDPConfig(l2_norm_clip=1.0, rounds=10, n_silos=5, target_epsilon=5.0), 64
    )
    by_noise = plan(
        DistributedDPConfig(
            l2_norm_clip=1.0, rounds=10, n_silos=5, noise_multiplier=by_target.noise_multiplier
        ),
        64,
    )
    assert by_target.digest() == by_noise.digest()


def test_releases_compose_like_the_planned_rounds(p: DistributedDPPlan) -> None:
    spent = np.zeros(len(RDP_ORDERS))
    for k in range(4):
        after = p.silo_level_epsilon_after(spent_rdp=spent.tolist(), releases=k)
        assert after.rounds == k + 1
        assert after.epsilon == pytest.approx(p.silo_level_epsilon(rounds=k + 1).epsilon)
        spent += np.asarray(p.rdp_per_round)


def test_releases_under_different_plans_add_their_rdp(p: DistributedDPPlan) -> None:
    """A release under a noisier plan after one under ``p``: the curves add (Mironov 2017)."""
    other = plan(
        DistributedDPConfig(l2_norm_clip=1.0, rounds=10, n_silos=5, noise_multiplier=2.0), 100
    )
    after = other.silo_level_epsilon_after(spent_rdp=list(p.rdp_per_round), releases=1)
    expected, _ = rdp_to_epsilon(
        np.asarray(p.rdp_per_round) + np.asarray(other.rdp_per_round),
        delta=other.config.target_delta,
    )
    assert after.epsilon == pytest.approx(expected)
    assert (
        p.silo_level_epsilon(rounds=1).epsilon
        < after.epsilon
        < p.silo_level_epsilon(rounds=2).epsilon
    )


@pytest.mark.parametrize(
    ("spent", "releases"),
    [
        ([0.0] * 3, 1),  # wrong length
        ([float("nan")] * len(RDP_ORDERS), 1),
        ([-1.0] * len(RDP_ORDERS), 1),
        ([1.0] * len(RDP_ORDERS), 0),  # spent budget without a release
        ([0.0] * len(RDP_ORDERS), -1),
    ],
)
def test_a_malformed_spend_is_refused(
    p: DistributedDPPlan, spent: list[float], releases: int
) -> None:
    with pytest.raises(InvalidPrivacyParameters):
        p.silo_level_epsilon_after(spent_rdp=spent, releases=releases)
