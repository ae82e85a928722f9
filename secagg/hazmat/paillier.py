"""Threshold Paillier with a trusted dealer: keys, shares, cheap encryption, proven partial decryption.

Notes:
    - Scheme: Shoup's threshold RSA ("Practical threshold signatures", Eurocrypt 2000) carried over to Paillier by
      Fouque, Poupard and Stern ("Sharing decryption in the context of voting or lotteries", FC 2000) and
      Damgard and Jurik ("A generalisation, a simplification and some applications of Paillier's probabilistic
      public-key system", PKC 2001, section 4). Safe primes ``p = 2p' + 1``, ``q = 2q' + 1``; ``N = pq``;
      ``g = N + 1``; ``m = p'q'``; the secret ``d`` satisfies ``d = 0 mod m`` and ``d = 1 mod N`` and is shared
      t-of-l with a random polynomial over ``Z_{Nm}``; ``Delta = l!`` keeps every Lagrange coefficient an
      integer, so nobody ever needs the (secret) group order.
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
    - Encryption is ``(1 + M N) * r^N mod N^2`` built directly (``phe``'s ``raw_encrypt`` always exponentiates).
      Obfuscators come from :class:`ObfuscatorPool`; the default is the Damgard-Jurik-Nielsen short exponent
      (``hs^a`` with ``hs = h^N``, ``h = -x^2 mod N`` fixed at key generation, ``a`` of
      :data:`SHORT_EXPONENT_BITS` bits) evaluated with a fixed-base table, which rests on one extra assumption
      quoted in :data:`SHORT_EXPONENT_ASSUMPTION`. :attr:`ObfuscatorMode.STANDARD` (``r^N`` with uniform
      ``r``) needs only the DCR assumption and costs about 30 times more per obfuscator.
    - No party ever holds the factors in threshold mode, so there is no CRT speed-up anywhere (DESIGN 5).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from gmpy2 import mpz
from phe import PaillierPublicKey

from secagg.errors import (
    DecryptionError,
    InvalidParameters,
    InvalidProof,
    RoundAborted,
)
from secagg.hazmat.keys import (
    RandomSource,
    agree,
    encode_fields,
    hkdf,
    new_x25519,
    open_sealed,
    public_bytes,
    seal,
)

__all__ = [
    "DEFAULT_KEY_BITS",
    "MIN_PRODUCTION_KEY_BITS",
    "SHORT_EXPONENT_ASSUMPTION",
    "SHORT_EXPONENT_BITS",
    "SUPPORTED_KEY_BITS",
    "KeyShare",
    "ObfuscatorMode",
    "ObfuscatorPool",
    "PartialDecryption",
    "SealedShare",
    "ThresholdKeyMaterial",
    "ThresholdPublicKey",
    "ciphertexts_from_bytes",
    "ciphertexts_to_bytes",
    "combine_partial_decryptions",
    "deal_threshold_key",
    "encrypt_plaintexts",
    "generate_safe_prime",
    "lagrange_combine",
    "multiply_ciphertexts",
    "open_share",
    "partial_decrypt",
    "seal_share",
    "verify_partial_decryption",
]

DEFAULT_KEY_BITS = 2048
SUPPORTED_KEY_BITS = (2048, 3072)
MIN_PRODUCTION_KEY_BITS = 2048
_MIN_TEST_KEY_BITS = 256

SHORT_EXPONENT_BITS = 256
"""Bit length of the Damgard-Jurik-Nielsen short exponent ``a`` in ``hs^a``.

256 bits = twice the 128-bit security target: the best known attacks on a discrete logarithm whose exponent is
known to lie in ``[0, 2^k)`` (Pollard's lambda/kangaroo, van Oorschot-Wiener 1996 for short exponents) cost
about ``2^(k/2)`` group operations, and 2^128 is above the ~112-bit strength of a 2048-bit modulus and equal
to the 128-bit strength of a 3072-bit one. The table makes each obfuscator cost ``256 / 8 = 32`` modular
multiplications instead of a ~2048-bit exponentiation."""

SHORT_EXPONENT_ASSUMPTION = (
    "Paillier mode draws ciphertext randomness with the Damgard-Jurik-Nielsen short-exponent technique: "
    "the obfuscator is hs^a mod N^2 with hs = h^N, h = -x^2 mod N fixed at key generation and a a uniformly "
    f"random {SHORT_EXPONENT_BITS}-bit exponent, instead of r^N for a uniformly random r. Semantic security "
    "then rests on the Decisional Composite Residuosity assumption PLUS the assumption that hs^a for a short "
    "random exponent a is computationally indistinguishable from a uniformly random element of the subgroup "
    "hs generates (a short-exponent discrete-logarithm assumption in the style of Koshiba and Kurosawa, "
    "PKC 2004; Damgard, Jurik and Nielsen, Int. J. Inf. Secur. 2010, section 4). Best known attacks cost "
    "about 2^128 operations. Consortia that do not accept the extra assumption select the standard "
    "obfuscator r^N (ObfuscatorMode.STANDARD), which relies on DCR alone and is about 30x slower to "
    "precompute; the short exponent is the default."
)

_SIEVE_LIMIT = 1 << 16
_SIEVE_WINDOW = 1 << 14
_MR_ROUNDS = 64
_CHALLENGE_BITS = 256
_BATCH_BITS = 128
_STATISTICAL_BITS = 128
_SHARE_PURPOSE = "paillier-key-share"


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


# --------------------------------------------------------------------------------------------------------------
# Randomness helpers (every draw goes through the injected RandomSource)


def _randbits(rng: RandomSource, bits: int) -> int:
    nbytes = (bits + 7) // 8
    return int.from_bytes(rng(nbytes), "big") >> (8 * nbytes - bits)


def _randbelow(rng: RandomSource, bound: int) -> int:
    """Uniform in ``[0, bound)`` by rejection sampling (no modulo bias)."""
    bits = bound.bit_length()
    while True:
        candidate = _randbits(rng, bits)
        if candidate < bound:
            return candidate


def _random_unit(rng: RandomSource, modulus: int) -> Any:
    """Uniform element of ``Z*_modulus``."""
    while True:
        candidate = mpz(_randbelow(rng, modulus))
        if candidate > 0 and gmpy2.gcd(candidate, modulus) == 1:
            return candidate


# --------------------------------------------------------------------------------------------------------------
# Safe primes


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
        start = _randbits(rng, qbits) | (3 << (qbits - 2)) | 1
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


def _check_safe_prime(p: int) -> None:
    if (
        not (gmpy2.is_prime(p, _MR_ROUNDS) and gmpy2.is_prime((p - 1) // 2, _MR_ROUNDS))
        or p % 2 == 0
    ):
        raise InvalidParameters("the given factor is not a safe prime")


# --------------------------------------------------------------------------------------------------------------
# Keys


def _int_to_hex(value: int) -> str:
    return format(int(value), "x")


def _hex_to_int(text: object) -> int:
    if not isinstance(text, str) or not text:
        raise ValueError("expected a hexadecimal string")
    return int(text, 16)


@dataclass(frozen=True)
class ThresholdPublicKey:
    """The joint public key: a ``phe`` public key plus the threshold verification material.

    Attributes:
        paillier: ``phe.PaillierPublicKey`` (``n``, ``g = n + 1``, ``nsquare``), so ``phe`` users recognise it.
        threshold: ``t``, the number of partial decryptions needed.
        parties: ``l``, the number of shares dealt (share indices are ``1..l``).
        hs: ``h^N mod N^2`` with ``h = -x^2 mod N``, the base of short-exponent obfuscators.
        v: generator of the squares mod ``N^2`` used for verification keys.
        verification_keys: ``v_i = v^(Delta s_i) mod N^2`` for ``i = 1..l``.
    """

    paillier: PaillierPublicKey
    threshold: int
    parties: int
    hs: int
    v: int
    verification_keys: tuple[int, ...]

    def __post_init__(self) -> None:
        n = self.paillier.n
        if not 2 <= self.threshold <= self.parties:
            raise InvalidParameters("threshold must satisfy 2 <= t <= l")
        if len(self.verification_keys) != self.parties:
            raise InvalidParameters("one verification key per party is required")
        nsq = n * n
        for value in (self.hs, self.v, *self.verification_keys):
            if not 0 < value < nsq or math.gcd(value, n) != 1:
                raise InvalidParameters("public key element outside Z*_{N^2}")

    @property
    def n(self) -> int:
        """The modulus ``N``."""
        return int(self.paillier.n)

    @property
    def nsquare(self) -> int:
        """``N^2``."""
        return int(self.paillier.nsquare)

    @property
    def key_bits(self) -> int:
        """Bit length of ``N``."""
        return self.n.bit_length()

    @property
    def delta(self) -> int:
        """``Delta = l!``."""
        return math.factorial(self.parties)

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of one serialised ciphertext (bytes of ``N^2``)."""
        return (self.nsquare.bit_length() + 7) // 8

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, hex integers); the fingerprint is computed over it."""
        return json.dumps(
            {
                "version": 1,
                "scheme": "threshold-paillier-shoup",
                "n": _int_to_hex(self.n),
                "threshold": self.threshold,
                "parties": self.parties,
                "hs": _int_to_hex(self.hs),
                "v": _int_to_hex(self.v),
                "verification_keys": [_int_to_hex(x) for x in self.verification_keys],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def to_bytes(self) -> bytes:
        """UTF-8 canonical JSON."""
        return self.to_json().encode("utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> ThresholdPublicKey:
        """Inverse of :meth:`to_json`.

        Raises:
            InvalidParameters: malformed or inconsistent key material.
        """
        try:
            obj = json.loads(text)
            if obj.get("version") != 1 or obj.get("scheme") != "threshold-paillier-shoup":
                raise ValueError("unknown key format")
            return cls(
                paillier=PaillierPublicKey(_hex_to_int(obj["n"])),
                threshold=int(obj["threshold"]),
                parties=int(obj["parties"]),
                hs=_hex_to_int(obj["hs"]),
                v=_hex_to_int(obj["v"]),
                verification_keys=tuple(_hex_to_int(x) for x in obj["verification_keys"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidParameters("malformed threshold Paillier public key") from exc

    from_bytes = from_json

    def fingerprint(self) -> bytes:
        """SHA-256 over the canonical JSON; binds shares, proofs and commitments to this key."""
        return hashlib.sha256(self.to_bytes()).digest()


@dataclass(frozen=True, repr=False)
class KeyShare:
    """One party's secret share ``s_i = f(i) mod Nm``. ``repr`` hides the secret.

    Attributes:
        index: the party's index ``i`` in ``1..l`` (the x-coordinate of the share).
        secret: ``s_i``. Never log it.
        key_fingerprint: fingerprint of the :class:`ThresholdPublicKey` this share belongs to.
    """

    index: int
    secret: int = field(repr=False)
    key_fingerprint: bytes

    def __repr__(self) -> str:
        return f"KeyShare(index={self.index}, secret=<hidden>)"

    def to_bytes(self) -> bytes:
        """Serialise (JSON) for sealing; the output is secret."""
        return json.dumps(
            {
                "version": 1,
                "index": self.index,
                "secret": _int_to_hex(self.secret),
                "key_fingerprint": self.key_fingerprint.hex(),
            },
            sort_keys=True,
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        """Inverse of :meth:`to_bytes`.

        Raises:
            InvalidParameters: malformed share.
        """
        try:
            obj = json.loads(data)
            if obj.get("version") != 1:
                raise ValueError("unknown share format")
            return cls(
                index=int(obj["index"]),
                secret=_hex_to_int(obj["secret"]),
                key_fingerprint=bytes.fromhex(obj["key_fingerprint"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidParameters("malformed key share") from exc


@dataclass(frozen=True, repr=False)
class ThresholdKeyMaterial:
    """What the dealer produces: the public key and one share per party (index ``i`` at position ``i - 1``)."""

    public_key: ThresholdPublicKey
    shares: tuple[KeyShare, ...]

    def __repr__(self) -> str:
        return (
            f"ThresholdKeyMaterial(key_bits={self.public_key.key_bits}, "
            f"threshold={self.public_key.threshold}, parties={self.public_key.parties}, shares=<hidden>)"
        )


def _check_key_bits(key_bits: int, insecure_test_key_size: bool) -> None:
    if key_bits % 2:
        raise InvalidParameters("key size must be even")
    if insecure_test_key_size:
        if key_bits < _MIN_TEST_KEY_BITS:
            raise InvalidParameters(f"even test keys need at least {_MIN_TEST_KEY_BITS} bits")
        return
    if key_bits < MIN_PRODUCTION_KEY_BITS:
        raise InvalidParameters(
            f"a {key_bits}-bit Paillier modulus is insecure; use {DEFAULT_KEY_BITS} or 3072 "
            "(pass insecure_test_key_size=True only in tests)"
        )


def deal_threshold_key(
    *,
    threshold: int,
    parties: int,
    key_bits: int = DEFAULT_KEY_BITS,
    rng: RandomSource = os.urandom,
    insecure_test_key_size: bool = False,
    primes: tuple[int, int] | None = None,
) -> ThresholdKeyMaterial:
    """Trusted-dealer key generation for t-of-l threshold Paillier.

    Args:
        threshold: ``t``, partial decryptions needed (``2 <= t <= parties``).
        parties: ``l``, shares to deal; share ``i`` goes to party ``i`` (1-based).
        key_bits: bit length of ``N``; 2048 by default, 3072 available.
        rng: randomness for primes, the polynomial, ``v`` and ``h``.
        insecure_test_key_size: allow ``key_bits < 2048``; only tests may set it.
        primes: reuse two known safe primes instead of searching (tests and known-answer vectors); they are
            checked to be distinct safe primes of ``key_bits / 2`` bits.

    Returns:
        The public key and the ``l`` shares. The dealer must erase the shares after sealing them.

    Raises:
        InvalidParameters: unsafe key size, threshold outside ``2..l``, or bad ``primes``.

    Notes:
        ``d = m * (m^-1 mod N)`` is the CRT solution of ``d = 0 mod m``, ``d = 1 mod N``; the polynomial
        coefficients are uniform in ``Z_{Nm}`` (Damgard-Jurik 2001, section 4.1), so any ``t - 1`` shares are
        independent of ``d``. ``v`` is a random square, which generates the squares of ``Z*_{N^2}`` with
        overwhelming probability (Shoup 2000, section 3).
    """
    _check_key_bits(key_bits, insecure_test_key_size)
    if not 2 <= threshold <= parties:
        raise InvalidParameters("threshold must satisfy 2 <= t <= l")
    half = key_bits // 2
    if primes is None:
        p = generate_safe_prime(half, rng=rng)
        q = generate_safe_prime(half, rng=rng)
        while q == p:
            q = generate_safe_prime(half, rng=rng)
    else:
        p, q = (int(x) for x in primes)
        _check_safe_prime(p)
        _check_safe_prime(q)
        if p == q or p.bit_length() != half or q.bit_length() != half:
            raise InvalidParameters("primes must be two distinct safe primes of key_bits / 2 bits")
    n = p * q
    if n.bit_length() != key_bits:
        raise InvalidParameters("primes do not give a modulus of the requested size")
    m = ((p - 1) // 2) * ((q - 1) // 2)
    if parties >= min((p - 1) // 2, (q - 1) // 2):
        raise InvalidParameters("too many parties for this modulus")
    nm = n * m
    nsq = n * n
    d = m * int(gmpy2.invert(m, n))
    coefficients = [d] + [_randbelow(rng, nm) for _ in range(threshold - 1)]
    delta = math.factorial(parties)

    v = int(gmpy2.powmod(_random_unit(rng, nsq), 2, nsq))
    x = _random_unit(rng, n)
    h = (-(x * x)) % n
    hs = int(gmpy2.powmod(h, n, nsq))

    secrets_: list[int] = []
    for i in range(1, parties + 1):
        acc = 0
        for coefficient in reversed(coefficients):  # Horner's rule over Z_{Nm}
            acc = (acc * i + coefficient) % nm
        secrets_.append(acc)
    verification = tuple(int(gmpy2.powmod(v, delta * s, nsq)) for s in secrets_)
    public_key = ThresholdPublicKey(
        paillier=PaillierPublicKey(n),
        threshold=threshold,
        parties=parties,
        hs=hs,
        v=v,
        verification_keys=verification,
    )
    fingerprint = public_key.fingerprint()
    shares = tuple(
        KeyShare(index=i, secret=s, key_fingerprint=fingerprint)
        for i, s in enumerate(secrets_, start=1)
    )
    del coefficients, d, secrets_
    return ThresholdKeyMaterial(public_key=public_key, shares=shares)


# --------------------------------------------------------------------------------------------------------------
# Sealing shares to their silos


@dataclass(frozen=True)
class SealedShare:
    """A key share encrypted to one recipient's X25519 key (ephemeral-static ECIES).

    Attributes:
        index: the share index (public).
        recipient_public: the recipient's X25519 public key (32 bytes).
        ephemeral_public: the dealer's one-time X25519 public key.
        ciphertext: AES-256-GCM ``nonce || ciphertext || tag``.
    """

    index: int
    recipient_public: bytes
    ephemeral_public: bytes
    ciphertext: bytes

    def to_json(self) -> str:
        """JSON with hex byte strings."""
        return json.dumps(
            {
                "version": 1,
                "index": self.index,
                "recipient_public": self.recipient_public.hex(),
                "ephemeral_public": self.ephemeral_public.hex(),
                "ciphertext": self.ciphertext.hex(),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SealedShare:
        """Inverse of :meth:`to_json`.

        Raises:
            InvalidParameters: malformed input.
        """
        try:
            obj = json.loads(text)
            if obj.get("version") != 1:
                raise ValueError("unknown sealed share format")
            return cls(
                index=int(obj["index"]),
                recipient_public=bytes.fromhex(obj["recipient_public"]),
                ephemeral_public=bytes.fromhex(obj["ephemeral_public"]),
                ciphertext=bytes.fromhex(obj["ciphertext"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidParameters("malformed sealed share") from exc


def _share_binding(
    context: bytes, index: int, ephemeral_public: bytes, recipient_public: bytes
) -> bytes:
    return encode_fields(_SHARE_PURPOSE, context, index, ephemeral_public, recipient_public)


def seal_share(
    share: KeyShare,
    recipient_x25519_public: bytes,
    context: bytes,
    *,
    rng: RandomSource = os.urandom,
) -> SealedShare:
    """Encrypt ``share`` so that only the holder of ``recipient_x25519_public`` can open it.

    Notes:
        Ephemeral-static X25519 (RFC 7748) + HKDF-SHA256 (RFC 5869) + AES-256-GCM, all through
        :mod:`secagg.hazmat.keys`. The HKDF info and the AEAD associated data bind the ceremony ``context``
        (federation, key fingerprint), the share index and both public keys, so the coordinator cannot swap
        sealed shares between silos or ceremonies without the open failing.
    """
    ephemeral = new_x25519(rng)
    ephemeral_public = public_bytes(ephemeral)
    binding = _share_binding(context, share.index, ephemeral_public, recipient_x25519_public)
    key = hkdf(agree(ephemeral, recipient_x25519_public), purpose=_SHARE_PURPOSE, info=binding)
    return SealedShare(
        index=share.index,
        recipient_public=recipient_x25519_public,
        ephemeral_public=ephemeral_public,
        ciphertext=seal(key, share.to_bytes(), binding, rng),
    )


def open_share(
    sealed: SealedShare,
    recipient_private: X25519PrivateKey,
    context: bytes,
    *,
    public_key: ThresholdPublicKey | None = None,
) -> KeyShare:
    """Open a :class:`SealedShare` with the recipient's X25519 private key.

    Args:
        sealed: the sealed share.
        recipient_private: the recipient's X25519 key.
        context: the same ceremony context the dealer used.
        public_key: if given, the share must belong to it (fingerprint and index).

    Raises:
        DecryptionError: wrong recipient, wrong context, or tampering (opaque on purpose).
    """
    own_public = public_bytes(recipient_private)
    binding = _share_binding(context, sealed.index, sealed.ephemeral_public, own_public)
    key = hkdf(
        agree(recipient_private, sealed.ephemeral_public), purpose=_SHARE_PURPOSE, info=binding
    )
    plaintext = open_sealed(key, sealed.ciphertext, binding)
    try:
        share = KeyShare.from_bytes(plaintext)
    except InvalidParameters as exc:
        raise DecryptionError("ciphertext does not decrypt") from exc
    if share.index != sealed.index:
        raise DecryptionError("ciphertext does not decrypt")
    if public_key is not None and (
        share.key_fingerprint != public_key.fingerprint()
        or not 1 <= share.index <= public_key.parties
    ):
        raise DecryptionError("ciphertext does not decrypt")
    return share


# --------------------------------------------------------------------------------------------------------------
# Obfuscators (randomness of ciphertexts)


class ObfuscatorMode(enum.StrEnum):
    """How the randomness ``r^N`` of a ciphertext is produced."""

    SHORT_EXPONENT = "short-exponent"
    """Default: ``hs^a`` with a short random ``a`` and a fixed-base table (extra assumption, see module)."""
    STANDARD = "standard"
    """``r^N`` with uniform ``r`` in ``Z*_N``: DCR only, one full exponentiation each."""


_WINDOW_BITS = 8
_WORKER_TABLES: dict[tuple[int, int], list[list[Any]]] = {}


def _fixed_base_table(base: int, modulus: int, exponent_bits: int) -> list[list[Any]]:
    """``table[j][w] = base^(w * 2^(8j)) mod modulus`` for 8-bit windows ``w``."""
    windows = -(-exponent_bits // _WINDOW_BITS)
    table: list[list[Any]] = []
    g = mpz(base)
    mod = mpz(modulus)
    for _ in range(windows):
        row = [mpz(1), g]
        for _ in range((1 << _WINDOW_BITS) - 2):
            row.append(row[-1] * g % mod)
        table.append(row)
        g = row[-1] * g % mod
    return table


def _fixed_base_pow(table: list[list[Any]], exponent: int, modulus: Any) -> Any:
    acc = mpz(1)
    mask = (1 << _WINDOW_BITS) - 1
    j = 0
    while exponent:
        w = exponent & mask
        if w:
            acc = acc * table[j][w] % modulus
        exponent >>= _WINDOW_BITS
        j += 1
    return acc


def _compute_obfuscators(mode: str, n: int, hs: int, seeds: Sequence[int]) -> list[Any]:
    """Turn random seeds into obfuscators (top-level so a process pool can run it)."""
    nsq = mpz(n) * n
    if mode == ObfuscatorMode.STANDARD:
        return list(gmpy2.powmod_base_list([mpz(s) for s in seeds], mpz(n), nsq))
    table = _WORKER_TABLES.get((hs, n))
    if table is None:
        _WORKER_TABLES.clear()  # one key at a time per process: bounded memory
        table = _fixed_base_table(hs, n * n, SHORT_EXPONENT_BITS)
        _WORKER_TABLES[(hs, n)] = table
    return [_fixed_base_pow(table, int(a), nsq) for a in seeds]


class ObfuscatorPool:
    """Precomputed ciphertext randomness, filled offline ahead of a round and consumed once each.

    Args:
        public_key: the joint public key.
        mode: :attr:`ObfuscatorMode.SHORT_EXPONENT` (default) or :attr:`ObfuscatorMode.STANDARD`.
        rng: source of the exponents / bases; every random draw happens in this process.

    Notes:
        An obfuscator is never used twice: two ciphertexts with the same obfuscator reveal the difference of
        their plaintexts (``c1 / c2 = 1 + (m1 - m2) N``). :meth:`take` removes what it returns; if the pool runs
        dry it computes the shortfall on the spot (correct, only slower) and counts it in
        :attr:`computed_online`. Filling uses worker processes for the short-exponent mode, because the
        fixed-base table is driven by Python-level multiplications that hold the GIL, and threads for the
        standard mode, where ``gmpy2.powmod_base_list`` releases the GIL (measured in
        ``bench/bench_paillier.py``).
    """

    def __init__(
        self,
        public_key: ThresholdPublicKey,
        *,
        mode: ObfuscatorMode = ObfuscatorMode.SHORT_EXPONENT,
        rng: RandomSource = os.urandom,
    ) -> None:
        self._public_key = public_key
        self._mode = ObfuscatorMode(mode)
        self._rng = rng
        self._pool: list[Any] = []
        self.computed_online = 0

    def __repr__(self) -> str:
        return f"ObfuscatorPool(mode={self._mode.value!r}, available={len(self._pool)})"

    @property
    def mode(self) -> ObfuscatorMode:
        """The obfuscator construction in use."""
        return self._mode

    @property
    def available(self) -> int:
        """How many precomputed obfuscators remain."""
        return len(self._pool)

    def _seeds(self, count: int) -> list[int]:
        if self._mode is ObfuscatorMode.STANDARD:
            return [int(_random_unit(self._rng, self._public_key.n)) for _ in range(count)]
        return [_randbits(self._rng, SHORT_EXPONENT_BITS) for _ in range(count)]

    def _compute(self, seeds: list[int], workers: int, executor: str) -> list[Any]:
        pk = self._public_key
        if workers <= 1 or len(seeds) < 2 * workers:
            return _compute_obfuscators(self._mode.value, pk.n, pk.hs, seeds)
        size = -(-len(seeds) // (4 * workers))
        batches = [seeds[i : i + size] for i in range(0, len(seeds), size)]
        pool_cls = ProcessPoolExecutor if executor == "process" else ThreadPoolExecutor
        with pool_cls(max_workers=workers) as pool:
            futures = [
                pool.submit(_compute_obfuscators, self._mode.value, pk.n, pk.hs, batch)
                for batch in batches
            ]
            return [value for future in futures for value in future.result()]

    def fill(self, count: int, *, workers: int = 1, executor: str | None = None) -> None:
        """Precompute ``count`` more obfuscators.

        Args:
            count: how many to add.
            workers: parallel workers (2 uses both cores of the reference machine).
            executor: ``"process"`` or ``"thread"``; by default processes for the short-exponent mode and
                threads for the standard mode (see class notes).
        """
        if count < 0 or workers < 1:
            raise ValueError("count must be >= 0 and workers >= 1")
        if executor is None:
            executor = "thread" if self._mode is ObfuscatorMode.STANDARD else "process"
        if executor not in ("process", "thread"):
            raise ValueError("executor must be 'process' or 'thread'")
        self._pool.extend(self._compute(self._seeds(count), workers, executor))

    def take(self, count: int) -> list[Any]:
        """Remove and return ``count`` obfuscators, computing any shortfall now."""
        if count < 0:
            raise ValueError("count must be >= 0")
        shortfall = max(0, count - len(self._pool))
        if shortfall:
            self.fill(shortfall)
            self.computed_online += shortfall
        taken = self._pool[len(self._pool) - count :] if count else []
        del self._pool[len(self._pool) - count :]
        return taken


# --------------------------------------------------------------------------------------------------------------
# Encryption and homomorphic addition


def encrypt_plaintexts(
    public_key: ThresholdPublicKey, plaintexts: Sequence[int], pool: ObfuscatorPool
) -> list[int]:
    """Encrypt each plaintext in ``[0, N)`` as ``(1 + M N) * obfuscator mod N^2``.

    Raises:
        ValueError: a plaintext is outside ``[0, N)``.
    """
    n = mpz(public_key.n)
    nsq = n * n
    obfuscators = pool.take(len(plaintexts))
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
    for offset in range(0, len(data), width):
        value = int.from_bytes(data[offset : offset + width], "big")
        if not 0 < value < nsq or gmpy2.gcd(value, n) != 1:
            raise ValueError("ciphertext outside Z*_{N^2}")
        out.append(value)
    return out


# --------------------------------------------------------------------------------------------------------------
# Partial decryption with a batched proof of correctness


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

    Notes:
        The prover's nonce ``r`` has ``|N^2| + |Delta| + 256 + 128`` bits, so ``z = r + e Delta s_i`` hides
        ``Delta s_i < Delta N^2`` up to statistical distance 2^-128 (Shoup 2000, section 3; Damgard-Jurik 2001,
        section 4.2).
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

    width = public_key.ciphertext_bytes
    ct_digest = _digest_ints(ciphertexts, width)
    pd_digest = _digest_ints(values, width)
    rho = _batch_exponents(public_key, context, share.index, ct_digest, pd_digest, len(values))
    base4 = gmpy2.powmod(_fold(bases, rho, nsq), 4, nsq)
    target2 = gmpy2.powmod(_fold(values, rho, nsq), 2, nsq)
    r_bits = nsq.bit_length() + public_key.delta.bit_length() + _CHALLENGE_BITS + _STATISTICAL_BITS
    r = mpz(_randbits(rng, r_bits))
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
