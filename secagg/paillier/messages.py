"""The messages of Paillier mode (frozen dataclasses) and the exact bytes each one signs or hashes.

Notes:
    Every digest and signed message starts with :data:`~secagg.paillier.config.LABEL` and its purpose, so
    no message can stand in for another; why a :class:`SignedCommitment` binds what it binds is the
    decryption-oracle defence in :mod:`secagg.paillier`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from secagg.errors import InvalidSignature, ProtocolViolation
from secagg.hazmat.keys import encode_fields, verify
from secagg.hazmat.paillier import PartialDecryption
from secagg.paillier.config import LABEL

__all__ = [
    "CiphertextChunk",
    "DecryptionRequest",
    "PartialDecryptionMessage",
    "SignedCommitment",
    "SpotCheckChallenge",
    "SpotCheckOpening",
    "SpotCheckResponse",
    "proof_context",
]


@dataclass(frozen=True)
class CiphertextChunk:
    """Consecutive ciphertexts of one silo's vector (``chunk_index * chunk_ciphertexts`` is the first position)."""

    silo_id: str
    chunk_index: int
    data: bytes

    def __repr__(self) -> str:
        return f"CiphertextChunk(silo_id={self.silo_id!r}, chunk_index={self.chunk_index}, bytes={len(self.data)})"


@dataclass(frozen=True)
class SignedCommitment:
    """A silo's signed Merkle root over its ciphertext vector, bound to the round context."""

    silo_id: str
    context: bytes
    vector_length: int
    ciphertext_count: int
    merkle_root: bytes
    signature: bytes

    def signed_message(self) -> bytes:
        """The exact bytes the silo signs."""
        return encode_fields(
            f"{LABEL}/commitment",
            self.context,
            self.silo_id,
            self.vector_length,
            self.ciphertext_count,
            self.merkle_root,
        )

    def verify(
        self,
        roster: Mapping[str, bytes],
        *,
        context: bytes,
        vector_length: int,
        ciphertext_count: int,
    ) -> None:
        """Check the signature against the roster and the binding against the expected round.

        Raises:
            ProtocolViolation: unknown silo, other context, wrong dimensions, or a signature that does not verify.
        """
        public = roster.get(self.silo_id)
        if public is None:
            raise ProtocolViolation("commitment from a silo outside the roster")
        if self.context != context:
            raise ProtocolViolation("commitment is bound to another round, key or federation")
        if self.vector_length != vector_length or self.ciphertext_count != ciphertext_count:
            raise ProtocolViolation("commitment has the wrong vector length")
        try:
            verify(public, self.signature, self.signed_message())
        except InvalidSignature as exc:
            raise ProtocolViolation("commitment signature does not verify") from exc


@dataclass(frozen=True)
class DecryptionRequest:
    """What the coordinator asks key holders to partially decrypt: the aggregate and who is in it."""

    context: bytes
    aggregate: bytes
    contributions: tuple[SignedCommitment, ...]

    def __repr__(self) -> str:
        return f"DecryptionRequest(contributors={[c.silo_id for c in self.contributions]})"

    def digest(self) -> bytes:
        """SHA-256 over the whole request (the aggregate via its hash)."""
        return hashlib.sha256(
            encode_fields(
                f"{LABEL}/decryption-request",
                self.context,
                hashlib.sha256(self.aggregate).digest(),
                *[c.signed_message() + c.signature for c in self.contributions],
            )
        ).digest()


@dataclass(frozen=True)
class SpotCheckChallenge:
    """Positions a decrypter wants opened, drawn with its own randomness after the request was fixed."""

    request_digest: bytes
    positions: tuple[int, ...]


@dataclass(frozen=True)
class SpotCheckOpening:
    """One contributor's ciphertext at one position with its RFC 6962 inclusion proof."""

    silo_id: str
    position: int
    ciphertext: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class SpotCheckResponse:
    """The coordinator's openings for a :class:`SpotCheckChallenge`."""

    request_digest: bytes
    openings: tuple[SpotCheckOpening, ...]


@dataclass(frozen=True)
class PartialDecryptionMessage:
    """A key holder's verified-proof partial decryption of one request's aggregate."""

    silo_id: str
    request_digest: bytes
    partial: PartialDecryption


def proof_context(context: bytes, request_digest: bytes) -> bytes:
    """The context hashed into every partial-decryption proof for one request of one round."""
    return encode_fields(f"{LABEL}/partial-decryption", context, request_digest)
