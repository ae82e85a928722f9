"""The exception tree of ``audits``: every failure of the ledger and its verifier.

::

    AuditError
    ├── LedgerError          the ledger cannot append or read (storage, schema)
    └── VerificationError    a bundle, proof, checkpoint or signature does not verify
"""

from __future__ import annotations

__all__ = ["AuditError", "LedgerError", "VerificationError"]


class AuditError(Exception):
    """Root of every error raised by ``audits``."""


class LedgerError(AuditError):
    """The ledger could not append or read an entry."""


class VerificationError(AuditError):
    """Something in the audit trail does not verify; the message names the first bad item."""
