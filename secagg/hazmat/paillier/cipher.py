"""Paillier ciphertexts: encryption built directly, homomorphic addition and the fixed-width byte form.

Notes:
    Encryption is ``(1 + M N) * r^N mod N^2`` built directly (``phe``'s ``raw_encrypt`` always exponentiates);
    the randomness ``r^N`` is a precomputed obfuscator (:mod:`secagg.hazmat.paillier.obfuscators`).
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

from secagg.hazmat.paillier.keys import ThresholdPublicKey
from secagg.hazmat.paillier.obfuscators import ObfuscatorPool

__all__ = [
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "encrypt_plaintexts",
    "encrypt_with",
    "int_to_bytes",
    "multiply_ciphertexts",
]


def int_to_bytes(value: int) -> bytes:
    """Minimal big-endian encoding of a non-negative integer (proof elements, folds: not fixed-width)."""
    return int(value).to_bytes(max(1, (int(value).bit_length() + 7) // 8), "big")


def encrypt_plaintexts(
    public_key: ThresholdPublicKey, plaintexts: Sequence[int], pool: ObfuscatorPool
) -> list[int]:
    """Encrypt each plaintext in ``[0, N)`` as ``(1 + M N) * obfuscator mod N^2``.

    Raises:
        ValueError: a plaintext is outside ``[0, N)``.
    """
    return encrypt_with(public_key, plaintexts, pool.take(len(plaintexts)))


def encrypt_with(
    public_key: ThresholdPublicKey, plaintexts: Sequence[int], obfuscators: Sequence[int]
) -> list[int]:
    """Encrypt each plaintext with the given obfuscator (taken once from an :class:`ObfuscatorPool`).

    Raises:
        ValueError: a plaintext is outside ``[0, N)``.
    """
    n = mpz(public_key.n)
    nsq = n * n
    out: list[int] = []
    for plaintext, obfuscator in zip(plaintexts, obfuscators, strict=True):
        if not 0 <= plaintext < n:
            raise ValueError("plaintext outside [0, N)")
        out.append(int((1 + mpz(plaintext) * n) * obfuscator % nsq))
    return out


def multiply_ciphertexts(
    public_key: ThresholdPublicKey, left: Sequence[int], right: Sequence[int]
) -> list[int]:
    """Homomorphic addition: ``left[j] * right[j] mod N^2`` (no re-obfuscation)."""
    nsq = mpz(public_key.nsquare)
    return [int(mpz(a) * b % nsq) for a, b in zip(left, right, strict=True)]


def ciphertexts_to_bytes(public_key: ThresholdPublicKey, ciphertexts: Sequence[int]) -> bytes:
    """Fixed-width big-endian concatenation (``public_key.ciphertext_bytes`` each)."""
    width = public_key.ciphertext_bytes
    return b"".join(int(c).to_bytes(width, "big") for c in ciphertexts)


def ciphertexts_from_bytes(public_key: ThresholdPublicKey, data: bytes) -> list[int]:
    """Inverse of :func:`ciphertexts_to_bytes`, refusing anything outside ``Z*_{N^2}``.

    Raises:
        ValueError: wrong length, or an element that is 0, >= N^2, or shares a factor with N.

    Notes:
        An element sharing a factor with ``N`` would zero out or poison the aggregate (and would reveal a
        factor of ``N``), so it is refused at the door.
    """
    width = public_key.ciphertext_bytes
    if len(data) % width:
        raise ValueError("ciphertext bytes are not a multiple of the ciphertext width")
    n = mpz(public_key.n)
    nsq = n * n
    out: list[int] = []
    # units are checked at once: a product is a unit iff every factor is one (one gcd instead of one each)
    product = mpz(1)
    for offset in range(0, len(data), width):
        value = int.from_bytes(data[offset : offset + width], "big")
        if not 0 < value < nsq:
            raise ValueError("ciphertext outside Z*_{N^2}")
        product = product * value % n
        out.append(value)
    if gmpy2.gcd(product, n) != 1:
        raise ValueError("ciphertext outside Z*_{N^2}")
    return out
