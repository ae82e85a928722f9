"""A silo's witness catches a coordinator that rewrites history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audits import CheckpointSigner, CheckpointWitness, EventKind, Ledger, VerificationError
from audits.witness import WitnessStatement, check_fork, sign_statement, verify_statement

from .conftest import FEDERATION, ORIGIN, Federation, build_federation


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


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_statements_bind_checkpoint_federation_and_silo(federation: Federation) -> None:
    """A statement verifies only under the signer's roster key, for its own federation and silo."""
    signer, ledger = federation.signer, federation.ledger
    seen = ledger.checkpoint(signer)
    key = federation.silo_private["hospital-a"]
    statement = sign_statement(key, federation=FEDERATION, silo="hospital-a", note=seen.text)
    pins: dict[str, Any] = {
        "federation": FEDERATION,
        "audit_public_key": signer.public_key,
        "origin": ORIGIN,
    }
    assert verify_statement(statement, _raw(key), **pins).root == seen.root
    # forged: someone else's key, a re-bound silo, an edited note, another federation
    other = federation.silo_private["hospital-b"]
    with pytest.raises(VerificationError, match="not signed by its roster key"):
        verify_statement(statement, _raw(other), **pins)
    rebound = WitnessStatement(FEDERATION, "hospital-b", seen.text, statement.signature)
    with pytest.raises(VerificationError, match="not signed by its roster key"):
        verify_statement(rebound, _raw(other), **pins)
    edited = WitnessStatement(FEDERATION, "hospital-a", seen.text + " ", statement.signature)
    with pytest.raises(VerificationError, match="not signed by its roster key"):
        verify_statement(edited, _raw(key), **pins)
    with pytest.raises(VerificationError, match="bound to federation"):
        verify_statement(statement, _raw(key), **(pins | {"federation": "fed-2"}))


def test_check_fork_needs_one_log(federation: Federation, tmp_path: Path) -> None:
    signer, ledger = federation.signer, federation.ledger
    first = ledger.checkpoint(signer)
    ledger.append(federation.event(EventKind.ROUND_CLOSED, 7, {}))
    second = ledger.checkpoint(signer)
    proof = ledger.consistency_proof(first.size, second.size)
    check_fork(first, second, proof)  # a prefix, either way round
    check_fork(second, first, proof)
    check_fork(second, second, None)
    with pytest.raises(VerificationError, match="fork: no consistency proof"):
        check_fork(first, second, None)
    forked = build_federation(tmp_path / "fork.sqlite", rounds=4)
    other = forked.ledger.checkpoint(signer)
    with pytest.raises(VerificationError, match="fork"):
        check_fork(second, other, forked.ledger.consistency_proof(second.size, other.size))
    same_size = signer.sign(origin=ORIGIN, size=second.size, root=bytes(32))
    with pytest.raises(VerificationError, match="fork: two checkpoints of size"):
        check_fork(second, same_size, [])
    forked.ledger.close()


def test_withholding_is_reported_after_k_rounds() -> None:
    signer = CheckpointSigner.generate(key_name=ORIGIN)
    w = CheckpointWitness(":memory:", audit_public_key=signer.public_key, origin=ORIGIN)
    peers = ["b", "c"]
    assert w.note_peers({"b": 10}, peers) == []  # one round is not yet k=2
    assert w.note_peers({"b": 20}, peers) == ["c"]
    assert w.note_peers({"b": 20, "c": 30}, peers) == []  # c is back; b's stale for one round only
    assert w.note_peers({"b": 20, "c": 40}, peers) == ["b"]  # b's statement is stale for 2 rounds
    assert [r.body["silos"] for r in w.records("withheld")] == [["c"], ["b"]]


def test_completeness_proves_sent_attestations_and_names_a_missing_one(
    federation: Federation,
) -> None:
    """The witness finds each attestation it sent in the new range and checks its inclusion proof; one left
    out is reported once its round has ended in the log (not before: the silo may have left the round early).
    """
    ledger, signer = federation.ledger, federation.signer
    w = CheckpointWitness(":memory:", audit_public_key=signer.public_key, origin=ORIGIN)
    first = ledger.checkpoint(signer)
    w.update(first.text, [])

    def sent(event: Any) -> None:
        body = event.body
        w.record(
            "sent",
            {
                "round": event.round,
                "session_id": body["attestation"]["session_id"],
                "attestation": dict(body["attestation"]),
                "attestation_signature": body["signature"],
            },
        )

    def accept(old: Any) -> tuple[Any, list[bytes]]:
        new = ledger.checkpoint(signer)
        w.update(new.text, ledger.consistency_proof(old.size, new.size))
        return new, ledger.entries(old.size, new.size)

    logged = federation.attestation_event("hospital-a", 7, [])
    sent(logged)
    ledger.append(logged)
    second, entries = accept(first)
    assert w.check_completeness(
        first.size, entries, lambda i: ledger.inclusion_proof(i, second.size)
    ) == [first.size]
    assert w.unconfirmed() == []
    # the coordinator accepts round 8's attestation but leaves it out; not yet due while round 8 is open
    sent(federation.attestation_event("hospital-a", 8, []))
    ledger.append(
        federation.event(EventKind.INCIDENT, 8, {"severity": "warning", "description": "open"})
    )
    third, entries = accept(second)
    prove = lambda i: ledger.inclusion_proof(i, third.size)  # noqa: E731
    assert w.check_completeness(second.size, entries, prove) == []
    assert len(w.unconfirmed()) == 1
    ledger.append(federation.event(EventKind.ROUND_CLOSED, 8, {}))
    fourth, entries = accept(third)
    with pytest.raises(VerificationError, match="round 8: the privacy attestation this silo sent"):
        w.check_completeness(third.size, entries, lambda i: ledger.inclusion_proof(i, fourth.size))
    # a lie about the entries themselves fails the inclusion proof
    sent(logged)
    with pytest.raises(VerificationError, match="not in the log"):
        w.check_completeness(
            first.size,
            ledger.entries(first.size, second.size),
            lambda i: [bytes(32)],
            second,
        )
