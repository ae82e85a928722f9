"""Sealing a key share to its silo's X25519 key (ephemeral-static ECIES) and opening it there."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import DecryptionError, InvalidParameters
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
from secagg.hazmat.paillier.keys import KeyShare, ThresholdPublicKey

__all__ = ["SealedShare", "open_share", "seal_share"]

_SHARE_PURPOSE = "paillier-key-share"


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
