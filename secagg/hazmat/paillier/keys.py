"""Threshold Paillier key material (public key, shares, what the dealer holds) and the trusted dealer.

Notes:
    Key format 2 deals the Damgard-Jurik secret ``d`` (``d = 0 mod m``, ``d = 1 mod N``) with a sharing polynomial
    ``f(X) = 1 + N g(X) mod Nm`` whose non-constant coefficients are multiples of ``N``: every share is
    ``s_i = 1 + N g_i`` with ``g_i = g(i) mod m`` a Shamir share over ``Z_m`` of ``g(0) = -N^-1 mod m``
    (Shoup 2000's RSA sharing, with the RSA exponent ``N``). A party stores ``g_i``. Why this is as safe as
    uniform coefficients over ``Z_{Nm}`` (Damgard-Jurik 2001, section 4.1) and why it makes a partial
    decryption a third cheaper: :mod:`secagg.hazmat.paillier.threshold`. Format 1 keys (uniform coefficients) are refused
    with a request to re-run the ceremony.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import gmpy2
from phe import PaillierPublicKey

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier.primes import check_safe_prime, generate_safe_prime
from secagg.hazmat.random import randbelow, random_unit

__all__ = [
    "DEFAULT_KEY_BITS",
    "MIN_PRODUCTION_KEY_BITS",
    "SUPPORTED_KEY_BITS",
    "KeyShare",
    "ThresholdKeyMaterial",
    "ThresholdPublicKey",
    "check_key_share",
    "deal_threshold_key",
]

DEFAULT_KEY_BITS = 2048
SUPPORTED_KEY_BITS = (2048, 3072)
MIN_PRODUCTION_KEY_BITS = 2048
_MIN_TEST_KEY_BITS = 256
_KEY_FORMAT = 2
_SCHEME = "threshold-paillier-shoup"
_OLD_FORMAT_HINT = (
    "a format-1 threshold Paillier key (shares uniform mod Nm) is no longer supported; "
    "re-run the key ceremony (secagg pki paillier)"
)


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
        v: a random square mod ``N`` (it generates the squares ``QR_N``, of order ``m``, with overwhelming
            probability), the base of the verification keys.
        verification_keys: ``v_i = v^(Delta g_i) mod N`` for ``i = 1..l``.
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
        if not 0 < self.hs < nsq or math.gcd(self.hs, n) != 1:
            raise InvalidParameters("public key element outside Z*_{N^2}")
        for value in (self.v, *self.verification_keys):
            if not 0 < value < n or math.gcd(value, n) != 1:
                raise InvalidParameters("verification element outside Z*_N")

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
    def modulus_bytes(self) -> int:
        """Fixed width of one element mod ``N`` (bytes of ``N``)."""
        return (self.n.bit_length() + 7) // 8

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of one serialised ciphertext (bytes of ``N^2``)."""
        return (self.nsquare.bit_length() + 7) // 8

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, hex integers); the fingerprint is computed over it."""
        return json.dumps(
            {
                "version": _KEY_FORMAT,
                "scheme": _SCHEME,
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
            if obj.get("version") == 1:
                raise InvalidParameters(_OLD_FORMAT_HINT)
            if obj.get("version") != _KEY_FORMAT or obj.get("scheme") != _SCHEME:
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
    """One party's secret share. ``repr`` hides the secret.

    Attributes:
        index: the party's index ``i`` in ``1..l`` (the x-coordinate of the share).
        secret: ``g_i = g(i) mod m``; the Damgard-Jurik share is ``s_i = 1 + N g_i`` (module notes). Never log it.
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
                "version": _KEY_FORMAT,
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
            if obj.get("version") == 1:
                raise InvalidParameters(_OLD_FORMAT_HINT)
            if obj.get("version") != _KEY_FORMAT:
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
        ``d = 1 + N u`` with ``u = -N^-1 mod m`` is the CRT solution of ``d = 0 mod m``, ``d = 1 mod N``
        (Damgard-Jurik 2001, section 4.1). It is shared as ``f(X) = 1 + N g(X)`` with ``g`` of degree ``t - 1``,
        ``g(0) = u`` and the other coefficients uniform in ``Z_m``, so ``s_i = f(i) = 1 + N g_i``: the shares are
        a t-of-l Shamir sharing over ``Z_m`` (Shoup 2000, section 3) and any ``t - 1`` of them are independent of
        ``u``; they are constant mod ``N``, which ``t - 1`` parties of a uniform sharing could compute anyway
        (module :mod:`secagg.hazmat.paillier.threshold`). ``v`` is a random square mod ``N``, which generates
        ``QR_N`` (cyclic of order ``m``, no prime factor below ``min(p', q')``) with overwhelming probability
        (Shoup 2000, section 3). The random stream is consumed exactly as by key format 1 (coefficients drawn
        below ``Nm`` and reduced mod ``m``, which keeps them uniform since ``m`` divides ``Nm``; ``v`` drawn mod
        ``N^2`` and reduced), so seeded keys keep the same ``N`` and ``hs``.
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
        check_safe_prime(p)
        check_safe_prime(q)
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
    u = (-int(gmpy2.invert(n, m))) % m
    coefficients = [u] + [randbelow(rng, nm) % m for _ in range(threshold - 1)]
    delta = math.factorial(parties)

    v = int(gmpy2.powmod(random_unit(rng, nsq), 2, nsq)) % n
    x = random_unit(rng, n)
    h = (-(x * x)) % n
    hs = int(gmpy2.powmod(h, n, nsq))

    secrets_: list[int] = []
    for i in range(1, parties + 1):
        acc = 0
        for coefficient in reversed(coefficients):  # Horner's rule over Z_m
            acc = (acc * i + coefficient) % m
        secrets_.append(acc)
    verification = tuple(int(gmpy2.powmod(v, delta * g, n)) for g in secrets_)
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
        KeyShare(index=i, secret=g, key_fingerprint=fingerprint)
        for i, g in enumerate(secrets_, start=1)
    )
    del coefficients, u, secrets_, m, nm
    return ThresholdKeyMaterial(public_key=public_key, shares=shares)


def check_key_share(public_key: ThresholdPublicKey, share: KeyShare) -> None:
    """Refuse a share that does not belong to ``public_key``: fingerprint, index and ``v^(Delta g_i) = v_i``.

    Raises:
        InvalidParameters: the share is of another key, has an unknown index, or does not match its
            verification key (a corrupted or substituted share would only produce refused partial decryptions).
    """
    if (
        share.key_fingerprint != public_key.fingerprint()
        or not 1 <= share.index <= public_key.parties
    ):
        raise InvalidParameters("key share does not belong to this public key")
    n = public_key.n
    if (
        not 0 <= share.secret < n
        or gmpy2.powmod(public_key.v, public_key.delta * share.secret, n)
        != public_key.verification_keys[share.index - 1]
    ):
        raise InvalidParameters("key share does not match its verification key")
