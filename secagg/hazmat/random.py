"""Uniform integers drawn from an injected :data:`~secagg.hazmat.keys.RandomSource` (no modulo bias).

Notes:
    Every draw goes through the caller's ``rng`` (``os.urandom`` in production, a seeded source in tests,
    STYLE rule 3). Ranges that are not a power of two are sampled by rejection: reducing a wider random
    integer modulo the bound would bias the result towards small values.
"""

from __future__ import annotations

import math

from secagg.hazmat.keys import RandomSource

__all__ = ["randbelow", "randbits", "random_unit"]


def randbits(rng: RandomSource, bits: int) -> int:
    """A uniform integer of at most ``bits`` bits (the top ``bits`` bits of ``ceil(bits / 8)`` random bytes)."""
    nbytes = (bits + 7) // 8
    return int.from_bytes(rng(nbytes), "big") >> (8 * nbytes - bits)


def randbelow(rng: RandomSource, bound: int) -> int:
    """Uniform in ``[0, bound)`` by rejection sampling.

    Raises:
        ValueError: ``bound`` is not positive.
    """
    if bound < 1:
        raise ValueError("bound must be positive")
    bits = bound.bit_length()
    while True:
        candidate = randbits(rng, bits)
        if candidate < bound:
            return candidate


def random_unit(rng: RandomSource, modulus: int) -> int:
    """Uniform element of ``Z*_modulus`` (a nonzero residue coprime to ``modulus``)."""
    while True:
        candidate = randbelow(rng, modulus)
        if candidate > 0 and math.gcd(candidate, modulus) == 1:
            return candidate
