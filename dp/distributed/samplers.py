"""Integer noise samplers: discrete Laplace, discrete Gaussian, Poisson and Skellam.

All samplers are vectorized over numpy arrays and driven by a :class:`BitSource`
(an AES-256-CTR stream under an ``os.urandom`` key by default). None uses floating-point
Gaussian sampling or numpy's RNG. Each is exact, or within a proven statistical distance
of ``2^-100`` per draw (the table path, last note), which the accounting adds to delta.

Notes:
    - Discrete Laplace and discrete Gaussian follow Canonne, Kamath and Steinke (NeurIPS
      2020, "The Discrete Gaussian for Differential Privacy"), Algorithms 2 and 3: the
      Gaussian is a discrete-Laplace proposal accepted with probability
      ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``.
    - Poisson(mu), for any ``mu > 0`` including very large means, is a rejection sampler
      with a discrete-Laplace proposal centred at ``floor(mu)`` with integer scale
      ``s ~ sqrt(mu)``: accept ``k`` with probability ``exp(r(k) - B)`` where
      ``r(k) = ln P(k) - ln q(k) + const`` and ``B >= max r`` is fixed per ``mu``. The
      log-pmf ratio is evaluated with a cancellation-free Stirling difference in float64
      with a stated error bound, and settled in :mod:`decimal` whenever that bound could
      flip the decision (see :mod:`dp.distributed._bits`). The Poisson log-pmf is concave,
      so the search for ``max r`` over integers is exact; ``B`` is padded by 2^-10 (an
      efficiency loss of 0.1 %). Devroye (1986, "Non-Uniform Random Variate Generation",
      X.3) describes the rejection family; acceptance is about 0.76.
    - Skellam(mu) = Poisson(mu) - Poisson(mu) (Agarwal, Kairouz and Liu, NeurIPS 2021),
      variance ``2 mu``; a sum of independent Skellams is Skellam, which is why each silo
      can add a share of the central noise.
    - Speed: by default, the Poisson and the discrete Gaussian are drawn from cumulative
      distribution tables (:mod:`dp.distributed._tables`) whenever the support fits
      (``sigma`` up to about 40,000): each draw is within statistical distance
      :data:`~dp.distributed._tables.TABLE_DISTANCE` ``= 2^-100`` of the target, proven
      and checked when the table is built, and :func:`sampling_distance` reports it so
      that the accountant adds it to delta (:func:`dp.distributed.accounting.delta_with_sampling_error`).
      Larger parameters, or ``exact=True``, use the exact rejection samplers above.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from dp.distributed._bits import (
    BitSource,
    ExactEvaluator,
    RandomBytes,
    bernoulli_exp_neg,
    floor_neg_log_uniform,
)
from dp.distributed._exact import shifted_ln_factorial
from dp.distributed._tables import (
    TABLE_DISTANCE,
    gaussian_table,
    gaussian_table_fits,
    poisson_table,
    poisson_table_fits,
    skellam_table,
    skellam_table_fits,
)

__all__ = [
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_poisson",
    "sample_skellam",
    "sampling_distance",
]

# Relative slack for float64 evaluation errors: true errors are a few ulps (2^-51).
_FLOAT_SLACK = 2.0**-40
# Stirling's remainder after the 1/(360 z^3) term is below 1/(1260 z^5); z >= 16 in the fast path.
_STIRLING_FAST_MIN_Z = 16
_STIRLING_FAST_REMAINDER = 2.0 / (1260.0 * 16.0**5)
# The maximiser search pads B by this much: exp(-2^-10) costs 0.1 % acceptance.
_B_PAD = 2.0**-10


def _source(rng: RandomBytes | BitSource | None) -> BitSource:
    return rng if isinstance(rng, BitSource) else BitSource(rng)


def _rational_evaluator(value: Fraction) -> ExactEvaluator:
    def evaluate(digits: int) -> tuple[Decimal, Decimal]:
        ctx = Context(prec=digits, Emin=MIN_EMIN, Emax=MAX_EMAX)
        x = ctx.divide(Decimal(value.numerator), Decimal(value.denominator))
        return x, abs(x) * Decimal(10) ** (1 - digits)

    return evaluate


def _discrete_laplace(scale: int, n: int, source: BitSource) -> NDArray[np.int64]:
    """``n`` draws of ``P(x) ∝ exp(-|x| / scale)``: a signed geometric, ``-0`` rejected."""
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        # P(reject) = P(-0) = (1 - q) / 2 with q = exp(-1/scale): at most 0.32 (scale 1).
        batch = (n - filled) + ((n - filled) >> 1 if scale < 4 else (n - filled) >> 6) + 16
        magnitude, negative = floor_neg_log_uniform(scale, batch, source, spare_bit=True)
        keep = ~(negative & (magnitude == 0))  # -0 would double the mass at zero
        values = np.where(negative, -magnitude, magnitude)[keep]
        take = min(values.size, n - filled)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


def sample_discrete_laplace(
    scale: int, size: int, *, rng: RandomBytes | BitSource | None = None
) -> NDArray[np.int64]:
    """Draw ``size`` samples of the discrete Laplace ``P(x) ∝ exp(-|x| / scale)`` on Z.

    Args:
        scale: a positive integer ``t``.
        size: number of samples.
        rng: byte source (an ``os.urandom``-keyed stream by default) or a :class:`BitSource`.

    Returns:
        An int64 array.

    Notes:
        The distribution of Canonne, Kamath and Steinke (2020), Algorithm 2, drawn as a
        signed geometric by exact inversion (:func:`dp.distributed._bits.floor_neg_log_uniform`):
        one uniform per draw instead of CKS20's uniform, Bernoulli and geometric loop.
        The sign is a spare bit of the same word; ``-0`` is rejected as in CKS20.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError("scale must be a positive integer")
    if size < 0:
        raise ValueError("size must be non-negative")
    return _discrete_laplace(scale, size, _source(rng))


def sample_discrete_gaussian(
    variance: float,
    size: int,
    *,
    rng: RandomBytes | BitSource | None = None,
    exact: bool = False,
) -> NDArray[np.int64]:
    """Draw ``size`` samples of the centred discrete Gaussian ``N_Z(0, variance)``.

    ``P(x) ∝ exp(-x^2 / (2 variance))`` on the integers; ``variance`` is the parameter
    ``sigma^2`` (the actual variance is within ``1e-12`` relative of it for ``sigma >= 1``).

    Args:
        variance: ``sigma^2 > 0`` (taken as the exact binary rational of the float).
        size: number of samples.
        rng: byte source (an ``os.urandom``-keyed stream by default) or a :class:`BitSource`.
        exact: always use the exact rejection sampler, never the table.

    Returns:
        An int64 array.

    Notes:
        The table sampler when the support fits, within ``2^-100`` per draw (module
        docstring, :func:`sampling_distance`); otherwise Canonne, Kamath and Steinke
        (2020), Algorithm 3 with ``t = floor(sigma) + 1``, exact.
    """
    if not math.isfinite(variance) or variance <= 0:
        raise ValueError("variance must be positive and finite")
    if size < 0:
        raise ValueError("size must be non-negative")
    source = _source(rng)
    if not exact and gaussian_table_fits(variance):
        return gaussian_table(float(variance)).sample(size, source)
    s2 = Fraction(variance)
    t = math.isqrt(math.floor(variance)) + 1
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        batch = int(1.4 * (size - filled)) + 16
        y = _discrete_laplace(t, batch, source)
        a = np.abs(y).astype(np.float64)
        b = variance / t
        x_hat = (a - b) ** 2 / (2.0 * variance)
        eta = _FLOAT_SLACK * (1.0 + x_hat + (a + b) ** 2 / variance)

        def exact_x(i: int, y: NDArray[np.int64] = y) -> ExactEvaluator:
            value = (Fraction(abs(int(y[i]))) - s2 / t) ** 2 / (2 * s2)
            return _rational_evaluator(value)

        values = y[bernoulli_exp_neg(x_hat, eta, exact_x, source)]
        take = min(values.size, size - filled)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


@dataclass(frozen=True)
class _PoissonSetup:
    mu: float
    mode: int  # floor(mu): centre of the proposal
    scale: int  # discrete-Laplace scale, about sqrt(mu)
    bound: float  # B >= max_k r(k)
    fast_limit: int  # |k - mode| beyond this goes to the exact path


def _r_exact(
    setup_mu: float, mode: int, scale: int, k: int, digits: int
) -> tuple[Decimal, Decimal]:
    """``r(k) = -(ln k! - ln m! - (k - m) ln mu) + |k - m| / s`` with an error bound."""
    t = k - mode
    guard = digits + 2 * len(str(abs(t) + mode + 1)) + 10
    ctx = Context(prec=guard, Emin=MIN_EMIN, Emax=MAX_EMAX)
    sk, ek = shifted_ln_factorial(k, guard)
    sm, em = shifted_ln_factorial(mode, guard)
    ln_mu = ctx.ln(Decimal(setup_mu))
    t_ln_mu = ctx.multiply(Decimal(t), ln_mu)
    lap = ctx.divide(Decimal(abs(t)), Decimal(scale))
    r = ctx.add(ctx.minus(ctx.subtract(ctx.subtract(sk, sm), t_ln_mu)), lap)
    magnitude = abs(sk) + abs(sm) + abs(t_ln_mu) + abs(lap) + 1
    err = ek + em + 10 * magnitude * Decimal(10) ** (-(guard - 1))
    return r, err


# ln k! for k < 16 (math.lgamma is accurate to a few ulps at these small integers).
_LN_FACTORIAL_SMALL = np.array([math.lgamma(k + 1.0) for k in range(_STIRLING_FAST_MIN_Z)])
_HALF_LN_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _ln_factorial_float(k: NDArray[np.int64]) -> NDArray[np.float64]:
    """Float64 ``ln k!``: a table below 16, Stirling's series (to 1/(360 z^3)) above."""
    z = k.astype(np.float64) + 1.0
    small = k + 1 < _STIRLING_FAST_MIN_Z
    zc = np.where(small, float(_STIRLING_FAST_MIN_Z), z)
    stirling = (
        (zc - 0.5) * np.log(zc) - zc + _HALF_LN_TWO_PI + 1.0 / (12.0 * zc) - 1.0 / (360.0 * zc**3)
    )
    return np.where(small, _LN_FACTORIAL_SMALL[np.minimum(k, _STIRLING_FAST_MIN_Z - 1)], stirling)


def _r_fast(
    mu: float, mode: int, scale: int, k: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Float64 ``r(k)`` and a rigorous-with-slack error bound, for any ``k >= 0``."""
    t = (k - mode).astype(np.float64)
    z0 = float(mode + 1)
    lap = np.abs(t) / scale
    if mode + 1 >= _STIRLING_FAST_MIN_Z:
        # f(k) - f(m) with f(k) = ln k! - k ln mu, from Stirling's series, cancellation-free:
        # t ln(z0/mu) + (z - 1/2) log1p(t/z0) - t + [1/(12z) - 1/(360z^3)] - [same at z0].
        z = np.maximum(z0 + t, float(_STIRLING_FAST_MIN_Z))  # small k handled below
        lead = t * math.log1p((z0 - mu) / mu)
        body = (z - 0.5) * np.log1p(t / z0) - t
        corr = (1.0 / (12.0 * z) - 1.0 / (360.0 * z**3)) - (
            1.0 / (12.0 * z0) - 1.0 / (360.0 * z0**3)
        )
        diff = lead + body + corr
        diff_eta = _FLOAT_SLACK * (8.0 + 4.0 * np.abs(t) + np.abs(diff)) + _STIRLING_FAST_REMAINDER
    else:
        diff = np.zeros_like(t)
        diff_eta = np.full_like(t, np.inf)
    # Direct form for small k (or small mode): magnitudes are moderate, so plain
    # subtraction with an error bound relative to the operands is accurate enough.
    ln_k = _ln_factorial_float(k)
    ln_m = float(_ln_factorial_float(np.array([mode]))[0])
    t_ln_mu = t * math.log(mu)
    direct = ln_k - ln_m - t_ln_mu
    direct_eta = (
        _FLOAT_SLACK * (8.0 + np.abs(ln_k) + abs(ln_m) + np.abs(t_ln_mu)) + _STIRLING_FAST_REMAINDER
    )
    use_diff = (k + 1 >= _STIRLING_FAST_MIN_Z) & (mode + 1 >= _STIRLING_FAST_MIN_Z)
    delta_f = np.where(use_diff, diff, direct)
    eta = np.where(use_diff, diff_eta, direct_eta)
    return -delta_f + lap, eta + _FLOAT_SLACK * lap


def _side_max(values: Callable[[int], float], lo: int, hi: int) -> tuple[float, int]:
    """Max of a concave integer sequence on [lo, hi] by ternary search, then a local check."""
    a, b = lo, hi
    while b - a > 4:
        m1 = a + (b - a) // 3
        m2 = b - (b - a) // 3
        if values(m1) < values(m2):
            a = m1
        else:
            b = m2
    best_t = max(range(a, b + 1), key=values)
    return values(best_t), best_t


@lru_cache(maxsize=64)
def _poisson_setup(mu: float) -> _PoissonSetup:
    mode = math.floor(mu)
    scale = max(1, round(math.sqrt(mu)))
    fast_limit = 64 * scale + 1024

    def r_value(t: int) -> float:
        return float(_r_exact(mu, mode, scale, mode + t, 30)[0])

    # r is concave on t >= 0 and on t <= 0 (Poisson is log-concave; |t|/s is linear on
    # each side), so each side has one maximiser; widen the window until it is interior.
    best = -math.inf
    window = 4 * scale + 16
    while True:
        right, t_right = _side_max(r_value, 0, window)
        left_lo = max(-mode, -window)
        left, t_left = _side_max(r_value, left_lo, 0)
        if t_right < window and (t_left > left_lo or left_lo == -mode):
            best = max(right, left)
            break
        window *= 2
    return _PoissonSetup(mu=mu, mode=mode, scale=scale, bound=best + _B_PAD, fast_limit=fast_limit)


def _poisson(mu: float, n: int, source: BitSource) -> NDArray[np.int64]:
    setup = _poisson_setup(mu)
    mode, scale, bound = setup.mode, setup.scale, setup.bound
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        batch = int(1.4 * (n - filled)) + 16
        k = mode + _discrete_laplace(scale, batch, source)
        k = k[k >= 0]  # zero probability under Poisson: reject outright
        fast = np.abs(k - mode) <= setup.fast_limit
        x_hat = np.zeros(k.size)
        eta = np.full(k.size, np.inf)  # forces the exact path where the fast formula is invalid
        if fast.any():
            r, r_eta = _r_fast(mu, mode, scale, k[fast])
            x_hat[fast] = bound - r
            eta[fast] = r_eta + _FLOAT_SLACK * abs(bound)

        def exact(i: int, k: NDArray[np.int64] = k) -> ExactEvaluator:
            ki = int(k[i])

            def evaluate(digits: int) -> tuple[Decimal, Decimal]:
                r, err = _r_exact(mu, mode, scale, ki, digits)
                ctx = Context(prec=digits + 30, Emin=MIN_EMIN, Emax=MAX_EMAX)
                x = ctx.subtract(Decimal(bound), r)
                return x, err + abs(x) * Decimal(10) ** (-(digits + 29))

            return evaluate

        values = k[bernoulli_exp_neg(x_hat, eta, exact, source)]
        take = min(values.size, n - filled)
        out[filled : filled + take] = values[:take]
        filled += take
    return out


def sample_poisson(
    mu: float,
    size: int,
    *,
    rng: RandomBytes | BitSource | None = None,
    exact: bool = False,
) -> NDArray[np.int64]:
    """Draw ``size`` exact samples of Poisson(``mu``).

    Args:
        mu: the mean, ``0 < mu < 2**52`` (taken as the exact binary rational of the float).
        size: number of samples.
        rng: byte source (an ``os.urandom``-keyed stream by default) or a :class:`BitSource`.
        exact: always use the exact rejection sampler, never the table.

    Returns:
        An int64 array.

    Notes:
        The table sampler when the support fits, within ``2^-100`` per draw; otherwise the
        exact rejection sampler with a discrete-Laplace proposal (module docstring).
    """
    if not math.isfinite(mu) or not 0 < mu < 2.0**52:
        raise ValueError("mu must be in (0, 2**52)")
    if size < 0:
        raise ValueError("size must be non-negative")
    source = _source(rng)
    if not exact and poisson_table_fits(mu):
        return poisson_table(float(mu)).sample(size, source)
    return _poisson(float(mu), size, source)


def sample_skellam(
    mu: float,
    size: int,
    *,
    rng: RandomBytes | BitSource | None = None,
    exact: bool = False,
) -> NDArray[np.int64]:
    """Draw ``size`` exact samples of the symmetric Skellam ``Poisson(mu) - Poisson(mu)``.

    The variance is ``2 mu``.

    Args:
        mu: the mean of each Poisson, ``0 < mu < 2**52``.
        size: number of samples.
        rng: byte source (an ``os.urandom``-keyed stream by default) or a :class:`BitSource`.
        exact: always use the exact Poisson sampler, never the table.

    Returns:
        An int64 array.

    Notes:
        Agarwal, Kairouz and Liu (2021), section 3: the difference of two independent
        Poisson variables. By default one draw from a Skellam table (its weights the exact
        autocorrelation of the Poisson table's, :func:`dp.distributed._tables.skellam_table`)
        within ``2^-100``; for larger ``mu`` two Poisson table draws (a function of two
        draws, so within ``2 * 2^-100``); beyond those, or with ``exact=True``, two exact
        Poisson draws.
    """
    if not math.isfinite(mu) or not 0 < mu < 2.0**52:
        raise ValueError("mu must be in (0, 2**52)")
    if size < 0:
        raise ValueError("size must be non-negative")
    source = _source(rng)
    if not exact and skellam_table_fits(mu):
        return skellam_table(float(mu)).sample(size, source)
    if not exact and poisson_table_fits(mu):
        index = poisson_table(float(mu)).indices(2 * size, source)  # the offsets cancel
        difference: NDArray[np.int64] = np.subtract(index[:size], index[size:], dtype=np.int64)
        return difference
    both = sample_poisson(mu, 2 * size, rng=source, exact=exact)
    return both[:size] - both[size:]


def sampling_distance(mechanism: str, parameter: float) -> float:
    """Proven bound on the statistical distance of one noise draw from its target.

    Args:
        mechanism: ``"skellam"`` (``parameter`` is the Poisson mean ``mu``) or ``"ddg"``
            (``parameter`` is ``sigma^2``).
        parameter: as passed to :func:`sample_skellam` or :func:`sample_discrete_gaussian`.

    Returns:
        ``0.0`` when the default sampler is exact for this parameter, else the table's
        bound (``2^-100``; ``2 * 2^-100`` for a Skellam drawn as two Poisson table draws).

    Notes:
        Total variation is subadditive over independent draws, so ``d`` coordinates of
        ``n`` silos over ``r`` rounds are within ``r n d`` times this of the exact
        mechanism, which :func:`dp.distributed.accounting.delta_with_sampling_error` adds
        to delta.
    """
    if mechanism == "skellam":
        if skellam_table_fits(parameter):
            return TABLE_DISTANCE
        return 2 * TABLE_DISTANCE if poisson_table_fits(parameter) else 0.0
    if mechanism == "ddg":
        return TABLE_DISTANCE if gaussian_table_fits(parameter) else 0.0
    raise ValueError("mechanism must be 'skellam' or 'ddg'")
