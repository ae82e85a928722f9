"""Threshold decryption: each party's partial decryption, and Lagrange combination of ``t`` verified ones."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import gmpy2
from gmpy2 import mpz

from secagg.errors import DecryptionError, InvalidParameters, InvalidProof, RoundAborted
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier.keys import KeyShare, ThresholdPublicKey
from secagg.hazmat.paillier.proofs import (
    PartialDecryption,
    prove_partial_decryption,
    verify_partial_decryption,
)

__all__ = ["combine_partial_decryptions", "lagrange_combine", "partial_decrypt"]


def partial_decrypt(
    public_key: ThresholdPublicKey,
    share: KeyShare,
    ciphertexts: Sequence[int],
    *,
    context: bytes,
    rng: RandomSource = os.urandom,
    workers: int = 1,
) -> PartialDecryption:
    """Compute ``c_j^(2 Delta s_i)`` for every ciphertext and prove it (one batched proof).

    Args:
        public_key: the joint public key.
        share: this party's share.
        ciphertexts: the vector to decrypt (the caller has already checked it is a legitimate aggregate).
        context: session binding (federation, round, request digest) hashed into the proof.
        rng: randomness for the proof's commitment.
        workers: threads for the exponentiations (``gmpy2.powmod_base_list`` releases the GIL).

    Raises:
        InvalidParameters: the share does not belong to ``public_key``.
        ValueError: a ciphertext is outside ``Z*_{N^2}``.
    """
    if (
        share.key_fingerprint != public_key.fingerprint()
        or not 1 <= share.index <= public_key.parties
    ):
        raise InvalidParameters("key share does not belong to this public key")
    if not ciphertexts:
        raise ValueError("nothing to decrypt")
    n = mpz(public_key.n)
    nsq = n * n
    for c in ciphertexts:
        if not 0 < c < nsq or gmpy2.gcd(c, n) != 1:
            raise ValueError("ciphertext outside Z*_{N^2}")
    exponent = 2 * public_key.delta * mpz(share.secret)
    bases = [mpz(c) for c in ciphertexts]
    if workers > 1 and len(bases) >= 2 * workers:
        size = -(-len(bases) // workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = pool.map(
                lambda chunk: gmpy2.powmod_base_list(chunk, exponent, nsq),
                [bases[i : i + size] for i in range(0, len(bases), size)],
            )
            values = [v for part in parts for v in part]
    else:
        values = list(gmpy2.powmod_base_list(bases, exponent, nsq))

    return prove_partial_decryption(public_key, share, bases, values, context=context, rng=rng)


def _lagrange_at_zero(indices: Sequence[int], delta: int) -> dict[int, int]:
    """Integer coefficients ``Delta * prod_{j != i} j / (j - i)`` (Shoup 2000, section 3)."""
    out: dict[int, int] = {}
    for i in indices:
        numerator = delta
        denominator = 1
        for j in indices:
            if j != i:
                numerator *= j
                denominator *= j - i
        if numerator % denominator:
            raise InvalidParameters("Lagrange coefficient is not integral (Delta too small)")
        out[i] = numerator // denominator
    return out


def lagrange_combine(
    public_key: ThresholdPublicKey, partial_values: Mapping[int, Sequence[int]]
) -> list[int]:
    """Combine partial decryption values (already verified) of the same ciphertext vector into plaintexts.

    This is the raw interpolation: it uses whatever parties it is given. With fewer than ``t`` of them the
    interpolated exponent is not ``4 Delta^2 d`` and the result is not ``1 mod N``, which is detected.

    Raises:
        DecryptionError: the combination is not a valid decryption (too few or inconsistent shares).
    """
    if not partial_values:
        raise DecryptionError("nothing to combine")
    indices = sorted(partial_values)
    lengths = {len(partial_values[i]) for i in indices}
    if len(lengths) != 1:
        raise DecryptionError("partial decryptions have different lengths")
    n = mpz(public_key.n)
    nsq = n * n
    delta = public_key.delta
    lam = _lagrange_at_zero(indices, delta)
    scale_inverse = gmpy2.invert(4 * delta * delta, n)
    plaintexts: list[int] = []
    for j in range(lengths.pop()):
        positive = mpz(1)
        negative = mpz(1)
        for i in indices:
            coefficient = 2 * lam[i]
            if coefficient >= 0:
                positive = positive * gmpy2.powmod(partial_values[i][j], coefficient, nsq) % nsq
            else:
                negative = negative * gmpy2.powmod(partial_values[i][j], -coefficient, nsq) % nsq
        combined = positive * gmpy2.invert(negative, nsq) % nsq
        if combined % n != 1:
            raise DecryptionError("partial decryptions do not combine to a valid plaintext")
        plaintexts.append(int((combined - 1) // n * scale_inverse % n))
    return plaintexts


def combine_partial_decryptions(
    public_key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    partials: Sequence[PartialDecryption],
    *,
    context: bytes,
) -> list[int]:
    """Verify every partial decryption, drop the invalid ones, and combine ``t`` valid ones.

    Returns:
        The plaintexts in ``[0, N)``.

    Raises:
        RoundAborted: fewer than ``t`` distinct parties supplied a valid partial decryption. Invalid ones are
            never used; the exception message lists their indices so the caller can record the incident.
    """
    valid: dict[int, Sequence[int]] = {}
    invalid: list[int] = []
    for partial in partials:
        if partial.index in valid:
            continue
        try:
            verify_partial_decryption(public_key, ciphertexts, partial, context=context)
        except InvalidProof:
            invalid.append(partial.index)
            continue
        valid[partial.index] = partial.values
        if len(valid) == public_key.threshold:
            break
    if len(valid) < public_key.threshold:
        raise RoundAborted(
            f"{len(valid)} valid partial decryptions, {public_key.threshold} needed"
            + (f"; invalid from parties {sorted(invalid)}" if invalid else "")
        )
    return lagrange_combine(public_key, valid)
