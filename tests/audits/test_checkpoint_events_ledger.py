"""Checkpoint notes, event schema, and the SQLite ledger (append-only, durable, rebuilt on open)."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import (
    CheckpointSigner,
    Event,
    EventKind,
    Ledger,
    LedgerEntry,
    LedgerError,
    SchemaError,
    VerificationError,
    key_id,
    leaf_hash,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from audits.merkle import merkle_root

from .conftest import FEDERATION, ORIGIN, Federation

ROOT = bytes(range(32))


def test_checkpoint_note_format_and_key_id() -> None:
    signer = CheckpointSigner(Ed25519PrivateKey.generate(), key_name="example.com/log")
    cp = signer.sign(origin="example.com/log", size=7, root=ROOT)
    body, sig_line = cp.text.split("\n\n")
    assert body + "\n" == f"example.com/log\n7\n{base64.b64encode(ROOT).decode()}\n"
    dash, name, blob = sig_line.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", "example.com/log")
    raw = base64.b64decode(blob)
    assert raw[:4] == key_id("example.com/log", signer.public_key)
    assert len(raw) == 68
    import hashlib

    assert raw[:4] == hashlib.sha256(b"example.com/log\n\x01" + signer.public_key).digest()[:4]
    got = verify_checkpoint(cp.text, signer.public_key, "example.com/log")
    assert (got.size, got.root, got.origin) == (7, ROOT, "example.com/log")
    assert "hidden" in repr(signer)
    assert signer.public_key.hex() not in repr(signer)


def test_checkpoint_rejections() -> None:
    signer = CheckpointSigner.generate(key_name="log")
    other = CheckpointSigner.generate(key_name="log")
    cp = signer.sign(origin="log", size=3, root=ROOT)
    cases = {
        "origin": (cp.text, signer.public_key, "other-log"),
        "not signed by the pinned": (cp.text, other.public_key, "log"),
        "invalid": (cp.text.replace("\n3\n", "\n4\n"), signer.public_key, "log"),
        "blank line": (cp.text.replace("\n\n", "\n"), signer.public_key, "log"),
        "malformed signature": (cp.text.replace("\u2014 ", "- "), signer.public_key, "log"),
        "size": (cp.text.replace("\n3\n", "\n03\n"), signer.public_key, "log"),
    }
    for what, (text, key, origin) in cases.items():
        with pytest.raises(VerificationError, match=what):
            verify_checkpoint(text, key, origin)
    # A cosignature by another key is ignored, ours still verifies.
    extra = other.sign(origin="log", size=3, root=ROOT).text.split("\n\n")[1]
    verify_checkpoint(cp.text + extra, signer.public_key, "log")


def test_event_validation_is_strict() -> None:
    ok = Event(
        EventKind.PARTICIPANTS,
        "f",
        1,
        {"survivors": ["a"], "dropped": ["b"]},
        "2025-01-01T00:00:00Z",
    )
    assert ok.to_json()["schema"] == 1
    bad = [
        (EventKind.PARTICIPANTS, 1, {"survivors": ["a"], "dropped": ["a"]}, "overlaps"),
        (EventKind.PARTICIPANTS, None, {"survivors": [], "dropped": []}, "round is required"),
        (EventKind.ROUND_ABORTED, 1, {}, "body.reason is required"),
        (EventKind.INCIDENT, None, {"severity": "meh", "description": "x"}, "severity"),
        (EventKind.GLOBAL_MODEL, 1, {"model_hash": "XYZ"}, "model_hash"),
        (
            EventKind.INCIDENT,
            None,
            {"severity": "info", "description": "x", "v": float("nan")},
            "canonical",
        ),
    ]
    for kind, rnd, body, match in bad:
        with pytest.raises(SchemaError, match=match):
            Event(kind, "f", rnd, body, "2025-01-01T00:00:00Z")
    with pytest.raises(SchemaError, match="unknown event kind"):
        Event("nope", "f", None, {}, "2025-01-01T00:00:00Z")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="time"):
        Event(EventKind.ROUND_CLOSED, "f", 1, {}, "yesterday")


def test_event_body_is_frozen_copy() -> None:
    body = {"survivors": ["a"], "dropped": []}
    event = Event(EventKind.PARTICIPANTS, "f", 1, body, "2025-01-01T00:00:00Z")
    body["survivors"].append("evil")
    assert list(event.body["survivors"]) == ["a"]
    with pytest.raises(TypeError):
        event.body["dropped"] = ["x"]  # type: ignore[index]


def test_ledger_entries_chain_and_proofs(federation: Federation) -> None:
    ledger = federation.ledger
    entries = ledger.entries()
    assert len(entries) == ledger.size == 25
    assert ledger.root() == merkle_root(leaf_hash(e) for e in entries)
    prev = None
    for i, data in enumerate(entries):
        entry = LedgerEntry.decode(data)
        assert entry.index == i
        assert entry.event.federation == FEDERATION
        if prev is not None:
            assert entry.prev == leaf_hash(prev)
        prev = data
    for i in (0, 7, 24):
        verify_inclusion(
            leaf_hash(entries[i]), i, ledger.size, ledger.inclusion_proof(i), ledger.root()
        )
    cp = ledger.latest_checkpoint()
    assert cp is not None
    assert cp.size == ledger.size
    verify_checkpoint(cp.text, federation.signer.public_key, ORIGIN)
    verify_consistency(5, 25, ledger.consistency_proof(5, 25), ledger.root(5), ledger.root(25))


def test_sqlite_refuses_update_delete_and_gaps(federation: Federation, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    for sql in (
        "UPDATE entries SET entry = x'00' WHERE idx = 3",
        "DELETE FROM entries WHERE idx = 24",
        "UPDATE checkpoints SET size = 1",
        "DELETE FROM checkpoints",
        "UPDATE meta SET value = 'x'",
        "INSERT INTO entries (idx, entry, leaf_hash) VALUES (99, x'00', zeroblob(32))",
    ):
        with pytest.raises(sqlite3.DatabaseError, match=r"append-only|write-once"):
            db.execute(sql)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_reopen_rebuilds_tree_and_detects_tampering(tmp_path: Path, federation: Federation) -> None:
    path = tmp_path / "ledger.sqlite"
    root, size = federation.ledger.root(), federation.ledger.size
    federation.ledger.close()
    with Ledger(path, origin=ORIGIN) as again:
        assert (again.root(), again.size) == (root, size)
        index = again.append(federation.event(EventKind.ROUND_CLOSED, 9, {}))
        assert index == size
    with pytest.raises(LedgerError, match="origin"):
        Ledger(path, origin="someone-else")
    # Tamper at rest, bypassing the triggers: reopening refuses the file.
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute(
        "UPDATE entries SET entry = CAST(replace(CAST(entry AS TEXT), 'hospital-a', "
        "'hospital-x') AS BLOB) WHERE idx = 4"
    )
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="entry 4 does not match"):
        Ledger(path, origin=ORIGIN)


def test_stale_second_writer_cannot_fork(tmp_path: Path, federation: Federation) -> None:
    other = Ledger(tmp_path / "ledger.sqlite", origin=ORIGIN)
    federation.ledger.append(federation.event(EventKind.ROUND_CLOSED, 8, {}))
    with pytest.raises(LedgerError, match="nothing written"):
        other.append(federation.event(EventKind.ROUND_CLOSED, 9, {}))
    other.close()


def test_in_memory_ledger_and_append_many_atomic() -> None:
    with Ledger(":memory:", origin="mem") as ledger:
        events = [
            Event(EventKind.ROUND_CLOSED, "f", i, {}, "2025-01-01T00:00:00Z") for i in range(5)
        ]
        assert ledger.append_many(events) == [0, 1, 2, 3, 4]
        assert ledger.append_many([]) == []
        with pytest.raises(TypeError):
            ledger.append_many([events[0], "not an event"])  # type: ignore[list-item]
        assert ledger.size == 5
