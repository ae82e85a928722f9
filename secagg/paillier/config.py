"""The public parameters of one Paillier-mode round, its session id and the domain label of every digest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import encode_fields
from secagg.hazmat.paillier import RadixPacking, ThresholdPublicKey

__all__ = [
    "DEFAULT_CHUNK_CIPHERTEXTS",
    "DEFAULT_SPOT_CHECKS",
    "LABEL",
    "SESSION_NONCE_BYTES",
    "PaillierRoundConfig",
    "session_id_for",
]

DEFAULT_SPOT_CHECKS = 16
"""Positions each decrypter checks. Tampering with a fraction f of positions survives one decrypter with
probability (1 - f)^16 and t independent decrypters with (1 - f)^(16 t); the single-silo oracle (f = 1) never."""

DEFAULT_CHUNK_CIPHERTEXTS = 256
"""Ciphertexts per streamed chunk: 128 KiB at 2048-bit keys, well under gRPC's 4 MiB default."""

LABEL = "secagg/paillier/v1"
"""Domain-separation prefix of every digest, signature and proof context of this mode."""

SESSION_NONCE_BYTES = 16
"""Random bytes that, with the round's starting model hash, determine the session id (:func:`session_id_for`)."""


def session_id_for(nonce: bytes, model_hash: bytes) -> bytes:
    """The round's 32-byte session id: SHA-256 over a label, the coordinator's nonce and the model hash.

    Notes:
        Binding the model hash into the session id (which every commitment signature and proof covers) is what
        lets each silo check that all contributors were served the same model: a silo recomputes the id from
        the nonce and the hash of the model it downloaded, and decrypters accept only commitments bound to
        their own context.
    """
    return hashlib.sha256(encode_fields("secagg/paillier/session/v1", nonce, model_hash)).digest()


@dataclass(frozen=True, kw_only=True)
class PaillierRoundConfig:
    """Public parameters of one Paillier-mode round, validated on construction.

    Attributes:
        federation_id: the federation.
        round_number: the round (>= 0).
        session_id: the round's session id (>= 16 bytes), bound into every signature and proof.
        vector_length: number of quantized values per silo.
        value_bits: ``b``; values lie in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
        max_contributors: ``n``, sizes the slots (base ``n (2^b - 2) + 1`` digits, :mod:`secagg.hazmat.paillier.packing`).
        min_cohort: minimum number of contributions in a decrypted aggregate (>= 2).
        spot_checks: positions each decrypter checks.
        chunk_ciphertexts: ciphertexts per streamed chunk.
    """

    federation_id: str
    round_number: int
    session_id: bytes
    vector_length: int
    value_bits: int
    max_contributors: int
    min_cohort: int
    spot_checks: int = DEFAULT_SPOT_CHECKS
    chunk_ciphertexts: int = DEFAULT_CHUNK_CIPHERTEXTS

    def __post_init__(self) -> None:
        if not self.federation_id:
            raise InvalidParameters("federation_id must not be empty")
        if self.round_number < 0:
            raise InvalidParameters("round_number must be >= 0")
        if len(self.session_id) < 16:
            raise InvalidParameters("session_id must be at least 16 bytes")
        if self.vector_length < 1:
            raise InvalidParameters("vector_length must be >= 1")
        if self.min_cohort < 2:
            raise InvalidParameters(
                "min_cohort must be >= 2: a sum over one silo is that silo's update"
            )
        if self.max_contributors < self.min_cohort:
            raise InvalidParameters("max_contributors must be >= min_cohort")
        if self.spot_checks < 1:
            raise InvalidParameters("spot_checks must be >= 1")
        if self.chunk_ciphertexts < 1:
            raise InvalidParameters("chunk_ciphertexts must be >= 1")

    def packing(self, public_key: ThresholdPublicKey) -> RadixPacking:
        """The slot layout for this round under ``public_key`` (mixed radix, sized to ``max_contributors``)."""
        return RadixPacking(
            value_bits=self.value_bits,
            max_contributors=self.max_contributors,
            modulus_bits=public_key.key_bits,
        )

    def ciphertext_count(self, public_key: ThresholdPublicKey) -> int:
        """Ciphertexts per silo."""
        return self.packing(public_key).plaintexts_for(self.vector_length)

    def context(self, public_key: ThresholdPublicKey) -> bytes:
        """32-byte digest binding every parameter of the round and the key."""
        return hashlib.sha256(
            encode_fields(
                f"{LABEL}/round-context",
                self.federation_id,
                self.round_number,
                self.session_id,
                self.vector_length,
                self.value_bits,
                self.max_contributors,
                self.min_cohort,
                self.chunk_ciphertexts,
                public_key.fingerprint(),
            )
        ).digest()
