"""A partial decryption and its batched proof of correctness (equality of discrete logs, Fiat-Shamir).

Notes:
    - Party ``i`` publishes ``c_i = c^(2 Delta s_i) mod N^2`` and a non-interactive proof that
      ``log_{c^4}(c_i^2) = log_v(v_i)`` (equality of discrete logs, Chaum-Pedersen as used by Shoup 2000,
      Fiat-Shamir with SHA-256 over an injective encoding that includes the caller's context/session id). The
      squares make the statement live in the group of squares, where every element other than 1 has order at
      least ``min(p', q')``; the combiner squares again, so a sign flip by a cheating party cannot survive.
    - A partial decryption of a whole vector carries ONE proof: the vector is folded with 128-bit exponents
      ``rho_j`` derived by Fiat-Shamir from the ciphertexts and the claimed partials (the small-exponent batch
      test of Bellare, Garay and Rabin, Eurocrypt 1998). Because any error ``e_j != 1`` lies in the squares,
      whose non-trivial elements have order > 2^128, a single wrong entry survives the fold with probability
      at most 2^-128; the proof then costs two extra exponentiations per vector instead of three per entry.
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
from secagg.hazmat.random import randbits

__all__ = ["PartialDecryption", "prove_partial_decryption", "verify_partial_decryption"]

_CHALLENGE_BITS = 256
_BATCH_BITS = 128
_STATISTICAL_BITS = 128


@dataclass(frozen=True)
class PartialDecryption:
    """Party ``index``'s partial decryption of a ciphertext vector, with its proof.

    Attributes:
        index: the share index ``i``.
        values: ``c_j^(2 Delta s_i) mod N^2`` for every ciphertext ``c_j``.
        challenge: Fiat-Shamir challenge ``e`` (256 bits).
        response: ``z = r + e Delta s_i`` over the integers.
    """

    index: int
    values: tuple[int, ...]
    challenge: int
    response: int

    def __repr__(self) -> str:
        return f"PartialDecryption(index={self.index}, length={len(self.values)})"


def _digest_ints(values: Sequence[int], width: int) -> bytes:
    h = hashlib.sha256()
    for value in values:
        h.update(int(value).to_bytes(width, "big"))
    return h.digest()


def _batch_exponents(
    public_key: ThresholdPublicKey,
    context: bytes,
    index: int,
    ct_digest: bytes,
    pd_digest: bytes,
    count: int,
) -> list[int]:
    seed = hashlib.sha256(
        encode_fields(
            "secagg/paillier/batch-rho/v1",
            context,
            public_key.fingerprint(),
            index,
            ct_digest,
            pd_digest,
        )
    ).digest()
    stream = hashlib.shake_256(seed).digest(count * (_BATCH_BITS // 8))
    step = _BATCH_BITS // 8
    return [int.from_bytes(stream[k * step : (k + 1) * step], "big") for k in range(count)]


def _fold(values: Sequence[int], exponents: Sequence[int], modulus: Any) -> Any:
    acc = mpz(1)
    for value, exponent in zip(values, exponents, strict=True):
        acc = acc * gmpy2.powmod(value, exponent, modulus) % modulus
    return acc


def _challenge(
    public_key: ThresholdPublicKey,
    context: bytes,
    index: int,
    ct_digest: bytes,
    pd_digest: bytes,
    base4: Any,
    target2: Any,
    a: Any,
    b: Any,
) -> int:
    width = public_key.ciphertext_bytes
    fields = [int(x).to_bytes(width, "big") for x in (base4, target2, a, b)]
    vk = public_key.verification_keys[index - 1]
    digest = hashlib.sha256(
        encode_fields(
            "secagg/paillier/partial-decryption-proof/v1",
            context,
            public_key.fingerprint(),
            index,
            int(public_key.v).to_bytes(width, "big"),
            int(vk).to_bytes(width, "big"),
            ct_digest,
            pd_digest,
            *fields,
        )
    ).digest()
    return int.from_bytes(digest, "big")


def _check_units(public_key: ThresholdPublicKey, values: Sequence[int], what: str) -> None:
    n = mpz(public_key.n)
    nsq = n * n
    for value in values:
        if not 0 < value < nsq or gmpy2.gcd(value, n) != 1:
            raise InvalidProof(f"{what} outside Z*_{{N^2}}")


def prove_partial_decryption(
    public_key: ThresholdPublicKey,
    share: KeyShare,
    bases: Sequence[Any],
    values: Sequence[Any],
    *,
    context: bytes,
    rng: RandomSource = os.urandom,
) -> PartialDecryption:
    """Prove that ``values[j] = bases[j]^(2 Delta s_i)`` for this party's share (one batched proof).

    Args:
        public_key: the joint public key.
        share: this party's share (the caller has checked it belongs to ``public_key``).
        bases: the ciphertexts, already checked to lie in ``Z*_{N^2}``.
        values: the party's partial decryptions of ``bases``.
        context: session binding (federation, round, request digest) hashed into the proof.
        rng: randomness for the proof's commitment.

    Notes:
        The prover's nonce ``r`` has ``|N^2| + |Delta| + 256 + 128`` bits, so ``z = r + e Delta s_i`` hides
        ``Delta s_i < Delta N^2`` up to statistical distance 2^-128 (Shoup 2000, section 3; Damgard-Jurik 2001,
        section 4.2).
    """
    nsq = mpz(public_key.nsquare)
    width = public_key.ciphertext_bytes
    ct_digest = _digest_ints(bases, width)
    pd_digest = _digest_ints(values, width)
    rho = _batch_exponents(public_key, context, share.index, ct_digest, pd_digest, len(values))
    base4 = gmpy2.powmod(_fold(bases, rho, nsq), 4, nsq)
    target2 = gmpy2.powmod(_fold(values, rho, nsq), 2, nsq)
    r_bits = nsq.bit_length() + public_key.delta.bit_length() + _CHALLENGE_BITS + _STATISTICAL_BITS
    r = mpz(randbits(rng, r_bits))
    a = gmpy2.powmod(base4, r, nsq)
    b = gmpy2.powmod(public_key.v, r, nsq)
    e = _challenge(public_key, context, share.index, ct_digest, pd_digest, base4, target2, a, b)
    z = r + e * public_key.delta * mpz(share.secret)
    return PartialDecryption(
        index=share.index, values=tuple(int(v) for v in values), challenge=e, response=int(z)
    )


def verify_partial_decryption(
    public_key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    partial: PartialDecryption,
    *,
    context: bytes,
) -> None:
    """Check a partial decryption's proof against the party's verification key.

    Raises:
        InvalidProof: wrong length, unknown index, an element outside ``Z*_{N^2}``, or a proof that does not
            verify (a tampered value, a wrong share, another context).
    """
    if not 1 <= partial.index <= public_key.parties:
        raise InvalidProof("unknown share index")
    if len(partial.values) != len(ciphertexts) or not ciphertexts:
        raise InvalidProof("partial decryption has the wrong length")
    _check_units(public_key, partial.values, "partial decryption")
    _check_units(public_key, ciphertexts, "ciphertext")
    z_bound = (
        public_key.nsquare.bit_length()
        + public_key.delta.bit_length()
        + _CHALLENGE_BITS
        + _STATISTICAL_BITS
        + 2
    )
    if not 0 <= partial.response < (1 << z_bound) or not 0 <= partial.challenge < (
        1 << _CHALLENGE_BITS
    ):
        raise InvalidProof("proof values out of range")
    nsq = mpz(public_key.nsquare)
    width = public_key.ciphertext_bytes
    ct_digest = _digest_ints(ciphertexts, width)
    pd_digest = _digest_ints(partial.values, width)
    rho = _batch_exponents(
        public_key, context, partial.index, ct_digest, pd_digest, len(ciphertexts)
    )
    base4 = gmpy2.powmod(_fold(ciphertexts, rho, nsq), 4, nsq)
    target2 = gmpy2.powmod(_fold(partial.values, rho, nsq), 2, nsq)
    e = mpz(partial.challenge)
    z = mpz(partial.response)
    vk = mpz(public_key.verification_keys[partial.index - 1])
    try:
        a = gmpy2.powmod(base4, z, nsq) * gmpy2.powmod(target2, -e, nsq) % nsq
        b = gmpy2.powmod(public_key.v, z, nsq) * gmpy2.powmod(vk, -e, nsq) % nsq
    except ZeroDivisionError as exc:  # not invertible: cannot happen for units, kept as a refusal
        raise InvalidProof("partial decryption proof does not verify") from exc
    if (
        _challenge(public_key, context, partial.index, ct_digest, pd_digest, base4, target2, a, b)
        != e
    ):
        raise InvalidProof("partial decryption proof does not verify")
