"""The messages of the masking protocol (frozen dataclasses) and the exact bytes each one signs.

Notes:
    Every signature and every AEAD associated-data string starts with a purpose label and carries the session
    id (or, before the session id exists, the federation, round, model hash and parameter hash), so no message
    can be replayed into another stage, round or federation (DESIGN 4.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from secagg.hazmat.keys import encode_fields
from secagg.masking.config import PROTOCOL_VERSION, RoundConfig

__all__ = [
    "COMMITMENT_BYTES",
    "Advertisement",
    "EncryptedShare",
    "ShareKeys",
    "Stage",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "advertisement_payload",
    "seed_commitment",
    "session_id",
    "survivors_payload",
]

COMMITMENT_BYTES = 32
"""Length of a self-mask seed commitment (SHA-256)."""


class Stage(StrEnum):
    """The stages of one round, in order (DESIGN 4.1)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class Advertisement:
    """Stage 1: a silo's two fresh X25519 public keys and its self-mask seed commitment, signed with its roster key.

    Attributes:
        silo: the advertising silo.
        enc_public: X25519 public key for share encryption.
        mask_public: X25519 public key for pairwise masks.
        signature: Ed25519 signature by the silo's roster key over :func:`advertisement_payload`.
        seed_commitment: :func:`seed_commitment` of the silo's self-mask seed b_u (32 bytes), signed too. It
            defaults to empty only because an absent protobuf field reads as empty: the server and every
            client refuse an advertisement whose commitment is not 32 bytes.
    """

    silo: str
    enc_public: bytes
    mask_public: bytes
    signature: bytes = field(repr=False)
    seed_commitment: bytes = b""


@dataclass(frozen=True)
class EncryptedShare:
    """Stage 2: one sender's Shamir shares for one recipient, AES-GCM encrypted to that recipient."""

    sender: str
    recipient: str
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2: everything one sender sends, one ciphertext per other member of U1."""

    sender: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class SurvivorSignature:
    """Stage 4: a silo's signature over (session id, sorted U3)."""

    silo: str
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 5, server to silos: who survived (with their signatures on that set) and who dropped."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[SurvivorSignature, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 5, silo to server: self-mask shares of survivors, mask-key shares of dropped silos."""

    silo: str
    self_mask_shares: Mapping[str, bytes] = field(repr=False)
    mask_key_shares: Mapping[str, bytes] = field(repr=False)


def advertisement_payload(
    config: RoundConfig,
    silo: str,
    enc_public: bytes,
    mask_public: bytes,
    seed_commitment: bytes = b"",
) -> bytes:
    """The bytes a silo signs in stage 1: version, federation, round, silo, keys, seed commitment, model and
    params hash.

    ``seed_commitment`` defaults to empty like :attr:`Advertisement.seed_commitment`; no payload without a
    32-byte commitment is ever accepted.
    """
    return encode_fields(
        "advertise",
        PROTOCOL_VERSION,
        config.federation,
        config.round,
        silo,
        enc_public,
        mask_public,
        seed_commitment,
        config.model_hash,
        config.params_hash(),
    )


def seed_commitment(config: RoundConfig, silo: str, seed: bytes) -> bytes:
    """The commitment to a silo's self-mask seed b_u that its advertisement carries (DESIGN 4.4).

    SHA-256 over (purpose label, protocol version, federation, round, silo id, b_u), injectively encoded.

    Notes:
        It lets the server check every b_u it reconstructs in stage 5, so a silo that reveals a wrong self-mask
        share (one shifted by the inverse of its public Lagrange coefficient moves the reconstructed seed by
        exactly 1 and still gives a valid 32-byte seed) is caught and named instead of silently turning the sum
        into noise.

        The session id cannot be in the commitment, because the session id is computed from the signed
        advertisements that carry it. It is not needed either: b_u is 32 fresh random bytes drawn for this
        round alone, and the commitment binds it to the protocol version, federation, round and silo, so no
        commitment can be replayed into another round, federation or silo. The advertisement signature covers
        the commitment, and the session id covers the advertisement.

        Binding rests on SHA-256's collision resistance (no second seed matches), hiding on b_u's 256 bits of
        entropy and SHA-256's preimage resistance; the self-mask PRG key is derived from b_u with HKDF under
        another label, so the commitment tells nobody anything about the mask.
    """
    return hashlib.sha256(
        encode_fields(
            "self-mask-commitment",
            PROTOCOL_VERSION,
            config.federation,
            config.round,
            silo,
            seed,
        )
    ).digest()


def session_id(config: RoundConfig, advertisements: Sequence[Advertisement]) -> bytes:
    """SHA-256 over version, federation, round, the sorted signed advertisements, model hash and params."""
    fields: list[bytes | str | int] = [
        "session",
        PROTOCOL_VERSION,
        config.federation,
        config.round,
        config.model_hash,
        config.params_hash(),
    ]
    for ad in sorted(advertisements, key=lambda a: a.silo):
        fields += [ad.silo, ad.enc_public, ad.mask_public, ad.seed_commitment, ad.signature]
    return hashlib.sha256(encode_fields(*fields)).digest()


def survivors_payload(session: bytes, survivors: Sequence[str]) -> bytes:
    """The bytes a silo signs in stage 4."""
    return encode_fields("survivors", session, *sorted(survivors))
