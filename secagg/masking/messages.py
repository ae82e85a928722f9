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
    "Advertisement",
    "EncryptedShare",
    "ShareKeys",
    "Stage",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "advertisement_payload",
    "session_id",
    "survivors_payload",
]


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
    """Stage 1: a silo's two fresh X25519 public keys, signed with its roster key."""

    silo: str
    enc_public: bytes
    mask_public: bytes
    signature: bytes = field(repr=False)


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
    config: RoundConfig, silo: str, enc_public: bytes, mask_public: bytes
) -> bytes:
    """The bytes a silo signs in stage 1: version, federation, round, silo, keys, model and params hash."""
    return encode_fields(
        "advertise",
        PROTOCOL_VERSION,
        config.federation,
        config.round,
        silo,
        enc_public,
        mask_public,
        config.model_hash,
        config.params_hash(),
    )


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
        fields += [ad.silo, ad.enc_public, ad.mask_public, ad.signature]
    return hashlib.sha256(encode_fields(*fields)).digest()


def survivors_payload(session: bytes, survivors: Sequence[str]) -> bytes:
    """The bytes a silo signs in stage 4."""
    return encode_fields("survivors", session, *sorted(survivors))
