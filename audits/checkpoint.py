"""Signed checkpoints of the ledger as C2SP signed notes (tlog-checkpoint, signed-note).

A checkpoint commits the coordinator's audit key to ``(origin, size, root)``::

    <origin>
    <size>
    <base64 root>

    — <key name> <base64(key id || Ed25519 signature)>

Notes:
    Format from https://c2sp.org/tlog-checkpoint and https://c2sp.org/signed-note: the
    signature covers the note text (the three body lines, each ending in a newline); the
    4-byte key id is ``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``, with 0x01 the
    Ed25519 signature type. Binding the key name into the id means a signature line cannot be
    relabelled as another key's. Verification needs the pinned public key and origin and
    fails closed: an unknown key, a bad signature or any malformed line raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audits.errors import VerificationError

__all__ = [
    "CheckpointSigner",
    "SignedCheckpoint",
    "key_id",
    "parse_checkpoint",
    "verify_checkpoint",
]

_EM_DASH: Final = "\u2014"
_ED25519_TYPE: Final = b"\x01"
_MAX_SIZE: Final = 2**63 - 1
_NAME_RE = re.compile(r"^[^\s+]+$")  # signed-note key names: no whitespace, no '+'
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def _public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key_name: str, public_key: bytes) -> bytes:
    """The 4-byte signed-note key id of an Ed25519 key (C2SP signed-note)."""
    data = key_name.encode("utf-8") + b"\n" + _ED25519_TYPE + public_key
    return hashlib.sha256(data).digest()[:4]


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint and the full signed-note text it came from.

    Attributes:
        origin: the log's unique name (first body line).
        size: number of entries the checkpoint commits to.
        root: the 32-byte RFC 6962 root of those entries.
        text: the complete signed note (body, blank line, signature lines).
    """

    origin: str
    size: int
    root: bytes

    text: str

    @property
    def body(self) -> str:
        """The signed note text (the three body lines)."""
        return _body(self.origin, self.size, self.root)


def _body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{what} must be non-empty, without whitespace or '+'")


class CheckpointSigner:
    """The coordinator's audit key: signs checkpoints. ``repr`` never shows the key.

    Args:
        private_key: the Ed25519 private key.
        key_name: the signed-note key name (usually the log origin); no spaces or '+'.
    """

    __slots__ = ("_key", "_key_id", "_public", "key_name")

    def __init__(self, private_key: Ed25519PrivateKey, *, key_name: str) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        _check_name(key_name, "key_name")
        self._key = private_key
        self.key_name = key_name
        self._public = _public_bytes(private_key.public_key())
        self._key_id = key_id(key_name, self._public)

    @classmethod
    def generate(cls, *, key_name: str) -> CheckpointSigner:
        """A signer with a fresh key from the operating system's CSPRNG."""
        return cls(Ed25519PrivateKey.generate(), key_name=key_name)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_name={self.key_name!r}, key_id={self._key_id.hex()}, key=<hidden>)"

    def sign(self, *, origin: str, size: int, root: bytes) -> SignedCheckpoint:
        """Sign ``(origin, size, root)`` and return the checkpoint with its note text."""
        if not isinstance(origin, str) or not origin or "\n" in origin:
            raise ValueError("origin must be a non-empty single line")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_SIZE:
            raise ValueError("size must be an integer in 0..2**63-1")
        if not isinstance(root, bytes) or len(root) != 32:
            raise ValueError("root must be 32 bytes")
        body = _body(origin, size, root)
        signature = self._key.sign(body.encode("utf-8"))
        blob = base64.b64encode(self._key_id + signature).decode("ascii")
        text = f"{body}\n{_EM_DASH} {self.key_name} {blob}\n"
        return SignedCheckpoint(origin=origin, size=size, root=root, text=text)


def _split(text: str) -> tuple[str, list[str]]:
    if not isinstance(text, str):
        raise VerificationError("checkpoint: not text")
    if len(text) > 1 << 16:
        raise VerificationError("checkpoint: too long")
    if not text.endswith("\n"):
        raise VerificationError("checkpoint: note does not end with a newline")
    cut = text.rfind("\n\n")
    if cut < 0:
        raise VerificationError("checkpoint: no blank line before the signatures")
    body = text[: cut + 1]
    signatures = text[cut + 2 : -1].split("\n")
    return body, signatures


def parse_checkpoint(text: str) -> SignedCheckpoint:
    """Parse a checkpoint note WITHOUT checking its signature (see :func:`verify_checkpoint`).

    Raises:
        VerificationError: the text is not a well-formed checkpoint note.
    """
    body, _signatures = _split(text)
    lines = body.split("\n")[:-1]
    if len(lines) != 3:
        raise VerificationError(
            f"checkpoint: expected 3 body lines (origin, size, root), found {len(lines)}"
        )
    origin, size_text, root_text = lines
    if not origin:
        raise VerificationError("checkpoint: empty origin")
    if not _SIZE_RE.match(size_text) or int(size_text) > _MAX_SIZE:
        raise VerificationError(f"checkpoint: bad tree size {size_text!r}")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("checkpoint: root is not base64") from None
    if len(root) != 32 or base64.b64encode(root).decode("ascii") != root_text:
        raise VerificationError("checkpoint: root is not a canonical base64 32-byte hash")
    return SignedCheckpoint(origin=origin, size=int(size_text), root=root, text=text)


def verify_checkpoint(
    text: str, public_key: bytes, origin: str, *, key_name: str | None = None
) -> SignedCheckpoint:
    """Verify a checkpoint note against the pinned audit key and origin.

    Args:
        text: the signed note.
        public_key: the raw 32-byte Ed25519 public key of the coordinator's audit key.
        origin: the origin the verifier expects.
        key_name: the expected key name; ``None`` accepts any name whose key id binds it to
            ``public_key`` (the id is a hash of name and key, so this is still unambiguous).

    Returns:
        The parsed checkpoint.

    Raises:
        VerificationError: wrong origin, malformed note, or no valid signature by the key.
    """
    checkpoint = parse_checkpoint(text)
    if checkpoint.origin != origin:
        raise VerificationError(
            f"checkpoint: origin {checkpoint.origin!r} is not the expected {origin!r}"
        )
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise VerificationError("checkpoint: the audit public key must be 32 raw bytes")
    verifier = Ed25519PublicKey.from_public_bytes(public_key)
    body, signature_lines = _split(text)
    message = body.encode("utf-8")
    found_key = False
    for line in signature_lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or not _NAME_RE.match(parts[1]):
            raise VerificationError(f"checkpoint: malformed signature line {line[:60]!r}")
        name = parts[1]
        if key_name is not None and name != key_name:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("checkpoint: signature is not base64") from None
        if len(blob) != 4 + 64 or blob[:4] != key_id(name, public_key):
            continue  # another key's signature (e.g. a witness cosignature): not ours
        found_key = True
        try:
            verifier.verify(blob[4:], message)
        except InvalidSignature:
            raise VerificationError(
                f"checkpoint: signature by audit key {name!r} is invalid"
            ) from None
        return checkpoint
    if found_key:  # pragma: no cover - the loop returns or raises on our key
        raise VerificationError("checkpoint: signature is invalid")
    raise VerificationError("checkpoint: not signed by the pinned audit key")
