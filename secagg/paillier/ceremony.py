"""The trusted-dealer key ceremony of Paillier mode: deal a threshold key and seal each share to its silo."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import RandomSource, encode_fields
from secagg.hazmat.paillier import (
    DEFAULT_KEY_BITS,
    KeyShare,
    SealedShare,
    ThresholdPublicKey,
    deal_threshold_key,
    open_share,
    seal_share,
)
from secagg.paillier.config import LABEL

__all__ = [
    "DEFAULT_COLLUSION",
    "DEFAULT_MIN_COHORT",
    "KeyCeremonyResult",
    "ceremony_context",
    "check_trust_parameters",
    "open_key_share",
    "run_key_ceremony",
]

DEFAULT_COLLUSION = 0
"""The collusion bound ``c`` the ceremony assumes when none is given (the default of ``[rounds] collusion``)."""

DEFAULT_MIN_COHORT = 3
"""The ``min_cohort`` the ceremony assumes when none is given (the default of ``[rounds] min_cohort``)."""


@dataclass(frozen=True)
class KeyCeremonyResult:
    """Output of the trusted-dealer ceremony: public material only (shares are sealed).

    Attributes:
        public_key: the joint public key (for the coordinator and every silo).
        sealed_shares: silo id -> its share, sealed to the silo's X25519 key.
        indices: silo id -> share index (sorted silo ids get 1..l).
    """

    public_key: ThresholdPublicKey
    sealed_shares: Mapping[str, SealedShare]
    indices: Mapping[str, int]


def ceremony_context(federation_id: str, public_key: ThresholdPublicKey) -> bytes:
    """Binding for sealed shares: the federation and the key fingerprint."""
    return encode_fields(f"{LABEL}/ceremony", federation_id, public_key.fingerprint())


def check_trust_parameters(
    *, threshold: int, collusion: int, min_cohort: int, parties: int | None = None
) -> None:
    """Refuse a threshold that ``collusion`` silos could reach, or a cohort with fewer than two honest members.

    Raises:
        InvalidParameters: ``collusion < 0``, ``threshold <= collusion``, ``min_cohort - collusion < 2``, or
            ``min_cohort`` larger than ``parties``.

    Notes:
        With ``t <= c`` the coordinator and ``c`` colluding silos hold ``t`` shares and can decrypt any single
        silo's ciphertext. With ``min_cohort - c < 2`` an aggregate the decrypters accept may contain one
        honest contribution, which the colluders then read by subtracting their own (DESIGN 5; the same rule
        as masking mode's ``t > (n + c) / 2`` with ``min_cohort``, Bonawitz et al. CCS 2017, section 6.3).
    """
    if collusion < 0:
        raise InvalidParameters(f"collusion must be >= 0, got {collusion}")
    if threshold <= collusion:
        raise InvalidParameters(
            f"threshold t={threshold} must exceed collusion c={collusion}: "
            "c colluding silos could decrypt any contribution"
        )
    if min_cohort - collusion < 2:
        raise InvalidParameters(
            f"min_cohort {min_cohort} - collusion {collusion} must be >= 2: a decrypted aggregate "
            "could hold a single honest contribution"
        )
    if parties is not None and min_cohort > parties:
        raise InvalidParameters(f"min_cohort {min_cohort} exceeds the {parties} key holders")


def run_key_ceremony(
    *,
    federation_id: str,
    threshold: int,
    recipients: Mapping[str, bytes],
    collusion: int = DEFAULT_COLLUSION,
    min_cohort: int = DEFAULT_MIN_COHORT,
    key_bits: int = DEFAULT_KEY_BITS,
    rng: RandomSource = os.urandom,
    insecure_test_key_size: bool = False,
    primes: tuple[int, int] | None = None,
) -> KeyCeremonyResult:
    """Deal a t-of-l threshold Paillier key and seal each share to its silo.

    Args:
        federation_id: the federation the key belongs to.
        threshold: ``t``.
        recipients: silo id -> the silo's X25519 public key (32 bytes).
        collusion: ``c``, the silos the consortium assumes may collude with the coordinator; ``t > c``.
        min_cohort: the fewest contributions a decrypted aggregate may hold; ``min_cohort - c >= 2``.
        key_bits: 2048 (default) or 3072.
        rng: randomness for everything the dealer draws.
        insecure_test_key_size: allow small keys (tests only).
        primes: reuse known safe primes (tests only).

    Raises:
        InvalidParameters: unsafe sizes, or a threshold or cohort the colluders could defeat
            (:func:`check_trust_parameters`).

    Notes:
        A trusted dealer sees every share; the ceremony must run on an offline machine that erases its memory
        afterwards (DESIGN 5: dealer-free generation is a later goal). Shares never leave the function
        unsealed.
    """
    if len(recipients) < 2:
        raise InvalidParameters("a threshold key needs at least two recipients")
    check_trust_parameters(
        threshold=threshold, collusion=collusion, min_cohort=min_cohort, parties=len(recipients)
    )
    material = deal_threshold_key(
        threshold=threshold,
        parties=len(recipients),
        key_bits=key_bits,
        rng=rng,
        insecure_test_key_size=insecure_test_key_size,
        primes=primes,
    )
    context = ceremony_context(federation_id, material.public_key)
    indices = {silo: i for i, silo in enumerate(sorted(recipients), start=1)}
    sealed = {
        silo: seal_share(material.shares[i - 1], recipients[silo], context, rng=rng)
        for silo, i in indices.items()
    }
    return KeyCeremonyResult(public_key=material.public_key, sealed_shares=sealed, indices=indices)


def open_key_share(
    sealed: SealedShare,
    recipient_private: X25519PrivateKey,
    *,
    federation_id: str,
    public_key: ThresholdPublicKey,
) -> KeyShare:
    """Open this silo's sealed share. Raises :class:`~secagg.errors.DecryptionError` if it is not ours."""
    return open_share(
        sealed,
        recipient_private,
        ceremony_context(federation_id, public_key),
        public_key=public_key,
    )
