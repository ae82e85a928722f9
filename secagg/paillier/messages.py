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

from secagg.errors import InvalidProof, InvalidSignature, ProtocolViolation
from secagg.hazmat.keys import encode_fields, verify
from secagg.hazmat.paillier import (
    PartialDecryption,
    PlaintextProof,
    ThresholdPublicKey,
    fold_weights,
    int_to_bytes,
    verify_plaintext_knowledge,
)
from secagg.paillier.config import LABEL

__all__ = [
    "CiphertextChunk",
    "DecryptionRequest",
    "FoldAnswer",
    "FoldRequest",
    "PartialDecryptionMessage",
    "SignedCommitment",
    "SpotCheckChallenge",
    "SpotCheckOpening",
    "SpotCheckResponse",
    "fold_proof_context",
    "knowledge_proof_context",
    "knowledge_weights",
    "proof_context",
]


def knowledge_weights(context: bytes, silo_id: str, merkle_root: bytes, count: int) -> list[int]:
    """The Fiat-Shamir fold weights of a contribution's own proof of plaintext knowledge.

    They depend on the signed Merkle root, so they are fixed only after the silo's ciphertexts are.
    """
    seed = hashlib.sha256(
        encode_fields(f"{LABEL}/knowledge-weights", context, silo_id, merkle_root)
    ).digest()
    return fold_weights(seed, count)


def knowledge_proof_context(context: bytes, silo_id: str, merkle_root: bytes) -> bytes:
    """What a contribution's proof of plaintext knowledge is bound to: round, prover and its ciphertexts."""
    return encode_fields(f"{LABEL}/knowledge-proof", context, silo_id, merkle_root)


def fold_proof_context(
    context: bytes, silo_id: str, decrypter: str, merkle_root: bytes, seed: bytes
) -> bytes:
    """What the proof on a fold for one decrypter is bound to: round, prover, decrypter, ciphertexts, seed."""
    return encode_fields(f"{LABEL}/fold-proof", context, silo_id, decrypter, merkle_root, seed)


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
    """A silo's signed Merkle root over its ciphertext vector, bound to the round context, with its proof.

    Attributes:
        knowledge_fold: the fold of the silo's ciphertexts with :func:`knowledge_weights`.
        knowledge_proof: proof of knowledge of that fold's plaintext (:mod:`secagg.hazmat.paillier.knowledge`);
            the coordinator checks the fold against the ciphertexts as they stream in.
    """

    silo_id: str
    context: bytes
    vector_length: int
    ciphertext_count: int
    merkle_root: bytes
    knowledge_fold: int
    knowledge_proof: PlaintextProof
    signature: bytes

    def __repr__(self) -> str:
        return f"SignedCommitment(silo_id={self.silo_id!r}, count={self.ciphertext_count})"

    def signed_message(self) -> bytes:
        """The exact bytes the silo signs."""
        return encode_fields(
            f"{LABEL}/commitment/v2",
            self.context,
            self.silo_id,
            self.vector_length,
            self.ciphertext_count,
            self.merkle_root,
            int_to_bytes(self.knowledge_fold),
            self.knowledge_proof.encode(),
        )

    def verify(
        self,
        roster: Mapping[str, bytes],
        *,
        public_key: ThresholdPublicKey,
        context: bytes,
        vector_length: int,
        ciphertext_count: int,
    ) -> None:
        """Check the signature against the roster, the binding against the expected round, and the proof.

        Raises:
            ProtocolViolation: unknown silo, other context, wrong dimensions, a signature that does not verify,
                or a proof of plaintext knowledge that does not.
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
        try:
            verify_plaintext_knowledge(
                public_key,
                self.knowledge_fold,
                self.knowledge_proof,
                context=knowledge_proof_context(context, self.silo_id, self.merkle_root),
            )
        except InvalidProof as exc:
            raise ProtocolViolation(
                "the contribution's proof of plaintext knowledge does not verify"
            ) from exc


@dataclass(frozen=True)
class FoldRequest:
    """A decrypter's fold seed, forwarded by the coordinator to every contributor of the request."""

    decrypter: str
    seed: bytes


@dataclass(frozen=True)
class FoldAnswer:
    """A contributor's signed fold of its own ciphertexts with one decrypter's weights, with a proof.

    The signature is what stops the coordinator from inventing folds for honest contributors; the proof is
    what stops a colluding contributor from answering for ciphertexts it did not make (:mod:`secagg.paillier`).
    """

    silo_id: str
    decrypter: str
    seed: bytes
    fold: int
    proof: PlaintextProof
    signature: bytes

    def __repr__(self) -> str:
        return f"FoldAnswer(silo_id={self.silo_id!r}, decrypter={self.decrypter!r})"

    def signed_message(self, context: bytes, root: bytes) -> bytes:
        """The exact bytes the contributor signs (the round context and its Merkle root included)."""
        return encode_fields(
            f"{LABEL}/fold",
            context,
            self.silo_id,
            self.decrypter,
            root,
            self.seed,
            int_to_bytes(self.fold),
            self.proof.encode(),
        )

    def verify(
        self,
        roster: Mapping[str, bytes],
        *,
        public_key: ThresholdPublicKey,
        context: bytes,
        commitment: SignedCommitment,
        request: FoldRequest,
    ) -> None:
        """Check that ``commitment``'s silo signed this fold for ``request`` and proved its plaintext.

        Raises:
            ProtocolViolation: another silo, decrypter or seed; a signature or proof that does not verify.
        """
        if self.silo_id != commitment.silo_id or (self.decrypter, self.seed) != (
            request.decrypter,
            request.seed,
        ):
            raise ProtocolViolation("fold answers another decrypter, seed or contributor")
        if not 0 < self.fold < public_key.nsquare:
            raise ProtocolViolation("fold outside Z*_{N^2}")
        public = roster.get(self.silo_id)
        if public is None:
            raise ProtocolViolation("fold from a silo outside the roster")
        root = commitment.merkle_root
        try:
            verify(public, self.signature, self.signed_message(context, root))
            verify_plaintext_knowledge(
                public_key,
                self.fold,
                self.proof,
                context=fold_proof_context(context, self.silo_id, self.decrypter, root, self.seed),
            )
        except InvalidSignature as exc:
            raise ProtocolViolation("fold signature does not verify") from exc
        except InvalidProof as exc:
            raise ProtocolViolation("fold's proof of plaintext knowledge does not verify") from exc


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
    """What a decrypter draws with its own randomness after the request was fixed: positions and a fold seed."""

    request_digest: bytes
    positions: tuple[int, ...]
    fold_seed: bytes


@dataclass(frozen=True)
class SpotCheckOpening:
    """One contributor's ciphertext at one position with its RFC 6962 inclusion proof."""

    silo_id: str
    position: int
    ciphertext: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class SpotCheckResponse:
    """The coordinator's openings for a :class:`SpotCheckChallenge`, and every contributor's fold for its seed."""

    request_digest: bytes
    openings: tuple[SpotCheckOpening, ...]
    folds: tuple[FoldAnswer, ...]


@dataclass(frozen=True)
class PartialDecryptionMessage:
    """A key holder's verified-proof partial decryption of one request's aggregate."""

    silo_id: str
    request_digest: bytes
    partial: PartialDecryption


def proof_context(context: bytes, request_digest: bytes) -> bytes:
    """The context hashed into every partial-decryption proof for one request of one round."""
    return encode_fields(f"{LABEL}/partial-decryption", context, request_digest)
