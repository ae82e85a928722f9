"""Exact samplers: goodness of fit, moments, Skellam additivity, and the exact slow path."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp.distributed import (
    BitSource,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_poisson,
    sample_skellam,
)
from dp.distributed._bits import bernoulli_exp_neg
from dp.distributed._exact import shifted_ln_factorial
from dp.distributed.samplers import _r_exact, _r_fast

Seeded = Callable[[int], Callable[[int], bytes]]
HALF_LN_2PI = 0.5 * math.log(2 * math.pi)


def _chi_square_pvalue(samples: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square goodness of fit, pooling cells until each expects at least 10 draws."""
    n = samples.size
    counts = np.array([np.count_nonzero(samples == k) for k in support], dtype=float)
    expected = pmf / pmf.sum() * n
    outside = n - counts.sum()
    obs_cells, exp_cells = [], []
    acc_o = acc_e = 0.0
    for o, e in zip(counts, expected, strict=True):
        acc_o += o
        acc_e += e
        if acc_e >= 10:
            obs_cells.append(acc_o)
            exp_cells.append(acc_e)
            acc_o = acc_e = 0.0
    obs_cells[-1] += acc_o + outside
    exp_cells[-1] += acc_e + (n - expected.sum())
    return float(stats.chisquare(obs_cells, exp_cells).pvalue)


def _binned_pvalue(
    samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray], lo: int, hi: int, bins: int = 40
) -> float:
    """Chi-square on ~equiprobable integer bins of a wide discrete distribution."""
    edges = np.unique(np.linspace(lo, hi, bins + 1).astype(np.int64))
    probs = np.diff(np.concatenate(([0.0], cdf(edges[1:-1]), [1.0])))
    idx = np.searchsorted(edges[1:-1], samples, side="right")
    counts = np.bincount(idx, minlength=probs.size)
    return float(stats.chisquare(counts, probs * samples.size).pvalue)


def test_discrete_laplace_fits(seeded: Seeded) -> None:
    t = 3
    x = sample_discrete_laplace(t, 40_000, rng=seeded(1))
    support = np.arange(-60, 61)
    pmf = np.exp(-np.abs(support) / t)
    assert _chi_square_pvalue(x, support, pmf) > 1e-3
    assert abs(x.mean()) < 0.1


@pytest.mark.parametrize("variance", [0.7, 4.0, 30.25])
def test_discrete_gaussian_fits(seeded: Seeded, variance: float) -> None:
    x = sample_discrete_gaussian(variance, 40_000, rng=seeded(2))
    half = int(12 * math.sqrt(variance)) + 5
    support = np.arange(-half, half + 1)
    pmf = np.exp(-(support**2) / (2 * variance))
    pmf /= pmf.sum()
    true_var = float((pmf * support**2).sum())
    assert _chi_square_pvalue(x, support, pmf) > 1e-3
    assert abs(x.mean()) < 5 * math.sqrt(true_var / x.size)
    assert abs(x.var() / true_var - 1) < 5 * math.sqrt(2 / x.size)


@pytest.mark.parametrize("mu", [0.3, 3.7, 15.5, 40.0])
def test_poisson_small_means_fit(seeded: Seeded, mu: float) -> None:
    x = sample_poisson(mu, 30_000, rng=seeded(3))
    support = np.arange(0, int(mu + 12 * math.sqrt(mu) + 12))
    assert _chi_square_pvalue(x, support, stats.poisson.pmf(support, mu)) > 1e-3


@pytest.mark.parametrize("mu", [1234.5, 3.0e6, 1.9e8])
def test_poisson_large_means_fit(seeded: Seeded, mu: float) -> None:
    n = 60_000
    x = sample_poisson(mu, n, rng=seeded(4))
    sd = math.sqrt(mu)
    # Mean and variance within 5 standard errors; binned chi-square over +-5 sd.
    assert abs(x.mean() - mu) < 5 * sd / math.sqrt(n)
    assert abs(x.var() / mu - 1) < 5 * math.sqrt(2 / n)
    lo, hi = int(mu - 5 * sd), int(mu + 5 * sd)
    assert _binned_pvalue(x, lambda k: stats.poisson.cdf(k - 1, mu), lo, hi) > 1e-3


@pytest.mark.parametrize("mu", [2.5, 60.0])
def test_skellam_fits(seeded: Seeded, mu: float) -> None:
    x = sample_skellam(mu, 40_000, rng=seeded(5))
    half = int(12 * math.sqrt(2 * mu)) + 10
    support = np.arange(-half, half + 1)
    assert _chi_square_pvalue(x, support, stats.skellam.pmf(support, mu, mu)) > 1e-3
    assert abs(x.var() / (2 * mu) - 1) < 5 * math.sqrt(2 / x.size)


def test_two_silos_skellam_shares_sum_to_skellam_2mu(seeded: Seeded) -> None:
    mu = 7.5
    silo_a = sample_skellam(mu, 40_000, rng=seeded(6))
    silo_b = sample_skellam(mu, 40_000, rng=seeded(7))
    total = silo_a + silo_b
    half = 80
    support = np.arange(-half, half + 1)
    assert _chi_square_pvalue(total, support, stats.skellam.pmf(support, 2 * mu, 2 * mu)) > 1e-3
    # ... and not Skellam(mu): the test has power.
    assert _chi_square_pvalue(total, support, stats.skellam.pmf(support, mu, mu)) < 1e-6


def test_large_skellam_share_sum_has_the_central_variance(seeded: Seeded) -> None:
    mu, n = 2.0e7, 40_000
    total = sample_skellam(mu, n, rng=seeded(8)) + sample_skellam(mu, n, rng=seeded(9))
    assert abs(total.var() / (4 * mu) - 1) < 5 * math.sqrt(2 / n)
    sd = math.sqrt(4 * mu)
    p = _binned_pvalue(
        total, lambda k: stats.skellam.cdf(k - 1, 2 * mu, 2 * mu), int(-5 * sd), int(5 * sd)
    )
    assert p > 1e-3


def test_samplers_reject_bad_parameters() -> None:
    with pytest.raises(ValueError, match="scale"):
        sample_discrete_laplace(0, 3)
    with pytest.raises(ValueError, match="variance"):
        sample_discrete_gaussian(-1.0, 3)
    with pytest.raises(ValueError, match="mu"):
        sample_poisson(float("nan"), 3)
    with pytest.raises(ValueError, match="mu"):
        sample_skellam(0.0, 3)


def test_bit_source_hides_its_source_and_checks_lengths() -> None:
    assert "hidden" in repr(BitSource())
    with pytest.raises(ValueError, match="wrong number"):
        BitSource(lambda n: b"\x00").words(2)
    assert set(BitSource().below(3, 2000).tolist()) == {0, 1, 2}


def _forced_exact(x: float, n: int, rng: Callable[[int], bytes]) -> np.ndarray:
    """Bernoulli(exp(-x)) with an infinite float error bound: every draw takes the exact path."""
    from fractions import Fraction

    from dp.distributed.samplers import _rational_evaluator

    evaluator = _rational_evaluator(Fraction(x))
    return bernoulli_exp_neg(np.full(n, x), np.full(n, np.inf), lambda i: evaluator, BitSource(rng))


def test_exact_path_has_the_right_frequency(seeded: Seeded) -> None:
    x, n = 0.7, 4000
    hits = int(_forced_exact(x, n, seeded(10)).sum())
    assert stats.binomtest(hits, n, math.exp(-x)).pvalue > 1e-3


def test_exact_path_settles_a_uniform_that_agrees_with_exp_on_53_bits() -> None:
    # U's first 53 bits equal those of exp(-1): floats cannot decide, the exact path must
    # reveal more bits. Next word all ones -> U > exp(-1) (reject); all zeros -> accept
    # iff exp(-1) > U, decided here with 100-digit arithmetic.
    with localcontext() as ctx:
        ctx.prec = 100
        e = Decimal(-1).exp()
    first = int(e * (1 << 53))
    tail_of_e = int((e * (1 << 117)) - (first << 64))
    for next_word, expected in ((2**64 - 1, False), (0, tail_of_e > 0)):
        stream = (first << 11).to_bytes(8, "little") + next_word.to_bytes(8, "little")
        out = bernoulli_exp_neg(
            np.array([1.0]), np.array([0.0]), lambda i: _unit_evaluator, BitSource(_replay(stream))
        )
        assert bool(out[0]) is expected


def _unit_evaluator(digits: int) -> tuple[Decimal, Decimal]:
    return Decimal(1), Decimal(0)


def _replay(stream: bytes) -> Callable[[int], bytes]:
    buffer = bytearray(stream)

    def take(n: int) -> bytes:
        out = bytes(buffer[:n])
        del buffer[:n]
        return out

    return take


@pytest.mark.parametrize("k", [0, 1, 5, 15, 16, 999, 1000, 1001, 123_456, 10**9])
def test_shifted_ln_factorial_matches_lgamma(k: int) -> None:
    value, err = shifted_ln_factorial(k, 30)
    assert err < Decimal("1e-25") * (abs(value) + 1)
    assert math.isclose(
        float(value) + HALF_LN_2PI, math.lgamma(k + 1), rel_tol=1e-13, abs_tol=1e-13
    )


@settings(max_examples=60, deadline=None)
@given(
    log_mu=st.floats(min_value=math.log(0.05), max_value=math.log(2e9)),
    offset=st.floats(min_value=-8.0, max_value=8.0),
)
def test_fast_log_ratio_is_within_its_stated_error(log_mu: float, offset: float) -> None:
    """The float64 path's error bound really bounds its error (the exactness argument)."""
    mu = math.exp(log_mu)
    mode = math.floor(mu)
    scale = max(1, round(math.sqrt(mu)))
    k = max(0, mode + round(offset * scale))
    r, eta = _r_fast(mu, mode, scale, np.array([k]))
    exact, err = _r_exact(mu, mode, scale, k, 40)
    assert abs(Decimal(float(r[0])) - exact) <= Decimal(float(eta[0])) + err
    assert float(eta[0]) < 1e-3
