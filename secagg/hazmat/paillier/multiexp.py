"""Products of many powers, ``prod_j b_j^(e_j) mod M``, with shared squarings (Pippenger's bucket method).

Notes:
    The batch tests of partial decryptions fold ~10,000 group elements with 128-bit exponents. One ``powmod``
    per element costs ~160 modular multiplications each (1.6 million for the fold); the bucket method
    (Pippenger 1980; the form used for batch verification by Bernstein et al., "Faster batch forgery
    identification", 2012) splits every exponent into ``c``-bit digits, multiplies each base into the bucket of
    its digit (one multiplication per base and window) and sums the buckets by running products, so the fold
    costs ``ceil(bits / c) * (n + 2^(c+1))`` multiplications plus ``bits`` squarings: ~150,000 for
    ``n = 10,000``, ten times fewer. It computes the same integer as the naive product (tests check both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

__all__ = ["multi_exponentiation"]

_NAIVE_BELOW = 16
_MAX_WINDOW = 16


def _window_bits(count: int, exponent_bits: int) -> int:
    """The digit width ``c`` minimising ``ceil(bits / c) * (count + 2^(c+1))``."""
    return min(
        range(1, _MAX_WINDOW + 1),
        key=lambda c: -(-exponent_bits // c) * (count + (2 << c)),
    )


def _digits(exponents: Sequence[int], exponent_bits: int, window: int) -> np.ndarray:
    """``digits[w, j]``: the ``w``-th most significant ``window``-bit digit of ``exponents[j]``."""
    nbytes = -(-exponent_bits // 8)
    raw = b"".join(int(e).to_bytes(nbytes, "big") for e in exponents)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(len(exponents), nbytes), axis=1)
    windows = -(-(nbytes * 8) // window)
    padded = np.zeros((len(exponents), windows * window), dtype=np.int64)
    padded[:, windows * window - nbytes * 8 :] = bits
    weights = np.int64(1) << np.arange(window - 1, -1, -1, dtype=np.int64)
    return (padded.reshape(len(exponents), windows, window) @ weights).T


def multi_exponentiation(
    bases: Sequence[Any], exponents: Sequence[int], modulus: Any, *, exponent_bits: int
) -> Any:
    """``prod_j bases[j]^exponents[j] mod modulus`` for non-negative exponents below ``2^exponent_bits``.

    Raises:
        ValueError: different lengths, a negative exponent or one of more than ``exponent_bits`` bits.
    """
    if len(bases) != len(exponents):
        raise ValueError("one exponent per base is required")
    if any(e < 0 or int(e).bit_length() > exponent_bits for e in exponents):
        raise ValueError("exponents must be non-negative and fit in exponent_bits")
    mod = mpz(modulus)
    if len(bases) < _NAIVE_BELOW:
        product = mpz(1)
        for base, exponent in zip(bases, exponents, strict=True):
            product = product * gmpy2.powmod(base, exponent, mod) % mod
        return product
    window = _window_bits(len(bases), exponent_bits)
    digits = _digits(exponents, exponent_bits, window)
    elements = [mpz(b) % mod for b in bases]
    acc: Any = None
    for column in digits:
        if acc is not None:
            acc = gmpy2.powmod(acc, 1 << window, mod)  # ``window`` squarings in one C call
        buckets: list[Any] = [None] * (1 << window)
        for element, digit in zip(elements, column.tolist(), strict=True):
            if digit:
                held = buckets[digit]
                buckets[digit] = element if held is None else held * element % mod
        running: Any = None  # prod_{d' >= d} bucket[d']
        total: Any = None  # prod_d bucket[d]^d, as a product of running products
        for held in reversed(buckets[1:]):
            if held is not None:
                running = held if running is None else running * held % mod
            if running is not None:
                total = running if total is None else total * running % mod
        if total is not None:
            acc = total if acc is None else acc * total % mod
    return mpz(1) if acc is None else acc
