"""Folds of ciphertext vectors and proofs of plaintext knowledge: what whole-aggregate integrity rests on.

Notes:
    - A fold is ``F = prod_j c_j^(w_j) mod N^2`` with 128-bit weights ``w_j`` expanded from a 32-byte seed
      (:func:`fold_weights`). A decrypter draws the seed after the request is fixed and compares
      ``prod_s F_s`` (one fold per contributor, signed by it) with the fold of the aggregate it is asked to
      decrypt. Soundness (Bellare, Garay and Rabin, "Fast batch verification for modular exponentiation and
      digital signatures", Eurocrypt 1998, the small-exponent test): write ``d_j`` for the ratio of the
      aggregate to the product of the contributions at position ``j``. ``Z*_{N^2}`` with safe primes is
      ``Z_2^2 x Z_p' x Z_q' x Z_p x Z_q``; if some ``d_j`` has a component in a factor of prime order
      ``r > 2^128``, the test passes only if ``sum_j w_j e_j = 0 mod r`` for that component, which with the
      other weights fixed holds for at most one value of ``w_j`` below ``2^128 < r``: probability at most
      2^-128. The remaining errors have order 2, and threshold decryption raises every ciphertext to an even
      exponent (:mod:`.threshold`), so they do not change what is decrypted.
    - A silo computes the fold of its OWN ciphertexts without exponentiating them: with
      ``c_j = (1 + m_j N) r_j^N``, ``F = (1 + (sum_j w_j m_j mod N) N) * R^N`` where ``R = prod_j r_j^(w_j)``
      mod ``N``; with short-exponent obfuscators ``hs^(a_j)`` it is ``hs^(sum_j w_j a_j)``
      (:mod:`.obfuscators`). One exponentiation instead of a multi-exponentiation over the vector.
    - Proof of plaintext knowledge of one ciphertext ``F`` (the Sigma protocol of Cramer, Damgard and Nielsen,
      "Multiparty computation from threshold homomorphic encryption", Eurocrypt 2001, section 6; made
      non-interactive with Fiat-Shamir over the caller's context, which names the prover, the round and the
      seed, so a proof cannot be replayed or mauled into another prover's; Faust, Kohlweiss, Marson and
      Venturi, "On the non-malleability of the Fiat-Shamir transform", Indocrypt 2012): commitment
      ``a = (1 + x N) s^N`` (standard form) or ``(1 + x N) hs^y`` (short-exponent form), challenge ``e``
      (128 bits), response ``z = x + e m mod N`` and ``s R^e mod N`` or ``y + e alpha``; the verifier checks
      ``(1 + z N) * rho^N = a F^e`` (or ``hs^u``). Two accepting answers to ``e != e'`` give
      ``m = (z - z') / (e - e') mod N`` (``e - e'`` is below ``2^128 < p, q``, hence invertible mod ``N``);
      in both forms the randomness part is an ``N``-th power, an encryption of 0 (``hs = h^N``). Proved on a
      fold with weights drawn after the vector was fixed, it proves knowledge of a random linear combination
      of the vector's plaintexts: a silo that submits ciphertexts derived from another silo's (the
      cancellation ``Enc(2 v) / c_A``) would have to know that combination of the other silo's plaintexts.
      Zero knowledge: ``x`` is uniform mod ``N``, ``s`` uniform in ``Z*_N``, and ``y`` has
      :data:`_STATISTICAL_BITS` more bits than ``e alpha`` (statistical distance 2^-128), so the response
      reveals nothing beyond ``F``, a ciphertext (its plaintext needs ``t`` key holders).
    - Review status: this construction has not been reviewed by an outside cryptographer (the README says so).
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
from secagg.hazmat.paillier.cipher import int_to_bytes
from secagg.hazmat.paillier.keys import ThresholdPublicKey
from secagg.hazmat.paillier.multiexp import multi_exponentiation
from secagg.hazmat.paillier.obfuscators import SHORT_EXPONENT_BITS, ObfuscatorMode
from secagg.hazmat.paillier.parallel import effective_workers, run_tasks, split
from secagg.hazmat.random import randbelow, randbits, random_unit

__all__ = [
    "FOLD_SEED_BYTES",
    "FOLD_WEIGHT_BITS",
    "PlaintextProof",
    "fold_ciphertexts",
    "fold_own",
    "fold_weights",
    "prove_plaintext_knowledge",
    "verify_plaintext_knowledge",
]

FOLD_WEIGHT_BITS = 128
"""Bits of each fold weight: a tampered aggregate passes the fold comparison with probability <= 2^-128."""

FOLD_SEED_BYTES = 32
"""Bytes of the seed a fold's weights are expanded from."""

_CHALLENGE_BITS = 128
_STATISTICAL_BITS = 128
_MAX_COUNT_BITS = 32  # vectors of fewer than 2^32 ciphertexts: bounds sum_j w_j a_j
_WEIGHTS_LABEL = "secagg/paillier/fold-weights/v1"
_PROOF_LABEL = "secagg/paillier/plaintext-knowledge/v1"
_SHORT_WITNESS_BITS = SHORT_EXPONENT_BITS + FOLD_WEIGHT_BITS + _MAX_COUNT_BITS
_SHORT_NONCE_BITS = _SHORT_WITNESS_BITS + _CHALLENGE_BITS + _STATISTICAL_BITS


@dataclass(frozen=True)
class PlaintextProof:
    """A non-interactive proof that the prover knows the plaintext of one ciphertext.

    Attributes:
        form: how the randomness is proven: ``standard`` (``rho^N``) or ``short-exponent`` (``hs^u``).
        commitment: ``a`` in ``Z*_{N^2}``.
        response: ``z`` in ``[0, N)``.
        randomness: ``rho`` in ``Z*_N`` (standard) or the integer ``u`` (short exponent).
    """

    form: ObfuscatorMode
    commitment: int
    response: int
    randomness: int

    def __repr__(self) -> str:
        return f"PlaintextProof(form={self.form.value!r})"

    def encode(self) -> bytes:
        """Injective byte form (what signatures over a proof cover)."""
        return encode_fields(
            self.form.value,
            int_to_bytes(self.commitment),
            int_to_bytes(self.response),
            int_to_bytes(self.randomness),
        )


def fold_weights(seed: bytes, count: int) -> list[int]:
    """``count`` weights of :data:`FOLD_WEIGHT_BITS` bits expanded from ``seed`` with SHAKE-256.

    Raises:
        ValueError: a seed that is not :data:`FOLD_SEED_BYTES` bytes.
    """
    if len(seed) != FOLD_SEED_BYTES:
        raise ValueError(f"a fold seed has {FOLD_SEED_BYTES} bytes")
    step = FOLD_WEIGHT_BITS // 8
    stream = hashlib.shake_256(encode_fields(_WEIGHTS_LABEL, seed)).digest(count * step)
    return [int.from_bytes(stream[k * step : (k + 1) * step], "big") for k in range(count)]


def _fold_slice(task: tuple[int, Sequence[int], Sequence[int]]) -> Any:
    """``prod c_j^(w_j) mod N^2`` over one slice (module-level: worker processes run it)."""
    nsq, ciphertexts, weights = task
    return multi_exponentiation(
        [mpz(c) for c in ciphertexts], weights, mpz(nsq), exponent_bits=FOLD_WEIGHT_BITS
    )


def fold_ciphertexts(
    public_key: ThresholdPublicKey,
    ciphertexts: Sequence[int],
    weights: Sequence[int],
    *,
    workers: int | None = 1,
) -> int:
    """``prod_j c_j^(w_j) mod N^2`` by Pippenger's method (:mod:`.multiexp`), on ``workers`` processes.

    Raises:
        ValueError: different lengths or a weight of more than :data:`FOLD_WEIGHT_BITS` bits.
    """
    if len(ciphertexts) != len(weights):
        raise ValueError("one weight per ciphertext is required")
    nsq = public_key.nsquare
    used = effective_workers(workers, len(ciphertexts))
    tasks = [(nsq, ciphertexts[lo:hi], weights[lo:hi]) for lo, hi in split(len(ciphertexts), used)]
    product = mpz(1)
    for part in run_tasks(_fold_slice, tasks, used):
        product = product * part % nsq
    return int(product)


def fold_own(
    public_key: ThresholdPublicKey,
    plaintexts: Sequence[int],
    witnesses: Sequence[int],
    mode: ObfuscatorMode,
    weights: Sequence[int],
) -> tuple[int, int, int]:
    """The fold of a vector the caller encrypted itself, from its plaintexts and obfuscator witnesses.

    Args:
        plaintexts: the ``m_j`` in ``[0, N)``.
        witnesses: ``r_j`` (standard: obfuscator ``r_j^N``) or ``a_j`` (short exponent: ``hs^(a_j)``).
        mode: which of the two the witnesses are.
        weights: the fold weights.

    Returns:
        ``(F, m, w)``: the fold, its plaintext ``sum_j w_j m_j mod N`` and its randomness witness
        (``prod_j r_j^(w_j) mod N`` or ``sum_j w_j a_j``), the inputs of :func:`prove_plaintext_knowledge`.
    """
    if not len(plaintexts) == len(witnesses) == len(weights):
        raise ValueError("one plaintext, witness and weight per ciphertext is required")
    if len(weights).bit_length() > _MAX_COUNT_BITS:
        raise ValueError("vector too long for a fold")
    n = mpz(public_key.n)
    nsq = n * n
    plaintext = int(sum(mpz(w) * m for w, m in zip(weights, plaintexts, strict=True)) % n)
    if mode is ObfuscatorMode.SHORT_EXPONENT:
        witness = int(sum(mpz(w) * a for w, a in zip(weights, witnesses, strict=True)))
        noise = gmpy2.powmod(mpz(public_key.hs), witness, nsq)
    else:
        witness = int(
            multi_exponentiation(
                [mpz(r) for r in witnesses], weights, n, exponent_bits=FOLD_WEIGHT_BITS
            )
        )
        noise = gmpy2.powmod(mpz(witness), n, nsq)
    return int((1 + plaintext * n) * noise % nsq), plaintext, witness


def _challenge(
    public_key: ThresholdPublicKey, ciphertext: int, commitment: int, form: str, context: bytes
) -> int:
    width = public_key.ciphertext_bytes
    digest = hashlib.sha256(
        encode_fields(
            _PROOF_LABEL,
            context,
            public_key.fingerprint(),
            form,
            int(ciphertext).to_bytes(width, "big"),
            int(commitment).to_bytes(width, "big"),
        )
    ).digest()
    return int.from_bytes(digest[: _CHALLENGE_BITS // 8], "big")


def _noise(public_key: ThresholdPublicKey, form: ObfuscatorMode, randomness: int) -> Any:
    """``rho^N`` or ``hs^u`` mod ``N^2``: the encryption-of-zero part of a proof equation."""
    n = mpz(public_key.n)
    if form is ObfuscatorMode.SHORT_EXPONENT:
        return gmpy2.powmod(mpz(public_key.hs), mpz(randomness), n * n)
    return gmpy2.powmod(mpz(randomness), n, n * n)


def prove_plaintext_knowledge(
    public_key: ThresholdPublicKey,
    ciphertext: int,
    plaintext: int,
    witness: int,
    mode: ObfuscatorMode,
    *,
    context: bytes,
    rng: RandomSource = os.urandom,
) -> PlaintextProof:
    """Prove knowledge of the plaintext of ``ciphertext = (1 + plaintext N) * noise`` (see module notes).

    Args:
        witness: ``R`` with noise ``R^N`` (standard) or ``alpha`` with noise ``hs^alpha`` (short exponent).
        context: what the proof is bound to (prover, round, seed); the verifier passes the same bytes.
    """
    n = mpz(public_key.n)
    nsq = n * n
    x = randbelow(rng, int(n))
    if mode is ObfuscatorMode.SHORT_EXPONENT:
        if witness < 0 or witness.bit_length() > _SHORT_WITNESS_BITS:
            raise ValueError("short-exponent witness out of range")
        nonce = randbits(rng, _SHORT_NONCE_BITS)
    else:
        nonce = random_unit(rng, int(n))
    commitment = int((1 + x * n) * _noise(public_key, mode, nonce) % nsq)
    e = _challenge(public_key, ciphertext, commitment, mode.value, context)
    response = int((x + e * mpz(plaintext)) % n)
    if mode is ObfuscatorMode.SHORT_EXPONENT:
        randomness = nonce + e * witness
    else:
        randomness = int(mpz(nonce) * gmpy2.powmod(mpz(witness), e, n) % n)
    return PlaintextProof(
        form=mode, commitment=commitment, response=response, randomness=randomness
    )


def verify_plaintext_knowledge(
    public_key: ThresholdPublicKey, ciphertext: int, proof: PlaintextProof, *, context: bytes
) -> None:
    """Check a :class:`PlaintextProof` for ``ciphertext`` under ``context``.

    Raises:
        InvalidProof: elements out of range or an equation that does not hold.
    """
    n = mpz(public_key.n)
    nsq = n * n
    if not (0 < ciphertext < nsq and 0 < proof.commitment < nsq and 0 <= proof.response < n):
        raise InvalidProof("plaintext-knowledge proof element out of range")
    if gmpy2.gcd(mpz(ciphertext) * proof.commitment, n) != 1:
        raise InvalidProof("plaintext-knowledge proof element outside Z*_{N^2}")
    if proof.form is ObfuscatorMode.SHORT_EXPONENT:
        if not 0 <= proof.randomness < 1 << (_SHORT_NONCE_BITS + 1):
            raise InvalidProof("plaintext-knowledge proof element out of range")
    elif not 0 < proof.randomness < n or gmpy2.gcd(proof.randomness, n) != 1:
        raise InvalidProof("plaintext-knowledge proof element out of range")
    e = _challenge(public_key, ciphertext, proof.commitment, proof.form.value, context)
    left = (1 + mpz(proof.response) * n) * _noise(public_key, proof.form, proof.randomness) % nsq
    right = mpz(proof.commitment) * gmpy2.powmod(mpz(ciphertext), e, nsq) % nsq
    if left != right:
        raise InvalidProof("plaintext-knowledge proof does not verify")
