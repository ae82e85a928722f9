"""The exception tree of ``audits``: every failure of the ledger, its verifier and the report.

::

    AuditError
    ├── LedgerError              the ledger cannot append or read (storage, schema)
    ├── StorageError             a database cannot be opened, or its schema version is not this code's
    ├── VerificationError        a bundle, proof, checkpoint or signature does not verify
    │   └── CompletenessError    everything verified, but a fact a completed round must have is missing
    └── ReportError              the report could not be printed (no headless Chromium, or it failed)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from audits.verify import VerificationReport

__all__ = [
    "AuditError",
    "CompletenessError",
    "LedgerError",
    "ReportError",
    "StorageError",
    "VerificationError",
]


class AuditError(Exception):
    """Root of every error raised by ``audits``."""


class LedgerError(AuditError):
    """The ledger could not append or read an entry."""


class StorageError(AuditError):
    """A database cannot be opened, or holds a schema version this code cannot use (the message says which)."""


class VerificationError(AuditError):
    """Something in the audit trail does not verify; the message names the first bad item."""


class CompletenessError(VerificationError):
    """Every hash, signature and epsilon held, but the ledger misses a fact (the message names the first gap).

    Attributes:
        verified: what *did* verify (the checks before completeness all passed), for tests and diagnostics;
            never a reason to trust the bundle.
    """

    def __init__(self, message: str, *, verified: VerificationReport) -> None:
        super().__init__(message)
        self.verified = verified


class ReportError(AuditError):
    """The report (its PDF) could not be produced; the message says why and what to do."""
