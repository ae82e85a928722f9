"""The public surface: a sorted ``__all__`` whose names all exist."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import audits


def test_all_is_sorted_and_resolves() -> None:
    assert audits.__all__ == sorted(audits.__all__)
    for name in audits.__all__:
        assert getattr(audits, name) is not None


def test_exception_tree() -> None:
    assert issubclass(audits.LedgerError, audits.AuditError)
    assert issubclass(audits.VerificationError, audits.AuditError)
    assert issubclass(audits.SchemaError, audits.LedgerError)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        audits.Nope  # noqa: B018
    assert set(audits.__all__) <= set(dir(audits))


@pytest.mark.parametrize(
    "statement",
    ["import audits.witness", "from audits import CheckpointWitness, VerificationError"],
)
def test_what_a_silo_imports_loads_no_ledger_verifier_or_report(statement: str) -> None:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    loaded = set(json.loads(out.stdout))
    assert "audits.witness" in loaded
    assert not loaded & {"audits.ledger", "audits.verify", "audits.report"}
