"""A silo's witness catches a coordinator that rewrites history."""

from __future__ import annotations

from pathlib import Path

import pytest

from audits import CheckpointWitness, EventKind, Ledger, VerificationError

from .conftest import ORIGIN, Federation, build_federation


def test_witness_accepts_consistent_growth_and_persists(
    federation: Federation, tmp_path: Path
) -> None:
    ledger, signer = federation.ledger, federation.signer
    path = tmp_path / "witness.sqlite"
    with CheckpointWitness(path, audit_public_key=signer.public_key, origin=ORIGIN) as w:
        first = ledger.checkpoint(signer)
        w.update(first.text, [])
        ledger.append(federation.event(EventKind.ROUND_CLOSED, 7, {}))
        second = ledger.checkpoint(signer)
        w.update(second.text, ledger.consistency_proof(first.size, second.size))
        w.record("sent_update", {"round": 7, "vector_sha256": "ab" * 32})
        entry = ledger.entries(10, 11)[0]
        w.check_inclusion(entry, 10, ledger.inclusion_proof(10, second.size))
        with pytest.raises(VerificationError, match="not in the log"):
            w.check_inclusion(entry + b" ", 10, ledger.inclusion_proof(10, second.size))
    with CheckpointWitness(path, audit_public_key=signer.public_key, origin=ORIGIN) as w:
        latest = w.latest()
        assert latest is not None
        assert latest.size == second.size
        records = w.records("sent_update")
        assert [r.body["round"] for r in records] == [7]


def test_witness_catches_rewritten_history(federation: Federation, tmp_path: Path) -> None:
    signer = federation.signer
    w = CheckpointWitness(":memory:", audit_public_key=signer.public_key, origin=ORIGIN)
    seen = federation.ledger.checkpoint(signer)
    w.update(seen.text, [])
    # The coordinator rebuilds its log differently (a fresh, forked history, same key) and
    # makes it longer; no consistency proof can link it to what the silo saw.
    forked = build_federation(tmp_path / "fork.sqlite", rounds=4)
    forked_ledger = Ledger(tmp_path / "fork.sqlite", origin=ORIGIN)
    forged = forked_ledger.checkpoint(signer)
    assert forged.size > seen.size
    with pytest.raises(VerificationError, match="coordinator rewrote history"):
        w.update(forged.text, forked_ledger.consistency_proof(seen.size, forged.size))
    # Shrinking is caught too, and a same-size different root.
    small = signer.sign(origin=ORIGIN, size=seen.size - 1, root=seen.root)
    with pytest.raises(VerificationError, match="coordinator rewrote history"):
        w.update(small.text, [])
    same = signer.sign(origin=ORIGIN, size=seen.size, root=bytes(32))
    with pytest.raises(VerificationError, match="coordinator rewrote history"):
        w.update(same.text, [])
    latest = w.latest()
    assert latest is not None
    assert latest.root == seen.root
    forked_ledger.close()
    forked.ledger.close()


def test_witness_rejects_foreign_signature(federation: Federation) -> None:
    from audits import CheckpointSigner

    w = CheckpointWitness(":memory:", audit_public_key=federation.signer.public_key, origin=ORIGIN)
    impostor = CheckpointSigner.generate(key_name=ORIGIN)
    with pytest.raises(VerificationError, match="not signed by the pinned"):
        w.update(impostor.sign(origin=ORIGIN, size=1, root=bytes(32)).text, [])
