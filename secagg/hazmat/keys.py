"""Key agreement, key derivation, signatures and authenticated encryption: the only door to `cryptography`.

Notes:
    - X25519 (RFC 7748) for key agreement. ``cryptography`` rejects an all-zero shared secret, which is what a
      low-order peer key produces (RFC 7748 section 6.1); we turn that into ``ProtocolViolation`` because only a
      malicious peer or server sends such a key.
    - HKDF-SHA256 (RFC 5869) turns every shared secret into a key; the ``info`` always carries a purpose label
      and the round's session id, so no key is ever reused across purposes, rounds or federations
      (Bonawitz et al. 2017, section 6; NIST SP 800-56C rev. 2).
    - AES-256-GCM with a random 96-bit nonce (NIST SP 800-38D); each derived key encrypts one message, and the
      associated data binds the ciphertext to session id, sender and recipient so the server cannot move it.
    - Ed25519 (RFC 8032) for roster, advertisement and survivor-set signatures; verification raises.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import DecryptionError, InvalidSignature, ProtocolViolation

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "RandomSource",
    "agree",
    "encode_fields",
    "hkdf",
    "new_x25519",
    "open_sealed",
    "public_bytes",
    "seal",
    "sign",
    "verify",
]

RandomSource = Callable[[int], bytes]
"""A source of random bytes: ``os.urandom`` in production, a seeded generator in tests."""

KEY_BYTES = 32
NONCE_BYTES = 12
_LABEL = b"secagg/v1/"


def encode_fields(*fields: bytes | str | int) -> bytes:
    """Injective encoding of a tuple of fields (length-prefixed), for signatures, HKDF info and AAD.

    Notes:
        Plain concatenation is ambiguous ("ab"+"c" == "a"+"bc"); every field is prefixed with its
        type and 4-byte length so two different tuples never encode to the same bytes.
    """
    out = bytearray()
    for field in fields:
        if isinstance(field, bool):
            raise TypeError("booleans are not protocol fields")
        if isinstance(field, int):
            tag, data = b"i", field.to_bytes(8, "big", signed=True)
        elif isinstance(field, str):
            tag, data = b"s", field.encode("utf-8")
        elif isinstance(field, bytes):
            tag, data = b"b", field
        else:
            raise TypeError(f"unsupported field type {type(field).__name__}")
        out += tag + struct.pack(">I", len(data)) + data
    return bytes(out)


def hkdf(secret: bytes, *, purpose: str, info: bytes, length: int = KEY_BYTES) -> bytes:
    """Derive ``length`` bytes from ``secret`` for one ``purpose`` bound to ``info`` (HKDF-SHA256)."""
    if len(secret) < 16:
        raise ValueError("HKDF input secret is shorter than 128 bits")
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=None,
        info=_LABEL + encode_fields(purpose, info),
    ).derive(secret)


def new_x25519(rng: RandomSource = os.urandom) -> X25519PrivateKey:
    """A fresh X25519 private key from ``rng`` (clamping is applied by X25519 itself, RFC 7748)."""
    return X25519PrivateKey.from_private_bytes(rng(KEY_BYTES))


def public_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with a peer's raw public key.

    Raises:
        ProtocolViolation: the peer key is malformed or of low order (all-zero shared secret).
    """
    if len(peer_public) != KEY_BYTES:
        raise ProtocolViolation("peer X25519 public key has the wrong length")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # cryptography raises ValueError for an all-zero (low-order) result
        raise ProtocolViolation("peer X25519 public key is of low order") from exc


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature (RFC 8032)."""
    return key.sign(message)


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Verify an Ed25519 signature.

    Raises:
        InvalidSignature: the key is malformed or the signature does not verify.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (_CryptoInvalidSignature, ValueError) as exc:
        raise InvalidSignature("signature does not verify") from exc


def seal(key: bytes, plaintext: bytes, aad: bytes, rng: RandomSource = os.urandom) -> bytes:
    """AES-256-GCM encrypt: returns ``nonce || ciphertext || tag``."""
    nonce = rng(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`.

    Raises:
        DecryptionError: for any failure (wrong key, wrong AAD, tampering, truncation), without saying which.
    """
    if len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("ciphertext does not decrypt")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise DecryptionError("ciphertext does not decrypt") from exc
