"""A partial decryption and its batched proof of correctness (equality of discrete logs, Fiat-Shamir).

Notes:
    - Party ``i`` publishes ``z_j = c_j^(2 Delta (s_i - 1)) mod N^2`` for every ciphertext ``c_j``: the
      Damgard-Jurik partial decryption ``c_j^(2 Delta s_i)`` divided by the public ``c_j^(2 Delta)``
      (:mod:`secagg.hazmat.paillier.threshold` explains the key format that makes it cheap). With
      ``s_i = 1 + N g_i``, ``z_j = L_j^(2 Delta g_i)`` where ``L_j = c_j^N mod N^2`` depends only on
      ``c_j mod N``.
    - ONE proof covers the whole vector (the small-exponent batch test of Bellare, Garay and Rabin, Eurocrypt
      1998): 128-bit weights ``rho_j`` are derived by Fiat-Shamir from the context, the key, the party, the
      ciphertexts and the claimed values; the folds are ``C = prod_j (c_j mod N)^rho_j mod N`` (lifted:
      ``lift(C) = C^N mod N^2 = prod_j L_j^rho_j``, since ``x -> x^N mod N^2`` is a homomorphism of ``Z*_N``
      that only sees ``x mod N``) and ``Z = prod_j z_j^rho_j mod N^2``. The party then proves
      ``log_{lift(C)^4}(Z^2) = log_v(v_i)`` with a Chaum-Pedersen proof made non-interactive with SHA-256 over
      an injective encoding (Shoup 2000, section 3; Damgard-Jurik 2001, section 4.2), ``v_i = v^(Delta g_i)
      mod N``. Both sides live in groups of order ``m`` (or a divisor) with no prime factor below
      ``min(p', q')``; the squares remove elements of order 2, which the combiner's even exponents ignore.
    - Soundness of the batch: a vector with any wrong entry (an error outside the elements of order at most
      2) survives the fold for at most one value of the weight of that entry, i.e. with probability at most
      2^-128 over the hash output, for the whole request at once. A cheating party therefore needs about
      2^128 hash evaluations; the challenge adds 2^-256. The verifier computes the folds with Pippenger's
      method (:mod:`.multiexp`), the ciphertexts mod ``N``: for 9,524 ciphertexts about 0.3 s and 0.8 s of one
      core, where one 128-bit ``powmod`` per entry of each fold took 12 s.
    - Zero knowledge: the nonce ``r`` has ``|N| + |Delta| + 256 + 128`` bits, so ``z = r + e Delta g_i``
      hides ``Delta g_i < Delta N`` up to statistical distance 2^-128.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
from gmpy2 import mpz

from secagg.errors import InvalidProof
from secagg.hazmat.keys import RandomSource, encode_fields
from secagg.hazmat.paillier.keys import KeyShare, ThresholdPublicKey
from secagg.hazmat.paillier.multiexp import multi_exponentiation
from secagg.hazmat.random import randbits

__all__ = [
    "BATCH_BITS",
    "PartialDecryption",
    "PendingVerification",
    "begin_verification",
    "finish_verification",
    "fold_slice",
    "prove_partial_decryption",
    "verify_partial_decryption",
]

BATCH_BITS = 128
"""Bits of each Fiat-Shamir batch weight ``rho_j``: the soundness of the whole-vector batch test is 2^-128."""

_CHALLENGE_BITS = 256
_STATISTICAL_BITS = 128
_RHO_LABEL = "secagg/paillier/batch-rho/v2"
_PROOF_LABEL = "secagg/paillier/partial-decryption-proof/v2"


@dataclass(frozen=True)
class PartialDecryption:
    """Party ``index``'s partial decryption of a ciphertext vector, with its proof.

    Attributes:
        index: the share index ``i``.
        values: ``z_j = c_j^(2 Delta (s_i - 1)) mod N^2`` for every ciphertext ``c_j``.
        challenge: Fiat-Shamir challenge ``e`` (256 bits).
        response: ``z = r + e Delta g_i`` over the integers.
    """

    index: int
    values: tuple[int, ...]
    challenge: int
    response: int

    def __repr__(self) -> str:
        return f"PartialDecryption(index={self.index}, length={len(self.values)})"


def _digest_ints(values: Sequence[Any], width: int) -> bytes:
    h = hashlib.sha256()
    for value in values:
        h.update(int(value).to_bytes(width, "big"))
    return h.digest()


def _batch_weights(
    public_key: ThresholdPublicKey,
    context: bytes,
    index: int,
    ct_digest: bytes,
    pd_digest: bytes,
    count: int,
) -> list[int]:
    seed = hashlib.sha256(
        encode_fields(_RHO_LABEL, context, public_key.fingerprint(), index, ct_digest, pd_digest)
    ).digest()
    step = BATCH_BITS // 8
    stream = hashlib.shake_256(seed).digest(count * step)
    return [int.from_bytes(stream[k * step : (k + 1) * step], "big") for k in range(count)]


def _challenge(
    public_key: ThresholdPublicKey,
    context: bytes,
    index: int,
    ct_digest: bytes,
    pd_digest: bytes,
    mod_nsq: Sequence[Any],
    mod_n: Sequence[Any],
) -> int:
    wide, narrow = public_key.ciphertext_bytes, public_key.modulus_bytes
    vk = public_key.verification_keys[index - 1]
    digest = hashlib.sha256(
        encode_fields(
            _PROOF_LABEL,
            context,
            public_key.fingerprint(),
            index,
            int(public_key.v).to_bytes(narrow, "big"),
            int(vk).to_bytes(narrow, "big"),
            ct_digest,
            pd_digest,
            *[int(x).to_bytes(wide, "big") for x in mod_nsq],
            *[int(x).to_bytes(narrow, "big") for x in mod_n],
        )
    ).digest()
    return int.from_bytes(digest, "big")


def _response_bits(public_key: ThresholdPublicKey) -> int:
    return (
        public_key.n.bit_length()
        + public_key.delta.bit_length()
        + _CHALLENGE_BITS
        + _STATISTICAL_BITS
    )


def _lift_fourth(public_key: ThresholdPublicKey, folded_ciphertexts: Any) -> Any:
    """``lift(C)^4 = C^(4N) mod N^2``: the base of the proof (squares of N-th residues)."""
    return gmpy2.powmod(folded_ciphertexts, 4 * mpz(public_key.n), mpz(public_key.nsquare))


def fold_slice(
    n: int, ciphertexts: Sequence[int], values: Sequence[int], weights: Sequence[int]
) -> tuple[Any, Any, Any]:
    """Partial folds over one slice (module-level: worker processes run it).

    Returns:
        ``(prod (c_j mod N)^rho_j mod N, prod z_j^rho_j mod N^2, prod z_j mod N)``; the last is a unit iff every
        ``z_j`` of the slice is.
    """
    modulus = mpz(n)
    nsq = modulus * modulus
    reduced = [mpz(c) % modulus for c in ciphertexts]
    values_mpz = [mpz(z) for z in values]
    unit = mpz(1)
    for z in values_mpz:
        unit = unit * z % modulus
    return (
        multi_exponentiation(reduced, weights, modulus, exponent_bits=BATCH_BITS),
        multi_exponentiation(values_mpz, weights, nsq, exponent_bits=BATCH_BITS),
        unit,
    )


def prove_partial_decryption(
    public_key: ThresholdPublicKey,
    share: KeyShare,
    ciphertexts: Sequence[Any],
    values: Sequence[Any],
    *,
    context: bytes,
    rng: RandomSource = os.urandom,
) -> PartialDecryption:
    """Prove that ``values[j] = ciphertexts[j]^(2 Delta N g_i) mod N^2`` for this party's share (one batched proof).

    Args:
        public_key: the joint public key.
        share: this party's share (the caller has checked it belongs to ``public_key``).
        ciphertexts: the ciphertexts, already checked to lie in ``Z*_{N^2}``.
        values: the party's partial decryptions of ``ciphertexts``.
        context: session binding (federation, round, request digest) hashed into the proof.
        rng: randomness for the proof's commitment.

    Notes:
        The prover needs no fold of its own values: for honest values ``Z = lift(C)^(2 Delta g_i)``, one
        exponentiation mod ``N`` and one lift.
    """
    n = mpz(public_key.n)
    nsq = n * n
    ct_digest = _digest_ints(ciphertexts, public_key.ciphertext_bytes)
    pd_digest = _digest_ints(values, public_key.ciphertext_bytes)
    rho = _batch_weights(public_key, context, share.index, ct_digest, pd_digest, len(values))
    folded = multi_exponentiation(
        [mpz(c) % n for c in ciphertexts], rho, n, exponent_bits=BATCH_BITS
    )
    base = _lift_fourth(public_key, folded)
    exponent = public_key.delta * mpz(share.secret)
    target = gmpy2.powmod(gmpy2.powmod(gmpy2.powmod(folded, 2 * exponent, n), n, nsq), 2, nsq)
    r = mpz(randbits(rng, _response_bits(public_key)))
    a = gmpy2.powmod(base, r, nsq)
    b = gmpy2.powmod(public_key.v, r, n)
    e = _challenge(public_key, context, share.index, ct_digest, pd_digest, (base, target, a), (b,))
    return PartialDecryption(
        index=share.index,
        values=tuple(int(v) for v in values),
        challenge=e,
        response=int(r + e * exponent),
    )


@dataclass(frozen=True)
class PendingVerification:
    """A partial decryption whose cheap checks passed and whose batch weights are drawn; the folds remain."""

    partial: PartialDecryption
    weights: tuple[int, ...]
    ct_digest: bytes
    pd_digest: bytes


def begin_verification(
    public_key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    partial: PartialDecryption,
    *,
    context: bytes,
) -> PendingVerification:
    """The cheap checks (index, length, ranges) and the batch weights of one partial decryption.

    Raises:
        InvalidProof: unknown index, wrong length, an element outside ``[1, N^2)`` or proof values out of range.
    """
    if not 1 <= partial.index <= public_key.parties:
        raise InvalidProof("unknown share index")
    if len(partial.values) != len(ciphertexts) or not ciphertexts:
        raise InvalidProof("partial decryption has the wrong length")
    nsq = public_key.nsquare
    if not all(0 < z < nsq for z in partial.values):
        raise InvalidProof("partial decryption outside Z*_{N^2}")
    if not all(0 < c < nsq for c in ciphertexts):
        raise InvalidProof("ciphertext outside Z*_{N^2}")
    if not 0 <= partial.response < (1 << (_response_bits(public_key) + 2)) or not (
        0 <= partial.challenge < (1 << _CHALLENGE_BITS)
    ):
        raise InvalidProof("proof values out of range")
    width = public_key.ciphertext_bytes
    ct_digest = _digest_ints(ciphertexts, width)
    pd_digest = _digest_ints(partial.values, width)
    weights = _batch_weights(
        public_key, context, partial.index, ct_digest, pd_digest, len(ciphertexts)
    )
    return PendingVerification(
        partial=partial, weights=tuple(weights), ct_digest=ct_digest, pd_digest=pd_digest
    )


def finish_verification(
    public_key: ThresholdPublicKey,
    pending: PendingVerification,
    folds: Sequence[tuple[Any, Any, Any]],
    *,
    context: bytes,
) -> None:
    """Check the proof of ``pending`` given the :func:`fold_slice` results of all its slices.

    Raises:
        InvalidProof: an element shares a factor with ``N``, or the proof does not verify (a tampered value, a
            wrong share, another context or other ciphertexts).
    """
    n = mpz(public_key.n)
    nsq = n * n
    folded, target, unit = mpz(1), mpz(1), mpz(1)
    for c_part, z_part, u_part in folds:
        folded = folded * c_part % n
        target = target * z_part % nsq
        unit = unit * u_part % n
    if gmpy2.gcd(unit, n) != 1:
        raise InvalidProof("partial decryption outside Z*_{N^2}")
    if gmpy2.gcd(folded, n) != 1:
        raise InvalidProof("ciphertext outside Z*_{N^2}")
    partial = pending.partial
    base = _lift_fourth(public_key, folded)
    target = gmpy2.powmod(target, 2, nsq)
    e = mpz(partial.challenge)
    z = mpz(partial.response)
    vk = mpz(public_key.verification_keys[partial.index - 1])
    a = gmpy2.powmod(base, z, nsq) * gmpy2.powmod(target, -e, nsq) % nsq
    b = gmpy2.powmod(public_key.v, z, n) * gmpy2.powmod(vk, -e, n) % n
    expected = _challenge(
        public_key,
        context,
        partial.index,
        pending.ct_digest,
        pending.pd_digest,
        (base, target, a),
        (b,),
    )
    if expected != e:
        raise InvalidProof("partial decryption proof does not verify")


def verify_partial_decryption(
    public_key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    partial: PartialDecryption,
    *,
    context: bytes,
) -> None:
    """Check a partial decryption's proof against the party's verification key (in this process).

    :func:`secagg.hazmat.paillier.combine_partial_decryptions` verifies several at once on worker processes.

    Raises:
        InvalidProof: wrong length, unknown index, an element outside ``Z*_{N^2}``, or a proof that does not
            verify (a tampered value, a wrong share, another context).
    """
    pending = begin_verification(public_key, ciphertexts, partial, context=context)
    folds = [fold_slice(public_key.n, ciphertexts, partial.values, pending.weights)]
    finish_verification(public_key, pending, folds, context=context)
