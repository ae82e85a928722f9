"""Table (CDT) samplers for Poisson, Skellam and discrete Gaussian, within 2^-100 of the target.

A table holds the cumulative distribution of the target on a cut support, rounded to 128-bit
fixed point, and a guide table on the top bits of the uniform; one 64-bit word per draw
settles nearly every draw by one lookup. Building a table is slow (big-integer arithmetic,
about a second at 10^5 entries) and done once per parameter (cached).

Notes:
    Statistical distance. Let ``w_k`` be the target's weights (``p_k = w_k / Z``), computed
    as integers ``v_k`` in ``2^-W`` fixed point with ``sum_k |v_k - w_k| <= E`` (``N e``
    for a per-weight bound ``e`` carried through every floor of the recurrences below),
    ``S = sum v_k`` over the ``N`` kept values and ``T`` a rigorous bound on the weight
    outside them. The table stores
    ``F_k = min(floor(2^128 C_k / S), 2^128 - 1)`` with ``C_k`` the running sums, and a draw
    returns the first ``k`` with ``U < F_k`` for a uniform 128-bit ``U``, so it outputs ``k``
    with probability ``q_k = (F_k - F_(k-1)) / 2^128``, within ``2^-127`` of ``v_k / S``.
    By the triangle inequality over ``q_k, v_k/S, w_k/S, w_k/Z`` (with ``|Z - S| <= E + T``
    and ``Z >= S - E``), ``TV(q, p) <= N 2^-128 + (E + T) / (S - E)``; the builder computes this bound
    exactly (with :class:`fractions.Fraction`) and refuses a table whose bound exceeds
    ``2^-100``. This is the cumulative-distribution-table (inversion) method as analysed
    for discrete Gaussians in lattice cryptography (Dwarakanath and Galbraith, "Sampling
    from discrete Gaussians for lattice-based cryptography on a constrained device",
    AAECC 2014: precision and tail cut against statistical distance), with the precision
    (128 bits) and the cut (``2^-110`` of the mode's weight) sized for ``2^-100``; the
    bound above is proved here in full and checked numerically for each table.

    - Poisson(``mu``): ``w_k = mu^k e^-mu / k!`` with ``Z = 1``; ``w`` at the mode from the
      rigorously bounded ``ln k!`` of :mod:`dp.distributed._exact`, then the exact ratios
      ``w_(k+1) = w_k mu / (k+1)`` outwards (each floor adds at most one unit; the ratios
      are at most 1 away from the mode, so errors do not grow). The tails beyond the cut
      are bounded by geometric series with the last ratio.
    - Discrete Gaussian: ``w_x = q^(x^2)``, ``q = exp(-1 / (2 sigma^2))``, by
      ``w_(x+1) = w_x q^(2x+1)``; ``Z = sum over Z`` is never needed in closed form, only
      through ``T``.
    - Skellam: the autocorrelation of the Poisson weights (:func:`skellam_table`).

    Lookups: one word ``h`` (the top 64 bits of ``U``) and its top ``g`` bits index the guide
    table; when no table entry starts in that bucket the answer is known; otherwise a few
    vectorized steps finish it, and a draw whose ``h`` equals an entry's top word (chance
    ``~ N 2^-64``) reveals the low word of ``U`` and is decided in Python integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from dp.distributed._bits import BitSource
from dp.distributed._exact import shifted_ln_factorial

__all__ = [
    "MAX_TABLE_ENTRIES",
    "TABLE_DISTANCE",
    "CdtTable",
    "gaussian_table",
    "gaussian_table_fits",
    "poisson_table",
    "poisson_table_fits",
    "skellam_table",
    "skellam_table_fits",
]

TABLE_DISTANCE = 2.0**-100
"""The statistical distance every table is proven (and checked) to stay within, per draw."""

MAX_TABLE_ENTRIES = 1 << 20
"""Larger supports (``sigma`` above ~40,000) use the exact rejection samplers instead."""

_W = 256  # fixed-point bits of the weights
_TAIL_BITS = 110  # cut the support once the remaining weight is below 2^-110 of the mode's
_DIGITS = 100  # decimal digits for the starting values: 10^-100 << 2^-256
_WORD = (1 << 64) - 1
# Support half-width in standard deviations for a 2^-110 tail, with room to spare.
_SD_PER_HALF = 13.0
_GUIDE_PER_SD = 256  # guide buckets per standard deviation: ~1 % of draws refine
_MAX_GUIDE_BITS = 19  # 2 MiB of int32; ~5-10 % of draws refine, nearly all in one step
_SEVERAL = -(1 << 30)  # guide codes at or below this: several entries start in the bucket


@dataclass(frozen=True, eq=False)
class CdtTable:
    """A cumulative distribution table over ``offset .. offset + len(hi)``.

    Attributes:
        offset: the value of index 0.
        hi: top 64 bits of ``F_k`` (``k = 0 .. N-2``; ``F_(N-1) = 2^128`` is implicit).
        lo: low 64 bits of ``F_k``.
        guide: for each bucket of the top ``guide_bits`` bits of ``h``, the number of
            entries below it; ``-1 - that`` when one entry starts inside the bucket,
            ``-2^30 - that`` when several do.
        guide_bits: ``g``.
        distance: the proven bound on the statistical distance to the target.
    """

    offset: int
    hi: NDArray[np.uint64]
    lo: NDArray[np.uint64]
    guide: NDArray[np.int32]
    guide_bits: int
    distance: float

    def sample(self, n: int, source: BitSource) -> NDArray[np.int64]:
        """``n`` independent draws (see the module Notes)."""
        values: NDArray[np.int64] = np.add(self.indices(n, source), self.offset, dtype=np.int64)
        return values

    def indices(self, n: int, source: BitSource) -> NDArray[np.int32]:
        """``n`` independent draws minus :attr:`offset` (a difference of two needs no offset)."""
        h = source.words(n)
        # The bucket numbers are below 2^g: viewing them as int64 indices needs no copy.
        v = self.guide[(h >> np.uint64(64 - self.guide_bits)).view(np.int64)]
        ambiguous = np.flatnonzero(v < 0)
        if ambiguous.size:
            v[ambiguous] = self._refine(v[ambiguous].astype(np.int64), h[ambiguous], source)
        return v

    def _refine(
        self, code: NDArray[np.int64], h: NDArray[np.uint64], source: BitSource
    ) -> NDArray[np.int64]:
        """``#{k: F_k <= U}`` for draws whose bucket holds one entry (or several) of the table."""
        hi, size = self.hi, self.hi.shape[0]
        several = code <= _SEVERAL
        start = np.where(several, _SEVERAL - code, -1 - code)
        # One entry in the bucket: the answer is start or start + 1 (start < size here).
        first = hi[np.minimum(start, size - 1)]
        index: NDArray[np.int64] = start + (first < h)
        tie = first == h
        many = np.flatnonzero(several)
        if many.size:
            index[many] = np.searchsorted(hi, h[many], side="left")
            at = hi[np.minimum(index[many], size - 1)]
            tie[many] = (index[many] < size) & (at == h[many])
        # index = #{k: hi_k < h}; entries with hi_k == h need the low word of U (chance ~ N 2^-64).
        for t in np.flatnonzero(tie):
            low = source.word()
            k = int(index[t])
            while k < size and int(hi[k]) == int(h[t]) and int(self.lo[k]) <= low:
                k += 1
            index[t] = k
        return index


def _guide_bits(sd: float) -> int:
    return max(8, min(_MAX_GUIDE_BITS, math.ceil(math.log2(max(sd, 1.0) * _GUIDE_PER_SD))))


def _finish(
    offset: int, weights: list[int], error: int | Fraction, tail: Fraction, sd: float
) -> CdtTable:
    """Build the table from fixed-point weights whose errors sum to at most ``error``.

    ``tail`` bounds the target's weight outside the kept values (same fixed-point unit).
    """
    n = len(weights)
    total = sum(weights)
    distance = Fraction(n, 1 << 128) + (error + tail) / (total - error)
    if not distance <= Fraction(1, 1 << 100):
        raise ArithmeticError("the sampling table misses its 2^-100 distance bound")
    cut = (1 << 128) - 1
    running = 0
    his, los = [], []
    for w in weights[:-1]:
        running += w
        f = min((running << 128) // total, cut)
        his.append(f >> 64)
        los.append(f & _WORD)
    hi = np.array(his, dtype=np.uint64)
    lo = np.array(los, dtype=np.uint64)
    bits = _guide_bits(sd)
    edges = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
    starts = np.searchsorted(hi, edges, side="left").astype(np.int64)
    counts = np.append(starts[1:], hi.shape[0]) - starts
    # >= 0: the answer; -1 - start: one entry in the bucket; _SEVERAL - start: more than one.
    guide = np.where(counts == 0, starts, np.where(counts == 1, -1 - starts, _SEVERAL - starts))
    guide = guide.astype(np.int32)
    return CdtTable(
        offset=offset, hi=hi, lo=lo, guide=guide, guide_bits=bits, distance=float(distance)
    )


def _fixed(value: Decimal, ctx: Context) -> int:
    return int(ctx.multiply(value, Decimal(1 << _W)).to_integral_value())


def poisson_table_fits(mu: float) -> bool:
    """Whether Poisson(``mu``) gets a table (its support fits :data:`MAX_TABLE_ENTRIES`)."""
    return 2 * _SD_PER_HALF * math.sqrt(mu) + 64 <= MAX_TABLE_ENTRIES


@lru_cache(maxsize=4)
def poisson_table(mu: float) -> CdtTable:
    """The table of Poisson(``mu``), ``0 < mu``, within :data:`TABLE_DISTANCE` (module Notes)."""
    if not poisson_table_fits(mu):
        raise ValueError("mu is too large for a table")
    offset, weights, error, tail = _poisson_weights(mu)
    return _finish(offset, weights, len(weights) * error, tail, math.sqrt(mu))


def _poisson_weights(mu: float) -> tuple[int, list[int], int, Fraction]:
    """``(offset, weights, per-weight error, tail weight)`` of Poisson(``mu``) in ``2^-W`` units."""
    ratio = Fraction(mu)
    a, b = ratio.numerator, ratio.denominator
    mode = math.floor(mu)
    ctx = Context(prec=_DIGITS + 20, Emin=MIN_EMIN, Emax=MAX_EMAX)
    s, s_err = shifted_ln_factorial(mode, _DIGITS + 20)
    half_ln_2pi = ctx.divide(ctx.ln(ctx.multiply(Decimal(2), _pi(ctx))), 2)
    ln_mu = ctx.ln(Decimal(mu))
    log_w = ctx.subtract(
        ctx.subtract(ctx.multiply(Decimal(mode), ln_mu), Decimal(mu)), ctx.add(s, half_ln_2pi)
    )
    magnitude = abs(ctx.multiply(Decimal(mode), ln_mu)) + Decimal(mu) + abs(s) + 2
    log_err = s_err + magnitude * Decimal(10) ** (-(_DIGITS + 15))
    w_mode = ctx.exp(log_w)
    start = _fixed(w_mode, ctx)
    # |start - w_mode 2^W| <= w_mode 2^W (e^err - 1 + rounding) + 1 <= 2 err w 2^W + 2.
    start_err = (
        int(
            ctx.multiply(
                ctx.multiply(Decimal(2) * log_err + Decimal(10) ** -_DIGITS, w_mode),
                Decimal(1 << _W),
            )
        )
        + 2
    )
    threshold = start >> _TAIL_BITS
    # Right of the mode: w_(k+1) = w_k a / ((k+1) b), ratios <= 1, each floor adds <= 1.
    right = [start]
    k = mode
    while True:
        nxt = right[-1] * a // ((k + 1) * b)
        k += 1
        # Tail beyond k-1: sum_{j >= k} w_j <= w_k / (1 - mu / (k+1)).
        if nxt <= threshold and (k + 1) * b > a:
            right_tail = Fraction(nxt + start_err + len(right), 1) / (1 - Fraction(a, (k + 1) * b))
            break
        right.append(nxt)
    left: list[int] = []
    k = mode
    current = start
    left_tail = Fraction(0)
    while k > 0:
        nxt = current * k * b // a
        k -= 1
        if nxt <= threshold:
            # Tail at and below k: sum_{j <= k} w_j <= w_k / (1 - k / mu).
            left_tail = Fraction(nxt + start_err + len(left) + 1, 1) / (1 - Fraction(k * b, a))
            break
        left.append(nxt)
        current = nxt
    weights = left[::-1] + right
    offset = mode - len(left)
    error = start_err + max(len(left), len(right))
    return offset, weights, error, right_tail + left_tail


def skellam_table_fits(mu: float) -> bool:
    """Whether Skellam(``mu``) gets its own table (else: two Poisson draws or the exact path)."""
    return 2 * _SD_PER_HALF * math.sqrt(mu) + 64 <= MAX_TABLE_ENTRIES // 4  # build <~ 3 s


@lru_cache(maxsize=4)
def skellam_table(mu: float) -> CdtTable:
    """The table of Skellam(``mu``) = Poisson(``mu``) - Poisson(``mu``), within :data:`TABLE_DISTANCE`.

    Notes:
        The weights are the exact autocorrelation ``s_k = sum_j v_j v_(j+k)`` of the
        Poisson table's fixed-point weights, computed as one product of two huge integers
        (Kronecker substitution: the weights in fixed-width decimal slots, one operand
        reversed) by :mod:`decimal`, whose multiplication uses a number-theoretic
        transform, so the build is ``O(N log N)``. Slots are wide enough that no sum
        carries into the next. Errors (unit ``2^-2W``): ``sum_k |s_k - true s_k| <=
        N e (2^(W+1) + N e) + 2 T 2^W`` from the Poisson weights' errors ``e`` and tail
        ``T`` (pairs with a member outside the Poisson support); the far ends are trimmed
        while their total stays below ``2^-112`` and added to the tail. The distance is
        then bounded as in the module Notes.
    """
    if not skellam_table_fits(mu):
        raise ValueError("mu is too large for a Skellam table")
    _, weights, error, tail = _poisson_weights(mu)
    n = len(weights)
    digits = len(str(1 << (2 * _W + 1))) + len(str(n)) + 1  # a slot never carries
    forward = "".join(str(w).zfill(digits) for w in weights)  # w_0 most significant
    backward = "".join(str(w).zfill(digits) for w in reversed(weights))
    ctx = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
    product = str(ctx.multiply(Decimal(forward), Decimal(backward)))
    # Slot m (from the least significant end) holds s_k, k = m - (n - 1).
    product = product.zfill((2 * n - 1) * digits)
    end = len(product)
    slots = [int(product[end - digits * (m + 1) : end - digits * m]) for m in range(2 * n - 1)]
    one = 1 << _W
    total_error = n * error * (2 * one + n * error) + 2 * tail * one
    limit = (one * one) >> _TAIL_BITS
    lo, trimmed = 0, 0
    while lo < len(slots) - 1 and trimmed + slots[lo] <= limit:
        trimmed += slots[lo]
        lo += 1
    hi, trimmed_hi = len(slots), 0
    while hi - 1 > lo and trimmed_hi + slots[hi - 1] <= limit:
        trimmed_hi += slots[hi - 1]
        hi -= 1
    kept = slots[lo:hi]
    # True weight outside the kept values <= what was trimmed + every weight's error.
    outside = Fraction(trimmed + trimmed_hi) + total_error
    return _finish(lo - (n - 1), kept, total_error, outside, math.sqrt(2 * mu))


def _pi(ctx: Context) -> Decimal:
    """pi to the context's precision (Machin's formula, exact integer series)."""
    digits = ctx.prec + 10
    scale = 10 ** (digits + 10)

    def arctan_inv(x: int) -> int:
        total, term, n, sign = 0, scale // x, 1, 1
        x2 = x * x
        while term:
            total += sign * (term // n)
            term //= x2
            n += 2
            sign = -sign
        return total

    value = 4 * (4 * arctan_inv(5) - arctan_inv(239))
    return ctx.divide(Decimal(value), Decimal(scale))


def gaussian_table_fits(variance: float) -> bool:
    """Whether ``N_Z(0, variance)`` gets a table (its support fits :data:`MAX_TABLE_ENTRIES`)."""
    return 2 * _SD_PER_HALF * math.sqrt(variance) + 64 <= MAX_TABLE_ENTRIES


@lru_cache(maxsize=4)
def gaussian_table(variance: float) -> CdtTable:
    """The table of ``N_Z(0, variance)`` within :data:`TABLE_DISTANCE` (module Notes)."""
    if not gaussian_table_fits(variance):
        raise ValueError("variance is too large for a table")
    ctx = Context(prec=_DIGITS + 20, Emin=MIN_EMIN, Emax=MAX_EMAX)
    s2 = Fraction(variance)
    inv = ctx.divide(Decimal(s2.denominator), Decimal(2 * s2.numerator))  # 1 / (2 sigma^2)
    one = 1 << _W
    q1 = _fixed(ctx.exp(-inv), ctx)  # q, within one unit
    q2 = _fixed(ctx.exp(ctx.multiply(Decimal(-2), inv)), ctx)  # q^2, within one unit
    threshold = one >> _TAIL_BITS
    half = [one]  # w_0 = 1 exactly
    r = q1  # q^(2x+1) for the current x, error <= 2x + 1 units
    while True:
        nxt = half[-1] * r >> _W
        r = r * q2 >> _W
        if nxt <= threshold:
            break
        half.append(nxt)
    x_max = len(half)  # support is -(x_max - 1) .. x_max - 1
    error = x_max * x_max + x_max + 1  # sum_{j < x} (2j + 2) + 1, see the module Notes
    # Weight beyond x_max - 1 on one side: w_(x_max) / (1 - q^(2 x_max + 1)), r holds that ratio.
    ratio_hi = Fraction(r + 2 * x_max + 3, one)
    side_tail = Fraction(nxt + error, 1) / (1 - ratio_hi)
    weights = half[:0:-1] + half
    return _finish(-(x_max - 1), weights, len(weights) * error, 2 * side_tail, math.sqrt(variance))
