"""The silo's encryption role in Paillier mode: pack, encrypt, chunk and commit to one update per round."""

from __future__ import annotations

import enum
from dataclasses import replace

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.errors import ProtocolError
from secagg.hazmat.keys import sign
from secagg.hazmat.merkle import leaf_hash, merkle_root
from secagg.hazmat.paillier import (
    ObfuscatorPool,
    ThresholdPublicKey,
    ciphertexts_to_bytes,
    encrypt_plaintexts,
)
from secagg.paillier.config import PaillierRoundConfig
from secagg.paillier.messages import CiphertextChunk, SignedCommitment

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
    """

    def __init__(
        self,
        *,
        silo_id: str,
        signing_key: Ed25519PrivateKey,
        public_key: ThresholdPublicKey,
        config: PaillierRoundConfig,
        pool: ObfuscatorPool,
    ) -> None:
        self.silo_id = silo_id
        self._signing_key = signing_key
        self._public_key = public_key
        self._config = config
        self._packing = config.packing(public_key)
        self._pool = pool
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
        plaintexts = self._packing.pack(array)
        ciphertexts = encrypt_plaintexts(self._public_key, plaintexts, self._pool)
        width = self._public_key.ciphertext_bytes
        data = ciphertexts_to_bytes(self._public_key, ciphertexts)
        root = merkle_root(
            leaf_hash(data[offset : offset + width]) for offset in range(0, len(data), width)
        )
        step = self._config.chunk_ciphertexts * width
        chunks = tuple(
            CiphertextChunk(silo_id=self.silo_id, chunk_index=i, data=data[offset : offset + step])
            for i, offset in enumerate(range(0, len(data), step))
        )
        unsigned = SignedCommitment(
            silo_id=self.silo_id,
            context=self._config.context(self._public_key),
            vector_length=self._config.vector_length,
            ciphertext_count=len(ciphertexts),
            merkle_root=root,
            signature=b"",
        )
        commitment = replace(unsigned, signature=sign(self._signing_key, unsigned.signed_message()))
        self.stage = ContributorStage.SUBMITTED
        return chunks, commitment
