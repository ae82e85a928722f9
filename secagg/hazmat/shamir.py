"""Shamir t-of-n secret sharing of 32-byte secrets over the Mersenne prime field GF(2^521 - 1).

Notes:
    - One 32-byte secret fits in one field element (2^256 < p), so a share is one 66-byte number and
      reconstruction is one Lagrange interpolation at 0 (Shamir 1979).
    - Coefficients are drawn uniformly by rejection sampling from ``rng`` (``os.urandom`` by default); reducing
      a wider random integer mod p would bias them.
    - x-coordinates are roster indices >= 1, never 0 (x = 0 would be the secret itself).
    - Lagrange coefficients at 0 depend only on the set of x-coordinates; they are cached per x-set because the
      server reconstructs many secrets from the same survivors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache

from secagg.errors import InvalidParameters, ProtocolViolation
from secagg.hazmat.keys import RandomSource

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "reconstruct", "split"]

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66


def _random_element(rng: RandomSource) -> int:
    while True:
        value = int.from_bytes(rng(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value


def split(
    secret: bytes, *, threshold: int, xs: Sequence[int], rng: RandomSource = os.urandom
) -> dict[int, bytes]:
    """Split ``secret`` into shares at ``xs``; any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise InvalidParameters("Shamir secrets are exactly 32 bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise InvalidParameters("x-coordinates must be distinct and >= 1")
    if not 1 <= threshold <= len(xs):
        raise InvalidParameters("threshold must be between 1 and the number of shares")
    coefficients = [int.from_bytes(secret, "big")] + [
        _random_element(rng) for _ in range(threshold - 1)
    ]
    shares: dict[int, bytes] = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def reconstruct(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """Reconstruct the secret from at least ``threshold`` shares (uses the first ``threshold`` by x).

    Raises:
        InvalidParameters: fewer than ``threshold`` shares.
        ProtocolViolation: a share is malformed, or the shares do not encode a 32-byte secret (tampering).
    """
    if len(shares) < threshold:
        raise InvalidParameters(f"need {threshold} shares, got {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    secret = 0
    for x, coefficient in zip(xs, _lagrange_at_zero(xs), strict=True):
        share = shares[x]
        if len(share) != SHARE_BYTES or (y := int.from_bytes(share, "big")) >= PRIME:
            raise ProtocolViolation("malformed Shamir share")
        secret = (secret + y * coefficient) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ProtocolViolation("Shamir shares are inconsistent")
    return secret.to_bytes(SECRET_BYTES, "big")
