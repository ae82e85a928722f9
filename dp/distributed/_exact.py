"""Arbitrary-precision, rigorously bounded evaluation of log-factorials (the slow path).

Used only when the float64 path of the Poisson sampler cannot settle an acceptance test
(about once per million draws), so clarity beats speed here.

Notes:
    ``ln k!`` is evaluated as ``S(k) = ln k! - ln(2 pi)/2`` (the constant cancels in every
    difference the sampler needs) from Stirling's series
    ``ln Gamma(z) = (z - 1/2) ln z - z + ln(2 pi)/2 + sum_j B_2j / (2j (2j-1) z^(2j-1)) + R``
    with ``z >= 1001``, whose remainder is bounded by the first omitted term (Whittaker and
    Watson, section 12.33; DLMF 5.11.1 and 5.11(ii)). Smaller ``z`` are shifted up with the
    exact integer product ``z (z+1) ... (z+S-1)``. Python's :mod:`decimal` rounds ``ln``
    correctly, so each operation is off by at most half an ulp; the returned error bound
    adds these up with a generous constant.
"""

from __future__ import annotations

import math
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from fractions import Fraction

__all__ = ["shifted_ln_factorial"]

_STIRLING_MIN_Z = 1001
_MAX_TERMS = 400


# Bernoulli numbers computed so far (B_0, B_1, ...); grows on demand, never shrinks.
_BERNOULLI: list[Fraction] = [Fraction(1)]


def _bernoulli(index: int) -> Fraction:
    """Bernoulli number B_index (B_1 = -1/2 convention), exact, cached."""
    values = _BERNOULLI
    while len(values) <= index:
        m = len(values)
        # sum_{k=0}^{m} C(m+1, k) B_k = 0  =>  B_m = -(1/(m+1)) sum_{k<m} C(m+1, k) B_k
        total = sum((math.comb(m + 1, k) * values[k] for k in range(m)), Fraction(0))
        values.append(-total / (m + 1))
    return values[index]


def shifted_ln_factorial(k: int, digits: int) -> tuple[Decimal, Decimal]:
    """``ln k! - ln(2 pi)/2`` to ``digits`` significant digits, with an error bound.

    Args:
        k: a non-negative integer.
        digits: decimal working precision.

    Returns:
        ``(value, err)`` with ``|value - (ln k! - ln(2 pi)/2)| <= err``.
    """
    if k < 0:
        raise ValueError("k must be non-negative")
    ctx = Context(prec=digits + 10, Emin=MIN_EMIN, Emax=MAX_EMAX)
    z = k + 1
    shift = max(0, _STIRLING_MIN_Z - z)
    zs = z + shift
    zd = Decimal(zs)
    ln_z = ctx.ln(zd)
    value = ctx.subtract(ctx.multiply(ctx.subtract(zd, Decimal("0.5")), ln_z), zd)
    magnitude = abs(value) + 1
    tail = Decimal(10) ** (-(digits + 10))
    series = Decimal(0)
    remainder = None
    z_pow = zd  # z^(2j-1)
    z_sq = ctx.multiply(zd, zd)
    for j in range(1, _MAX_TERMS + 1):
        b = _bernoulli(2 * j)
        term = ctx.divide(
            Decimal(b.numerator), ctx.multiply(Decimal(b.denominator * 2 * j * (2 * j - 1)), z_pow)
        )
        next_b = _bernoulli(2 * j + 2)
        z_pow = ctx.multiply(z_pow, z_sq)
        bound = ctx.divide(
            Decimal(abs(next_b.numerator)),
            ctx.multiply(Decimal(next_b.denominator * (2 * j + 2) * (2 * j + 1)), z_pow),
        )
        series = ctx.add(series, term)
        if bound < tail:
            remainder = bound
            break
    if remainder is None:  # pragma: no cover - needs ~10^700 digits at z >= 1001
        raise ArithmeticError("Stirling series did not reach the requested precision")
    value = ctx.add(value, series)
    if shift:
        # ln Gamma(z) = ln Gamma(z + S) - ln(z (z+1) ... (z+S-1)), the product exact.
        product = math.prod(range(z, zs))
        value = ctx.subtract(value, ctx.ln(Decimal(product)))
        magnitude += abs(ctx.ln(Decimal(product)))
    # At most ~ (2 j + 10) correctly rounded operations, each within half an ulp of a
    # quantity no larger than `magnitude` (series terms are smaller than 1/(12 z)).
    ops = 2 * j + 12
    err = ctx.multiply(Decimal(ops) * magnitude, Decimal(10) ** (-(digits + 9))) + remainder
    return value, err
