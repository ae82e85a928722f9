"""Random bits for the exact samplers: a buffered word source and the lazy-uniform test.

Everything random in ``dp.distributed`` flows through :class:`BitSource`, which draws bytes
from an injectable callable (``os.urandom`` by default). The one non-trivial primitive here
is :func:`bernoulli_exp_neg`, a vectorized, *exact* ``Bernoulli(exp(-x))``.

Notes:
    Exactness of ``Bernoulli(exp(-x))`` (the building block of every sampler in this
    package) comes from treating the uniform ``U`` as a lazily revealed real number
    (von Neumann 1951; Karney 2016, "Sampling exactly from the normal distribution"): we
    reveal 53 bits and decide ``U < exp(-x)`` in float64 only when the float estimate of
    ``exp(-x)`` is farther from ``U``'s interval than a stated error bound; otherwise we
    reveal 64 more bits and decide with Python's :mod:`decimal`, whose ``exp`` and ``ln``
    are correctly rounded, with rigorous interval bounds. The float path relies only on
    IEEE-754 basic operations and on ``numpy.exp``/``log1p`` being accurate to 2^-30
    relative (they are accurate to a few ulps, about 2^-51): a million-fold safety margin.
    The decision therefore equals ``[U < exp(-x)]`` for a uniform real ``U``: no
    floating-point bias of the kind Mironov (CCS 2012) exploited in the Laplace mechanism.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import MAX_EMAX, MIN_EMIN, ROUND_CEILING, ROUND_FLOOR, Context, Decimal

import numpy as np
from numpy.typing import NDArray

__all__ = ["BitSource", "ExactEvaluator", "RandomBytes", "bernoulli_exp_neg"]

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes: ``rng(n)`` returns ``n`` bytes (``os.urandom``)."""

ExactEvaluator = Callable[[int], tuple[Decimal, Decimal]]
"""``evaluate(digits) -> (x_approx, err)`` with ``|x_approx - x| <= err``, rigorously."""

_TWO_M53 = 2.0**-53
# Relative error allowed for numpy.exp in the fast path (true error: a few ulps).
_EXP_SLACK = 2.0**-30
_SMALLEST_POSITIVE = float(np.nextafter(0.0, 1.0))


class BitSource:
    """Uniform random words drawn from an injectable byte source.

    Args:
        rng: callable returning ``n`` random bytes; ``os.urandom`` by default. Tests inject
            a seeded source to be reproducible; production must not.

    Notes:
        Never numpy's RNG: the noise protects a silo's update, so it must come from a
        cryptographic source (DESIGN section 4.1 applies the same rule to masks).
    """

    def __init__(self, rng: RandomBytes | None = None) -> None:
        self._rng: RandomBytes = rng if rng is not None else os.urandom

    def __repr__(self) -> str:
        return "BitSource(<hidden>)"

    def words(self, n: int) -> NDArray[np.uint64]:
        """``n`` independent uniform 64-bit words."""
        if n <= 0:
            return np.zeros(0, dtype=np.uint64)
        raw = self._rng(8 * n)
        if len(raw) != 8 * n:
            raise ValueError("the random source returned the wrong number of bytes")
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64)

    def word(self) -> int:
        """One uniform 64-bit word as a Python int."""
        return int.from_bytes(self._rng(8), "little")

    def uniform53(self, n: int) -> NDArray[np.uint64]:
        """``n`` uniform 53-bit integers: the first 53 bits of ``n`` lazy uniform reals."""
        return self.words(n) >> np.uint64(11)

    def below(self, bound: int, n: int) -> NDArray[np.int64]:
        """``n`` exactly uniform integers in ``[0, bound)`` (rejection, no modulo bias)."""
        if not 1 <= bound <= 2**62:
            raise ValueError("bound must be in [1, 2**62]")
        out = np.empty(n, dtype=np.int64)
        if bound == 1:
            out.fill(0)
            return out
        shift = np.uint64(64 - (bound - 1).bit_length())
        todo = np.arange(n)
        while todo.size:
            cand = (self.words(todo.size) >> shift).astype(np.int64)
            ok = cand < bound
            out[todo[ok]] = cand[ok]
            todo = todo[~ok]
        return out

    def bits(self, n: int) -> NDArray[np.bool_]:
        """``n`` independent fair bits."""
        raw = np.frombuffer(self._rng((n + 7) // 8), dtype=np.uint8)
        return np.unpackbits(raw)[:n].astype(bool)


def _dyadic(numerator: int, log2_denominator: int) -> Decimal:
    """The exact decimal value of ``numerator / 2**log2_denominator``."""
    # numerator / 2^L = numerator * 5^L / 10^L, exact with an explicit exponent.
    scaled = numerator * 5**log2_denominator
    sign = 0 if scaled >= 0 else 1
    digits = tuple(int(c) for c in str(abs(scaled)))
    return Decimal((sign, digits, -log2_denominator))


def _decide_exactly(
    u53: int, evaluate: ExactEvaluator, source: BitSource, *, start_digits: int = 40
) -> bool:
    """Decide ``U < exp(-x)`` exactly, revealing more bits of ``U`` until it is settled."""
    numerator, log2_den = u53, 53
    digits = start_digits
    while True:
        x_approx, err = evaluate(digits)
        nearest = Context(prec=digits, Emin=MIN_EMIN, Emax=MAX_EMAX)
        down = Context(prec=digits, Emin=MIN_EMIN, Emax=MAX_EMAX, rounding=ROUND_FLOOR)
        up = Context(prec=digits, Emin=MIN_EMIN, Emax=MAX_EMAX, rounding=ROUND_CEILING)
        e = nearest.exp(nearest.minus(x_approx))
        # exp is correctly rounded: relative error <= half an ulp <= 10^(1-digits).
        rel = Decimal(10) ** (1 - digits)
        # exp(-x) = exp(-x_approx) * exp(x_approx - x), |x_approx - x| <= err <= 1/2:
        # exp(-err) >= 1 - err and exp(err) <= 1 + 2 err.
        if err >= Decimal("0.5"):
            digits += 40
            continue
        lo = down.multiply(down.multiply(e, down.subtract(1, err)), down.subtract(1, rel))
        hi = up.multiply(up.multiply(e, up.add(1, up.multiply(2, err))), up.add(1, rel))
        u_lo = _dyadic(numerator, log2_den)
        u_hi = _dyadic(numerator + 1, log2_den)
        if u_hi <= lo:
            return True
        if u_lo >= hi:
            return False
        numerator = (numerator << 64) | source.word()
        log2_den += 64
        digits += 25


def bernoulli_exp_neg(
    x_hat: NDArray[np.float64],
    eta: NDArray[np.float64],
    exact: Callable[[int], ExactEvaluator],
    source: BitSource,
) -> NDArray[np.bool_]:
    """Exact, vectorized ``Bernoulli(exp(-x_i))`` for every ``i``.

    Args:
        x_hat: float64 estimates of ``x_i >= 0``.
        eta: rigorous bounds on ``|x_hat_i - x_i|`` (float64, absolute).
        exact: ``exact(i)`` returns an evaluator of ``x_i`` to any decimal precision, used
            only for the rare draws the float path cannot settle.
        source: where the uniform bits come from.

    Returns:
        A boolean array, ``True`` with probability exactly ``exp(-x_i)``.

    Notes:
        See the module docstring for the exactness argument (lazy uniform, certified
        float path, correctly rounded decimal fallback).
    """
    n = x_hat.shape[0]
    u = source.uniform53(n)
    u_lo = u.astype(np.float64) * _TWO_M53  # exact: u < 2^53
    u_hi = (u + np.uint64(1)).astype(np.float64) * _TWO_M53  # exact: u + 1 <= 2^53
    with np.errstate(over="ignore", under="ignore"):
        e_lo = np.exp(-(x_hat + eta)) * (1.0 - _EXP_SLACK)
        e_hi = np.exp(-(x_hat - eta)) * (1.0 + _EXP_SLACK)
    # An underflowed upper bound is not an upper bound: keep it strictly positive.
    e_hi = np.maximum(e_hi, _SMALLEST_POSITIVE)
    accept = u_hi <= e_lo
    reject = u_lo >= e_hi
    out = accept.copy()
    for i in np.flatnonzero(~accept & ~reject):
        out[i] = _decide_exactly(int(u[i]), exact(int(i)), source)
    return out
