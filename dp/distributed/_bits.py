"""Random bits for the exact samplers: a word source and two lazy-uniform primitives.

Everything random in ``dp.distributed`` flows through :class:`BitSource`, which draws bytes
from an injectable callable (by default an AES-256-CTR keystream keyed with 32 bytes of
``os.urandom``, see :class:`OsSeededStream`). The two non-trivial primitives here are
:func:`bernoulli_exp_neg`, a vectorized, *exact* ``Bernoulli(exp(-x))``, and
:func:`floor_neg_log_uniform`, a vectorized, *exact* geometric variate ``floor(-s ln U)``.

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

    The geometric variate uses the same idea on inversion: ``G = floor(-s ln U)`` has
    ``P(G >= m) = P(U <= exp(-m/s)) = exp(-1/s)^m`` exactly (Devroye 1986, "Non-Uniform
    Random Variate Generation", X.2, the geometric distribution by inversion), so one uniform replaces
    the ``Bernoulli(exp(-1))`` loop and the uniform-plus-Bernoulli front end of Canonne,
    Kamath and Steinke (2020), Algorithm 2. Its float path decides the floor only when the
    whole interval of values consistent with the revealed 53 bits, widened by a rigorous
    float error bound, lies in one integer cell; otherwise :mod:`decimal` and more bits of
    ``U`` settle it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from decimal import MAX_EMAX, MIN_EMIN, ROUND_CEILING, ROUND_FLOOR, Context, Decimal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

__all__ = [
    "BitSource",
    "ExactEvaluator",
    "OsSeededStream",
    "RandomBytes",
    "bernoulli_exp_neg",
    "floor_neg_log_uniform",
]

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes: ``rng(n)`` returns ``n`` bytes (e.g. ``os.urandom``)."""

ExactEvaluator = Callable[[int], tuple[Decimal, Decimal]]
"""``evaluate(digits) -> (x_approx, err)`` with ``|x_approx - x| <= err``, rigorously."""

_TWO_M53 = 2.0**-53
# Relative error allowed for numpy.exp in the fast path (true error: a few ulps).
_EXP_SLACK = 2.0**-30
_SMALLEST_POSITIVE = float(np.nextafter(0.0, 1.0))
# Relative error allowed for numpy.log in the geometric fast path (true error: a few ulps).
_LOG_SLACK = 2.0**-40
_LN2_53 = 53.0 * math.log(2.0)
# Rekey the default stream after this many bytes (well below AES's 2^64-block CTR bound).
_REKEY_BYTES = 1 << 32
_CHUNK = 1 << 20
_ZERO_CHUNK = memoryview(bytes(_CHUNK))


class OsSeededStream:
    """The default byte source: an AES-256-CTR keystream keyed with 32 bytes of ``os.urandom``.

    Notes:
        The noise protects a silo's update, so its randomness must be cryptographic, but
        the exact samplers consume tens of megabytes per million coordinates and
        ``os.urandom`` delivers about 0.5 GB/s here against several GB/s for AES with
        AES-NI. A block cipher in counter mode under a fresh OS-random key is the
        CTR_DRBG construction of NIST SP 800-90A Rev. 1 (section 10.2; here without its
        derivation function, since the seed is already full-entropy OS output), and the
        same keystream the masking PRG uses (DESIGN section 4.1). The kernel's own
        ``getrandom`` is likewise a ChaCha20 expansion of a pooled seed. The key is
        replaced with fresh OS bytes every 4 GiB, far below the CTR limit, and never
        leaves the object (``repr`` hides it).
    """

    __slots__ = ("_encryptor", "_used")

    def __init__(self) -> None:
        self._rekey()

    def __repr__(self) -> str:
        return "OsSeededStream(<hidden>)"

    def _rekey(self) -> None:
        self._encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        self._used = 0

    def __call__(self, n: int) -> bytes:
        return self.array(n).tobytes()

    def array(self, n: int) -> NDArray[np.uint8]:
        """``n`` keystream bytes as a fresh array (no intermediate ``bytes`` copy)."""
        if self._used + n > _REKEY_BYTES:
            self._rekey()
        self._used += n
        out = np.empty(n + _CHUNK, dtype=np.uint8)  # update_into wants block-size slack
        view = out.data
        for start in range(0, n, _CHUNK):
            size = min(_CHUNK, n - start)
            self._encryptor.update_into(_ZERO_CHUNK[:size], view[start : start + size + 16])
        return out[:n]


class BitSource:
    """Uniform random words drawn from an injectable byte source.

    Args:
        rng: callable returning ``n`` random bytes; by default a fresh
            :class:`OsSeededStream` (AES-256-CTR under an ``os.urandom`` key). Tests inject
            a seeded source to be reproducible; production must not.

    Notes:
        Never numpy's RNG: the noise protects a silo's update, so it must come from a
        cryptographic source (DESIGN section 4.1 applies the same rule to masks).
    """

    def __init__(self, rng: RandomBytes | None = None) -> None:
        self._rng: RandomBytes = rng if rng is not None else OsSeededStream()

    def __repr__(self) -> str:
        return "BitSource(<hidden>)"

    def words(self, n: int) -> NDArray[np.uint64]:
        """``n`` independent uniform 64-bit words."""
        if n <= 0:
            return np.zeros(0, dtype=np.uint64)
        if isinstance(self._rng, OsSeededStream):
            return self._rng.array(8 * n).view("<u8").astype(np.uint64, copy=False)
        raw = self._rng(8 * n)
        if len(raw) != 8 * n:
            raise ValueError("the random source returned the wrong number of bytes")
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)

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
    # One exp per draw: exp(-(x +- eta)) lies in exp(-x_hat) * [1 - eta, 1 + 2 eta] for
    # eta <= 1/2 (exp(-e) >= 1 - e, exp(e) <= 1 + 2e); a larger eta decides nothing.
    small = eta <= 0.5
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        e = np.exp(-x_hat)
        e_lo = np.where(small, e * (1.0 - eta) * (1.0 - _EXP_SLACK), 0.0)
        e_hi = np.where(small, e * (1.0 + 2.0 * eta) * (1.0 + _EXP_SLACK), np.inf)
    # An underflowed upper bound is not an upper bound: keep it strictly positive.
    e_hi = np.maximum(e_hi, _SMALLEST_POSITIVE)
    accept = u_hi <= e_lo
    undecided = ~accept & (u_lo < e_hi)
    out = accept
    for i in np.flatnonzero(undecided):
        out[i] = _decide_exactly(int(u[i]), exact(int(i)), source)
    return out


def _floor_neg_log_exactly(numerator: int, log2_den: int, scale: int, source: BitSource) -> int:
    """``floor(-scale ln U)`` for the lazy uniform ``U`` with the revealed prefix, exactly."""
    digits = 40
    while True:
        if numerator == 0:  # U < 2^-L: its logarithm is unbounded so far
            numerator = source.word()
            log2_den += 64
            continue
        ctx = Context(prec=digits, Emin=MIN_EMIN, Emax=MAX_EMAX)
        # U in [a, b): -s ln U in (-s ln b, -s ln a]; ln and the products are correctly
        # rounded, so each end is within a few ulps of its true value.
        ends = []
        for value in (numerator + 1, numerator):
            ln_u = ctx.subtract(
                ctx.ln(Decimal(value)), ctx.multiply(Decimal(log2_den), ctx.ln(Decimal(2)))
            )
            ends.append(ctx.multiply(Decimal(-scale), ln_u))
        lo, hi = ends
        slack = (abs(hi) + Decimal(log2_den) * scale + 1) * Decimal(10) ** (3 - digits)
        m_lo = math.floor(ctx.subtract(lo, slack))
        m_hi = math.floor(ctx.add(hi, slack))
        if m_lo == m_hi:
            return m_lo
        numerator = (numerator << 64) | source.word()
        log2_den += 64
        digits += 25


def floor_neg_log_uniform(
    scale: int, n: int, source: BitSource, *, spare_bit: bool = False
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Exact, vectorized ``G_i = floor(-scale ln U_i)`` for ``n`` independent uniforms.

    ``P(G >= m) = exp(-m / scale)``: a geometric variate on ``{0, 1, ...}`` with ratio
    ``exp(-1/scale)``, the magnitude of a discrete Laplace.

    Args:
        scale: a positive integer ``s``.
        n: how many variates.
        source: where the uniform bits come from.
        spare_bit: also return one fair bit per variate, taken from bits of the same
            64-bit word that the uniform does not use (an all-``False`` array otherwise).

    Returns:
        ``(G, bits)``.

    Notes:
        Inversion of a lazily revealed uniform (module docstring); the float path is
        certified by an error bound, the rest settled in :mod:`decimal`.
    """
    w = source.words(n)
    bits = (w & np.uint64(1)).astype(bool) if spare_bit else np.zeros(n, dtype=bool)
    u = w >> np.uint64(11)
    uf = u.astype(np.float64)
    with np.errstate(divide="ignore"):
        # -s ln U over U in [u, u+1) 2^-53 spans [lo, lo + s ln(1 + 1/u)] with
        # s ln(1 + 1/u) <= s / u; the subtraction 53 ln 2 - ln(u+1) is done in float64.
        lo = scale * (_LN2_53 - np.log(uf + 1.0))
        width = scale / uf
    err = _LOG_SLACK * (scale * _LN2_53 + np.abs(lo) + 1.0)
    g_lo = np.floor(lo - err)
    g_hi = np.floor(lo + width + err)
    out = g_lo.astype(np.int64)
    for i in np.flatnonzero(g_lo != g_hi):
        out[i] = _floor_neg_log_exactly(int(u[i]), 53, scale, source)
    return out, bits
