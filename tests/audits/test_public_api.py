"""The public surface: a sorted ``__all__`` whose names all exist."""

from __future__ import annotations

import audits


def test_all_is_sorted_and_resolves() -> None:
    assert audits.__all__ == sorted(audits.__all__)
    for name in audits.__all__:
        assert getattr(audits, name) is not None


def test_exception_tree() -> None:
    assert issubclass(audits.LedgerError, audits.AuditError)
    assert issubclass(audits.VerificationError, audits.AuditError)
    assert issubclass(audits.SchemaError, audits.LedgerError)
