"""Tamper-evident audit ledger, its verifier and the regulator reports.

Exceptions are drawn in :mod:`audits.errors` (root: :class:`AuditError`).
"""

from audits.canonical import canonical_json
from audits.checkpoint import CheckpointSigner, SignedCheckpoint, key_id, verify_checkpoint
from audits.errors import AuditError, LedgerError, VerificationError
from audits.events import Event, EventKind, LedgerEntry, SchemaError
from audits.ledger import Ledger
from audits.merkle import (
    CompactRange,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from audits.report import build_report, render_html, write_report
from audits.verify import (
    AuditBundle,
    EpsilonAccountFactory,
    EpsilonRecomputer,
    RdpEpsilonAccount,
    SiloEpsilonAccount,
    VerificationReport,
    load_bundle,
    verify_bundle,
    write_bundle,
)
from audits.witness import CheckpointWitness, LocalRecord

__all__ = [
    "AuditBundle",
    "AuditError",
    "CheckpointSigner",
    "CheckpointWitness",
    "CompactRange",
    "EpsilonAccountFactory",
    "EpsilonRecomputer",
    "Event",
    "EventKind",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "LocalRecord",
    "MerkleTree",
    "RdpEpsilonAccount",
    "SchemaError",
    "SignedCheckpoint",
    "SiloEpsilonAccount",
    "VerificationError",
    "VerificationReport",
    "build_report",
    "canonical_json",
    "key_id",
    "leaf_hash",
    "load_bundle",
    "merkle_root",
    "node_hash",
    "render_html",
    "verify_bundle",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "write_bundle",
    "write_report",
]
