"""The audit log's RFC 6962 Merkle tree: the core of :mod:`secagg.hazmat.merkle`, failing with ``VerificationError``.

Notes:
    Hashing, proof generation and verification are :mod:`secagg.hazmat.merkle` (its Notes cite
    RFC 6962 and RFC 9162); the hashing functions and tree classes are the same objects. Only
    the verifiers are wrapped, so a proof that does not verify raises this package's
    :class:`~audits.errors.VerificationError` with the core's message.
"""

from __future__ import annotations

from collections.abc import Sequence

from audits.errors import VerificationError
from secagg.hazmat import merkle as _core
from secagg.hazmat.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
)
from secagg.hazmat.merkle import HASH_SIZE as HASH_SIZE

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "MerkleTree",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """:func:`secagg.hazmat.merkle.verify_inclusion` for the audit log.

    Raises:
        VerificationError: the proof does not verify (wrong index, size, hashes or length).
    """
    try:
        _core.verify_inclusion(leaf, index, size, proof, root)
    except _core.InvalidMerkleProof as exc:
        raise VerificationError(str(exc)) from None


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """:func:`secagg.hazmat.merkle.verify_consistency` for the audit log.

    Raises:
        VerificationError: the proof does not verify: the log was rewritten, or the proof is bad.
    """
    try:
        _core.verify_consistency(old_size, new_size, proof, old_root, new_root)
    except _core.InvalidMerkleProof as exc:
        raise VerificationError(str(exc)) from None
