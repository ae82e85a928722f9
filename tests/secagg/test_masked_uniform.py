"""The masked vector a silo sends is indistinguishable from uniform and never equals its input.

~1e6 coordinates with pinned seeds, so each test is deterministic. Thresholds: chi-square p > 1e-6 and every
bit's z-score below 5.5 (two-sided 4e-8): a false alarm for a truly uniform vector is vanishingly rare, while
the same tests reject the unmasked update with p ~ 0, so they have power.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tests.secagg.harness import make_config, make_federation, run_to_consistency, seeded_rng

LENGTH = 1 << 20  # 1,048,576 coordinates


def top_byte_pvalue(v: np.ndarray) -> float:
    counts = np.bincount((v >> np.uint32(24)).astype(np.int64), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def low_byte_pvalue(v: np.ndarray) -> float:
    counts = np.bincount((v & np.uint32(0xFF)).astype(np.int64), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def max_bit_z(v: np.ndarray) -> float:
    ones = np.array([np.count_nonzero(v & np.uint32(1 << b)) for b in range(32)])
    return float(np.max(np.abs(ones - v.size / 2) / math.sqrt(v.size / 4)))


@pytest.fixture(scope="module")
def masked() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A realistic quantized update (small Gaussian coordinates) masked by one silo of three."""
    fed = make_federation(3, seed=11)
    config = make_config(fed, length=LENGTH, bits=16)
    quantizer = config.quantizer
    update = np.random.default_rng(12).normal(scale=1e-4, size=LENGTH)
    inputs = {s: quantizer.encode(update, rng=seeded_rng(13)) for s in fed.silos}
    tr = run_to_consistency(fed, config, seed=14, inputs=inputs)
    silo = fed.silos[1]
    other = fed.silos[2]
    return tr.inputs[silo], tr.masked[silo], tr.masked[other]


def test_the_unmasked_update_fails_the_same_tests(
    masked: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, _, _ = masked
    assert top_byte_pvalue(x) < 1e-100
    assert max_bit_z(x) > 100


def test_masked_vector_is_uniform(masked: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, y, _ = masked
    assert top_byte_pvalue(y) > 1e-6
    assert low_byte_pvalue(y) > 1e-6
    assert max_bit_z(y) < 5.5


def test_the_mask_itself_and_the_difference_of_two_silos_are_uniform(
    masked: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, y, y_other = masked
    mask = y - x  # uint32 arithmetic: the total mask PRG(b_u) +- PRG(s_uv)
    assert top_byte_pvalue(mask) > 1e-6
    assert max_bit_z(mask) < 5.5
    # same input at both silos, yet their masked vectors are unrelated
    difference = y - y_other
    assert top_byte_pvalue(difference) > 1e-6
    assert max_bit_z(difference) < 5.5


def test_masked_vector_never_equals_its_input(
    masked: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, y, _ = masked
    assert not np.array_equal(x, y)
    # chance coincidences are expected at ~LENGTH / 2^32 = 0.0002 coordinates
    assert np.count_nonzero(x == y) <= 2
