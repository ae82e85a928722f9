"""Pure math of the RDP of the Poisson-subsampled Gaussian and its (epsilon, delta) conversion.

This is the hazmat layer of the accountants: plain functions of floats, no state, no torch.
It follows Opacus 1.6 ``opacus/accountants/analysis/rdp.py`` (itself from TF Privacy) line
by line, so that the cached-vector accountant above it reproduces Opacus' RDP accountant
to floating-point precision.

Notes:
    RDP of the Sampled Gaussian Mechanism: Mironov, Talwar, Zhang, "Renyi Differential
    Privacy of the Sampled Gaussian Mechanism" (2019, arXiv:1908.10530), Section 3.3: the
    integer-order closed form and the fractional-order series with the erfc tails.
    Conversion to (epsilon, delta): Balle, Barthe, Gaboardi, Hsu, Sato, "Hypothesis
    Testing Interpretations and Renyi Differential Privacy" (AISTATS 2020,
    arXiv:1905.09982), Theorem 21, the same improved conversion Opacus uses; it is tighter
    than Mironov's original ``rdp + log(1/delta)/(alpha-1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import special

from dp.errors import AccountingError

__all__ = [
    "CONVERSION",
    "DEFAULT_ORDERS",
    "conversion_offsets",
    "epsilon_from_rdp",
    "per_step_rdp",
]

#: The RDP orders Opacus' ``RDPAccountant.DEFAULT_ALPHAS`` uses, in the same order.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)

#: The RDP -> (epsilon, delta) conversion recorded next to every RDP number.
CONVERSION = "rdp->(eps,delta): Balle et al. 2020 (arXiv:1905.09982) Theorem 21, min over orders"


def _log_add(logx: float, logy: float) -> float:
    """Return log(exp(logx) + exp(logy)) without overflow."""
    a, b = min(logx, logy), max(logx, logy)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sub(logx: float, logy: float) -> float:
    """Return log(exp(logx) - exp(logy)); the difference must be non-negative."""
    if logx < logy:
        raise AccountingError("RDP series: a log-space subtraction went negative")
    if logy == -math.inf:
        return logx
    if logx == logy:
        return -math.inf
    try:
        return math.log(math.expm1(logx - logy)) + logy
    except OverflowError:
        return logx


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log(A_alpha) for an integer order (Mironov et al. 2019, Section 3.3)."""
    log_a = -math.inf
    for i in range(alpha + 1):
        log_coef_i = (
            math.log(special.binom(alpha, i)) + i * math.log(q) + (alpha - i) * math.log(1 - q)
        )
        s = log_coef_i + (i * i - i) / (2 * (sigma**2))
        log_a = _log_add(log_a, s)
    return float(log_a)


def _log_erfc(x: float) -> float:
    """Return log(erfc(x)), accurate for large x."""
    return math.log(2) + float(special.log_ndtr(-x * 2**0.5))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """log(A_alpha) for a fractional order: two series, summed until terms drop below e^-30."""
    log_a0, log_a1 = -math.inf, -math.inf
    i = 0
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    while True:
        coef = special.binom(alpha, i)
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * (sigma**2)) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * (sigma**2)) + log_e1
        if coef > 0:
            log_a0 = _log_add(log_a0, log_s0)
            log_a1 = _log_add(log_a1, log_s1)
        else:
            log_a0 = _log_sub(log_a0, log_s0)
            log_a1 = _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            break
    return _log_add(log_a0, log_a1)


def _rdp_one_order(q: float, sigma: float, alpha: float) -> float:
    """RDP of one step of the sampled Gaussian at order ``alpha`` (may be +inf)."""
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if math.isinf(alpha):
        return math.inf
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1)


@lru_cache(maxsize=512)
def _per_step_rdp_cached(
    noise_multiplier: float, sample_rate: float, orders: tuple[float, ...]
) -> np.ndarray:
    vector = np.array(
        [_rdp_one_order(sample_rate, noise_multiplier, order) for order in orders],
        dtype=np.float64,
    )
    # Shared between callers through the cache: make accidental in-place edits fail loudly.
    vector.setflags(write=False)
    return vector


def per_step_rdp(
    *, noise_multiplier: float, sample_rate: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> np.ndarray:
    """RDP vector of ONE step of the Poisson-subsampled Gaussian, one entry per order.

    Args:
        noise_multiplier: noise standard deviation over the L2 sensitivity (sigma).
        sample_rate: Poisson sampling probability q.
        orders: RDP orders (alphas), each > 1.

    Returns:
        A read-only float64 array (process-wide cache keyed by (sigma, q, orders)).
    """
    return _per_step_rdp_cached(float(noise_multiplier), float(sample_rate), tuple(orders))


@lru_cache(maxsize=64)
def conversion_offsets(orders: tuple[float, ...], delta: float) -> np.ndarray:
    """The rdp-independent part of Theorem 21: eps(alpha) = rdp(alpha) + offset(alpha)."""
    alphas = np.asarray(orders, dtype=np.float64)
    offsets: np.ndarray = -(np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log(
        (alphas - 1) / alphas
    )
    offsets.setflags(write=False)
    return offsets


def epsilon_from_rdp(
    *, rdp: np.ndarray, delta: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> tuple[float, float]:
    """Convert an RDP curve to (epsilon, optimal order) at ``delta`` (Balle et al. 2020, Thm 21).

    Returns ``(inf, nan)`` when every order is infinite (no privacy); the caller validates.
    """
    orders_key = orders if isinstance(orders, tuple) else tuple(orders)
    offsets = conversion_offsets(orders_key, float(delta))
    if offsets.shape != rdp.shape:
        raise AccountingError("RDP vector and orders differ in length")
    with np.errstate(invalid="ignore"):
        eps = rdp + offsets
    if np.isnan(eps).all():
        return math.inf, math.nan
    idx = int(np.nanargmin(eps))
    return float(eps[idx]), float(orders_key[idx])
