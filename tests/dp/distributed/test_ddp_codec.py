"""Rotation, encode/decode round trips, aggregate noise variance, dropouts and wrap counting."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dp.distributed import (
    BitSource,
    DistributedDPConfig,
    DistributedDPPlan,
    Mechanism,
    decode,
    encode,
    inverse_randomized_hadamard,
    plan,
    randomized_hadamard,
)
from dp.distributed.codec import _conditional_round
from dp.distributed.rotation import rotation_signs
from dp.errors import RoundingFailed, TooFewContributors

Seeded = Callable[[int], Callable[[int], bytes]]
SEED = bytes(range(32))


def _sum_mod(encodings: list[np.ndarray], p: DistributedDPPlan) -> np.ndarray:
    """What the secure-aggregation layer hands back: the sum reduced mod 2^bits."""
    total = np.zeros(p.padded_dimension, dtype=np.int64)
    for e in encodings:
        total = (total + e) % p.modulus
    return total.astype(np.uint64)


def _clipped(x: np.ndarray, clip: float) -> np.ndarray:
    return x * min(1.0, clip / float(np.linalg.norm(x)))


def test_rotation_is_orthogonal() -> None:
    d = 32
    q = np.stack([randomized_hadamard(col, SEED) for col in np.eye(d)], axis=1)
    assert np.allclose(q.T @ q, np.eye(d), atol=1e-12)
    assert not np.allclose(q, np.eye(d))


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float64,
        st.sampled_from([1, 2, 64, 1024]),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
def test_rotation_inverts_and_preserves_norm(x: np.ndarray) -> None:
    y = randomized_hadamard(x, SEED)
    assert np.allclose(inverse_randomized_hadamard(y, SEED), x, atol=1e-6 * (1 + np.abs(x).max()))
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-9, atol=1e-9)


def test_rotation_signs_depend_on_seed_and_reject_short_seeds() -> None:
    a = rotation_signs(SEED, 1024)
    assert np.array_equal(a, rotation_signs(SEED, 1024))
    assert not np.array_equal(a, rotation_signs(bytes(32), 1024))
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert 400 < np.count_nonzero(a > 0) < 624
    with pytest.raises(ValueError, match="seed"):
        rotation_signs(b"short", 8)
    with pytest.raises(ValueError, match="power of two"):
        rotation_signs(SEED, 12)


@pytest.mark.parametrize("mechanism", ["skellam", "ddg"])
@pytest.mark.parametrize("rotation", [True, False])
def test_round_trip_recovers_the_sum_within_the_noise(
    seeded: Seeded, mechanism: Mechanism, rotation: bool
) -> None:
    config = DistributedDPConfig(
        mechanism=mechanism,
        l2_norm_clip=2.0,
        noise_multiplier=0.3,
        rounds=10,
        n_silos=4,
        bits=24,
        rotation=rotation,
    )
    d = 300
    p = plan(config, d)
    data = np.random.default_rng(0)
    xs = [data.normal(size=d) * 0.3 for _ in range(4)]
    encodings = [encode(x, p, rotation_seed=SEED, rng=seeded(20 + i)) for i, x in enumerate(xs)]
    estimate, wraps = decode(_sum_mod(encodings, p), p, n_contributors=4, rotation_seed=SEED)
    truth = sum(_clipped(x, 2.0) for x in xs)
    sd = np.sqrt(p.aggregate_noise_variance(4) + 4 / (4 * p.scale**2))
    assert estimate.dtype == np.float32 and estimate.shape == (d,)
    assert wraps == 0
    assert np.max(np.abs(estimate - truth)) < 6 * sd
    # The aggregate is noisy: the coordinator never sees the clean sum.
    assert np.std(estimate - truth) > 0.5 * sd


@pytest.mark.parametrize("mechanism", ["skellam", "ddg"])
def test_decoded_noise_has_the_configured_variance(seeded: Seeded, mechanism: Mechanism) -> None:
    config = DistributedDPConfig(
        mechanism=mechanism,
        l2_norm_clip=1.0,
        noise_multiplier=0.5,
        rounds=10,
        n_silos=3,
        bits=18,
    )
    d = 200
    p = plan(config, d)
    data = np.random.default_rng(1)
    xs = [data.normal(size=d) * 0.05 for _ in range(3)]
    truth = sum(_clipped(x, 1.0) for x in xs)
    errors = []
    for r in range(25):
        seed = os.urandom(32)  # a fresh public rotation seed per round
        encodings = [
            encode(x, p, rotation_seed=seed, rng=seeded(100 * r + i)) for i, x in enumerate(xs)
        ]
        estimate, wraps = decode(_sum_mod(encodings, p), p, n_contributors=3, rotation_seed=seed)
        assert wraps == 0
        errors.append(estimate.astype(np.float64) - truth)
    err = np.concatenate(errors)
    configured = p.aggregate_noise_variance(3)  # = (z C)^2 with every silo present
    assert configured == pytest.approx(0.25, rel=1e-9)
    rounding = 3 / (4 * p.scale**2)  # at most; negligible here
    n = err.size
    assert abs(err.mean()) < 5 * np.sqrt(configured / n)
    assert abs(err.var() / configured - 1) < 5 * np.sqrt(2 / n) + rounding / configured


def test_survivors_beyond_the_minimum_only_add_noise(seeded: Seeded) -> None:
    config = DistributedDPConfig(
        l2_norm_clip=1.0, noise_multiplier=1.0, rounds=1, n_silos=5, dropouts_tolerated=1, bits=20
    )
    p = plan(config, 16)
    assert p.aggregate_noise_variance(4) == pytest.approx(1.0)
    assert p.aggregate_noise_variance(5) == pytest.approx(1.25)
    xs = [np.full(16, 0.1) for _ in range(5)]
    encodings = [encode(x, p, rotation_seed=SEED, rng=seeded(200 + i)) for i, x in enumerate(xs)]
    estimate, wraps = decode(_sum_mod(encodings[:4], p), p, n_contributors=4, rotation_seed=SEED)
    assert wraps == 0 and np.all(np.abs(estimate - 0.4) < 6)
    with pytest.raises(TooFewContributors):
        decode(_sum_mod(encodings[:3], p), p, n_contributors=3, rotation_seed=SEED)
    with pytest.raises(ValueError, match="exceeds"):
        decode(_sum_mod(encodings, p), p, n_contributors=6, rotation_seed=SEED)


def test_wraps_are_counted_when_the_bit_width_is_forced_too_small(seeded: Seeded) -> None:
    narrow = DistributedDPConfig(
        l2_norm_clip=1.0, noise_multiplier=0.5, rounds=1, n_silos=4, bits=12
    )
    p = plan(narrow, 128)
    data = np.random.default_rng(2)
    xs = [data.normal(size=128) for _ in range(4)]
    fine = [encode(x, p, rotation_seed=SEED, rng=seeded(300 + i)) for i, x in enumerate(xs)]
    _, wraps = decode(_sum_mod(fine, p), p, n_contributors=4, rotation_seed=SEED)
    assert wraps == 0
    # The silos encoded for 16 bits but the sum is taken mod 2^12: it wraps, and decode
    # sees coordinates in the guard band.
    wide = plan(dataclasses.replace(narrow, bits=16), 128)
    too_big = [encode(x, wide, rotation_seed=SEED, rng=seeded(310 + i)) for i, x in enumerate(xs)]
    _, wraps = decode(_sum_mod(too_big, p), p, n_contributors=4, rotation_seed=SEED)
    assert wraps > 10


def test_an_implausible_sum_inside_the_range_is_caught_by_the_norm_check(seeded: Seeded) -> None:
    config = DistributedDPConfig(
        l2_norm_clip=1.0, noise_multiplier=0.5, rounds=1, n_silos=4, bits=16, guard_bits=0
    )
    p = plan(config, 1024)
    encodings = [
        encode(np.zeros(1024), p, rotation_seed=SEED, rng=seeded(320 + i)) for i in range(4)
    ]
    _, wraps = decode(_sum_mod(encodings, p), p, n_contributors=4, rotation_seed=SEED)
    assert wraps == 0
    # Values that stay inside the range but carry far too little noise energy (here the sum
    # divided by 8, as a wrong modulus or a tampered aggregate would give) cannot be
    # located coordinate by coordinate: the whole vector is flagged.
    squashed = (_sum_mod(encodings, p).astype(np.int64) // 8).astype(np.uint64)
    _, wraps = decode(squashed, p, n_contributors=4, rotation_seed=SEED)
    assert wraps == p.padded_dimension


def test_decode_accepts_signed_and_unsigned_sums_alike(seeded: Seeded) -> None:
    p = plan(DistributedDPConfig(l2_norm_clip=1.0, noise_multiplier=1.0, rounds=1, n_silos=3), 10)
    encodings = [encode(np.ones(10), p, rotation_seed=SEED, rng=seeded(400 + i)) for i in range(3)]
    unsigned = _sum_mod(encodings, p)
    signed = sum(encodings)  # not reduced at all: decode reduces it
    a, _ = decode(unsigned, p, n_contributors=3, rotation_seed=SEED)
    b, _ = decode(np.asarray(signed, dtype=np.int64), p, n_contributors=3, rotation_seed=SEED)
    assert np.array_equal(a, b)


def test_conditional_rounding_meets_its_bound_and_fails_loudly() -> None:
    source = BitSource()
    scaled = np.full(1024, 0.5)
    rounded = _conditional_round(scaled, 24.0, True, source)
    assert float(np.dot(rounded, rounded)) <= 24.0**2
    assert set(np.unique(rounded)) <= {0, 1}
    with pytest.raises(RoundingFailed):
        _conditional_round(np.full(64, 3.0), 1.0, True, source)


def test_encode_validates_its_input() -> None:
    p = plan(DistributedDPConfig(l2_norm_clip=1.0, noise_multiplier=1.0, rounds=1, n_silos=3), 8)
    with pytest.raises(ValueError, match="8 values"):
        encode(np.ones(9), p, rotation_seed=SEED)
    with pytest.raises(ValueError, match="non-finite"):
        encode(np.array([np.nan] * 8), p, rotation_seed=SEED)
    with pytest.raises(ValueError, match="rotation_seed"):
        encode(np.ones(8), p)
    with pytest.raises(ValueError, match="integer"):
        decode(np.zeros(8, dtype=np.float64), p, n_contributors=3, rotation_seed=SEED)
    with pytest.raises(ValueError, match="summed integers"):
        decode(np.zeros(9, dtype=np.int64), p, n_contributors=3, rotation_seed=SEED)


def test_encoding_is_integer_and_of_padded_length() -> None:
    p = plan(DistributedDPConfig(l2_norm_clip=1.0, noise_multiplier=1.0, rounds=1, n_silos=3), 100)
    out = encode(np.ones(100), p, rotation_seed=SEED)
    assert out.dtype == np.int64 and out.shape == (128,)
