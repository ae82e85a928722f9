"""Tamper-evident audit ledger, its verifier and the regulator reports.

Exceptions are drawn in :mod:`audits.errors` (root: :class:`AuditError`).

Names are imported on first use (PEP 562), so ``from audits import CheckpointWitness`` or
``import audits.witness`` (what a silo needs) does not load the ledger, the verifier or the report.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from audits.canonical import canonical_json
    from audits.checkpoint import CheckpointSigner, SignedCheckpoint, key_id, verify_checkpoint
    from audits.errors import (
        AuditError,
        CompletenessError,
        LedgerError,
        ReportError,
        StorageError,
        VerificationError,
    )
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
    from audits.report import build_report, find_chromium, render_html, write_pdf, write_report
    from audits.verify import (
        Anchor,
        AuditBundle,
        EpsilonAccountFactory,
        EpsilonRecomputer,
        RdpEpsilonAccount,
        SiloEpsilonAccount,
        TrustAnchors,
        VerificationReport,
        load_bundle,
        verify_bundle,
        write_bundle,
    )
    from audits.witness import CheckpointWitness, LocalRecord

__all__ = [
    "Anchor",
    "AuditBundle",
    "AuditError",
    "CheckpointSigner",
    "CheckpointWitness",
    "CompactRange",
    "CompletenessError",
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
    "ReportError",
    "SchemaError",
    "SignedCheckpoint",
    "SiloEpsilonAccount",
    "StorageError",
    "TrustAnchors",
    "VerificationError",
    "VerificationReport",
    "build_report",
    "canonical_json",
    "find_chromium",
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
    "write_pdf",
    "write_report",
]

_EXPORTS: Final = {
    "canonical": ("canonical_json",),
    "checkpoint": ("CheckpointSigner", "SignedCheckpoint", "key_id", "verify_checkpoint"),
    "errors": (
        "AuditError",
        "CompletenessError",
        "LedgerError",
        "ReportError",
        "StorageError",
        "VerificationError",
    ),
    "events": ("Event", "EventKind", "LedgerEntry", "SchemaError"),
    "ledger": ("Ledger",),
    "merkle": (
        "CompactRange",
        "MerkleTree",
        "leaf_hash",
        "merkle_root",
        "node_hash",
        "verify_consistency",
        "verify_inclusion",
    ),
    "report": ("build_report", "find_chromium", "render_html", "write_pdf", "write_report"),
    "verify": (
        "Anchor",
        "AuditBundle",
        "EpsilonAccountFactory",
        "EpsilonRecomputer",
        "RdpEpsilonAccount",
        "SiloEpsilonAccount",
        "TrustAnchors",
        "VerificationReport",
        "load_bundle",
        "verify_bundle",
        "write_bundle",
    ),
    "witness": ("CheckpointWitness", "LocalRecord"),
}
"""Which module defines each public name (the TYPE_CHECKING imports above say the same to mypy)."""

_MODULE_OF: Final = {name: module for module, names in _EXPORTS.items() for name in names}


if not TYPE_CHECKING:  # mypy resolves the names through the imports above, and flags unknown ones

    def __getattr__(name: str) -> Any:
        """Import the module that defines ``name`` on first access and keep the name here (PEP 562)."""
        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
