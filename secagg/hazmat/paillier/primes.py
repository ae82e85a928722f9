"""Safe primes ``p = 2p' + 1`` for the Paillier modulus: a windowed sieve, a Fermat screen, BPSW + Miller-Rabin."""

from __future__ import annotations

import math
import os

import gmpy2
import numpy as np
from gmpy2 import mpz

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.random import randbits

__all__ = ["check_safe_prime", "generate_safe_prime"]

_SIEVE_LIMIT = 1 << 16
_SIEVE_WINDOW = 1 << 14
_MR_ROUNDS = 64


def _primes_below(limit: int) -> tuple[int, ...]:
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for k in range(2, math.isqrt(limit) + 1):
        if sieve[k]:
            sieve[k * k :: k] = False
    return tuple(int(p) for p in np.flatnonzero(sieve))


_SMALL_PRIMES = _primes_below(_SIEVE_LIMIT)[
    1:
]  # odd primes only; candidates are odd by construction


def generate_safe_prime(bits: int, *, rng: RandomSource = os.urandom) -> int:
    """A random safe prime ``p = 2p' + 1`` of exactly ``bits`` bits with its two top bits set.

    Candidates ``p'`` are drawn from ``rng``, sieved in windows so that neither ``p'`` nor ``2p' + 1`` has a
    factor below 2^16, screened with a base-2 Fermat test, and accepted only if ``gmpy2.is_prime`` (BPSW plus
    Miller-Rabin) accepts both ``p'`` and ``p`` with 64 rounds.

    Notes:
        The two top bits are set so the product of two such primes has exactly ``2 * bits`` bits. The sieve
        (Wiener, "Safe prime generation with a combined sieve", 2003) rejects ~97% of candidates before any
        exponentiation; it only speeds up the search and does not change the distribution's support.

    Raises:
        InvalidParameters: ``bits`` is too small to be meaningful.
    """
    if bits < 16:
        raise InvalidParameters("safe primes need at least 16 bits")
    qbits = bits - 1
    while True:
        start = randbits(rng, qbits) | (3 << (qbits - 2)) | 1
        alive = np.ones(_SIEVE_WINDOW, dtype=bool)  # alive[k] <=> q = start + 2k survives the sieve
        for r in _SMALL_PRIMES:
            if r * r > (
                start << 1
            ):  # no need to sieve by primes that could equal the candidate itself
                break
            half = (r + 1) // 2  # inverse of 2 mod r
            s = start % r
            alive[((-s) * half) % r :: r] = False  # r | q
            alive[(((r - 1) // 2 - s) * half) % r :: r] = False  # r | 2q + 1
        for k in np.flatnonzero(alive):
            q = mpz(start + 2 * int(k))
            if q.bit_length() != qbits:
                break
            if gmpy2.powmod(2, q - 1, q) != 1:
                continue
            p = 2 * q + 1
            # Pocklington for p = 2q + 1 with q prime: 2^(p-1) = 1 mod p and 2^2 != 1 mod p imply p prime.
            if gmpy2.powmod(2, p - 1, p) != 1:
                continue
            if gmpy2.is_prime(q, _MR_ROUNDS) and gmpy2.is_prime(p, _MR_ROUNDS):
                return int(p)


def check_safe_prime(p: int) -> None:
    """Refuse ``p`` unless both ``p`` and ``(p - 1) / 2`` are prime (64 Miller-Rabin rounds after BPSW).

    Raises:
        InvalidParameters: ``p`` is not a safe prime.
    """
    if (
        not (gmpy2.is_prime(p, _MR_ROUNDS) and gmpy2.is_prime((p - 1) // 2, _MR_ROUNDS))
        or p % 2 == 0
    ):
        raise InvalidParameters("the given factor is not a safe prime")
