"""The silo's encryption role in Paillier mode: pack, encrypt, chunk, commit and prove one update per round,
then answer the decrypters' fold requests."""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.errors import ProtocolError, ProtocolViolation
from secagg.hazmat.keys import RandomSource, sign
from secagg.hazmat.merkle import leaf_hash, merkle_root
from secagg.hazmat.paillier import (
    FOLD_SEED_BYTES,
    ObfuscatorPool,
    PlaintextProof,
    ThresholdPublicKey,
    ciphertexts_to_bytes,
    encrypt_with,
    fold_own,
    fold_weights,
    prove_plaintext_knowledge,
)
from secagg.paillier.config import PaillierRoundConfig
from secagg.paillier.messages import (
    CiphertextChunk,
    FoldAnswer,
    FoldRequest,
    SignedCommitment,
    fold_proof_context,
    knowledge_proof_context,
    knowledge_weights,
)

__all__ = ["ContributorStage", "PaillierContributor"]


class ContributorStage(enum.StrEnum):
    """Stages of :class:`PaillierContributor`."""

    READY = "ready"
    SUBMITTED = "submitted"


class PaillierContributor:
    """A silo's encryption side for one round: encrypts its update once.

    Args:
        silo_id: this silo's roster id.
        signing_key: this silo's Ed25519 roster key.
        public_key: the joint public key.
        config: the round configuration.
        pool: precomputed obfuscators (filled offline before the round).
        rng: randomness of the proofs of plaintext knowledge.

    Notes:
        After :meth:`encrypt_update` the contributor keeps its packed plaintexts and the obfuscators' witnesses
        in memory for the round (as secret as the update; never logged or stored): they let it
        fold its own ciphertexts with one exponentiation and prove it knows what it folded
        (:mod:`secagg.hazmat.paillier.knowledge`).
    """

    def __init__(
        self,
        *,
        silo_id: str,
        signing_key: Ed25519PrivateKey,
        public_key: ThresholdPublicKey,
        config: PaillierRoundConfig,
        pool: ObfuscatorPool,
        rng: RandomSource = os.urandom,
    ) -> None:
        self.silo_id = silo_id
        self._signing_key = signing_key
        self._public_key = public_key
        self._config = config
        self._packing = config.packing(public_key)
        self._pool = pool
        self._rng = rng
        self._context = config.context(public_key)
        self._plaintexts: list[int] = []
        self._witnesses: list[int] = []
        self._root = b""
        self._answered: dict[str, FoldAnswer] = {}
        self.stage = ContributorStage.READY

    def __repr__(self) -> str:
        return f"PaillierContributor(silo_id={self.silo_id!r}, stage={self.stage.value!r})"

    def encrypt_update(
        self, values: npt.ArrayLike
    ) -> tuple[tuple[CiphertextChunk, ...], SignedCommitment]:
        """Pack, encrypt, chunk and commit to a quantized update.

        Args:
            values: integers in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, ``config.vector_length`` of them.

        Returns:
            The ciphertext chunks to stream and the signed commitment to send first.

        Raises:
            ProtocolError: called twice (a silo never submits the same round twice).
            ValueError: wrong length or values out of range.
        """
        if self.stage is not ContributorStage.READY:
            raise ProtocolError("this silo has already submitted for this round")
        array = np.asarray(values)
        if array.shape != (self._config.vector_length,):
            raise ValueError("update has the wrong length")
        plaintexts = [int(p) for p in self._packing.pack(array)]
        obfuscators, witnesses = self._pool.take_with_witnesses(len(plaintexts))
        ciphertexts = encrypt_with(self._public_key, plaintexts, obfuscators)
        width = self._public_key.ciphertext_bytes
        data = ciphertexts_to_bytes(self._public_key, ciphertexts)
        root = merkle_root(
            leaf_hash(data[offset : offset + width]) for offset in range(0, len(data), width)
        )
        self._plaintexts, self._witnesses, self._root = plaintexts, witnesses, root
        weights = knowledge_weights(self._context, self.silo_id, root, len(plaintexts))
        fold, proof = self._fold(
            weights, knowledge_proof_context(self._context, self.silo_id, root)
        )
        step = self._config.chunk_ciphertexts * width
        chunks = tuple(
            CiphertextChunk(silo_id=self.silo_id, chunk_index=i, data=data[offset : offset + step])
            for i, offset in enumerate(range(0, len(data), step))
        )
        unsigned = SignedCommitment(
            silo_id=self.silo_id,
            context=self._context,
            vector_length=self._config.vector_length,
            ciphertext_count=len(ciphertexts),
            merkle_root=root,
            knowledge_fold=fold,
            knowledge_proof=proof,
            signature=b"",
        )
        commitment = replace(unsigned, signature=sign(self._signing_key, unsigned.signed_message()))
        self.stage = ContributorStage.SUBMITTED
        return chunks, commitment

    def _fold(self, weights: Sequence[int], context: bytes) -> tuple[int, PlaintextProof]:
        fold, plaintext, witness = fold_own(
            self._public_key, self._plaintexts, self._witnesses, self._pool.mode, weights
        )
        proof = prove_plaintext_knowledge(
            self._public_key,
            fold,
            plaintext,
            witness,
            self._pool.mode,
            context=context,
            rng=self._rng,
        )
        return fold, proof

    def answer_folds(self, requests: Sequence[FoldRequest]) -> tuple[FoldAnswer, ...]:
        """Fold this silo's ciphertexts with each decrypter's weights, prove it and sign it.

        A decrypter is answered once: the same request again gets the same answer, another seed for it is
        refused, and at most ``max_contributors`` decrypters are answered per round.

        Args:
            requests: one per decrypter that challenged the round (forwarded by the coordinator).

        Raises:
            ProtocolError: before :meth:`encrypt_update`.
            ProtocolViolation: a second seed for a decrypter, more decrypters than key holders, or a malformed
                seed.
        """
        if self.stage is not ContributorStage.SUBMITTED:
            raise ProtocolError("folds are answered after the contribution")
        fresh = {r.decrypter: r for r in requests if r.decrypter not in self._answered}
        if any(
            self._answered[r.decrypter].seed != r.seed
            for r in requests
            if r.decrypter in self._answered
        ):
            raise ProtocolViolation("a decrypter asks for a second fold")
        if len(fresh) != len({r for r in requests if r.decrypter in fresh}):
            raise ProtocolViolation("a decrypter asks for two folds")
        if len(self._answered) + len(fresh) > self._config.max_contributors:
            raise ProtocolViolation("more fold requests than key holders")
        if any(len(r.seed) != FOLD_SEED_BYTES for r in fresh.values()):
            raise ProtocolViolation("malformed fold seed")
        for request in fresh.values():
            weights = fold_weights(request.seed, len(self._plaintexts))
            context = fold_proof_context(
                self._context, self.silo_id, request.decrypter, self._root, request.seed
            )
            fold, proof = self._fold(weights, context)
            unsigned = FoldAnswer(
                silo_id=self.silo_id,
                decrypter=request.decrypter,
                seed=request.seed,
                fold=fold,
                proof=proof,
                signature=b"",
            )
            signature = sign(self._signing_key, unsigned.signed_message(self._context, self._root))
            self._answered[request.decrypter] = replace(unsigned, signature=signature)
        return tuple(self._answered[r.decrypter] for r in requests)
