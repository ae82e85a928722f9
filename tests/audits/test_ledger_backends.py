"""The audit ledger on both databases (SQLite file, real PostgreSQL server): the same behaviour on each.

Append-only triggers, gap refusal, reopen with tamper detection, a stale second writer, and the schema version
checked at open (a newer schema refused, an unversioned one migrated).
"""

from __future__ import annotations

import pytest

from audits import EventKind, Ledger, LedgerError, leaf_hash, merkle_root, verify_inclusion
from audits.database import Database
from audits.ledger import SCHEMA_VERSION
from tests.audits.conftest import ORIGIN, build_federation


def test_entries_chain_checkpoint_and_proofs(storage: str) -> None:
    fed = build_federation(storage)
    try:
        ledger = fed.ledger
        entries = ledger.entries()
        assert len(entries) == ledger.size == 25
        assert ledger.root() == merkle_root(leaf_hash(e) for e in entries)
        verify_inclusion(leaf_hash(entries[7]), 7, 25, ledger.inclusion_proof(7), ledger.root())
        cp = ledger.latest_checkpoint()
        assert cp is not None and cp.size == 25
    finally:
        fed.ledger.close()


def test_the_database_refuses_update_delete_and_gaps(storage: str) -> None:
    fed = build_federation(storage)
    fed.ledger.close()
    raw = Database(storage)
    blob = b"\x00" * 32
    for sql, params in (
        ("UPDATE entries SET entry = ? WHERE idx = 3", (b"\x00",)),
        ("DELETE FROM entries WHERE idx = 24", ()),
        ("UPDATE checkpoints SET size = 1", ()),
        ("DELETE FROM checkpoints", ()),
        ("UPDATE meta SET value = 'x'", ()),
        ("INSERT INTO entries (idx, entry, leaf_hash) VALUES (99, ?, ?)", (b"\x00", blob)),
        ("INSERT INTO entries (idx, entry, leaf_hash) VALUES (3, ?, ?)", (b"\x00", blob)),
    ):
        with (
            pytest.raises(raw.errors, match=r"append-only|write-once|duplicate|UNIQUE"),
            raw.tx() as db,
        ):
            db.execute(sql, params)
    assert raw.one("SELECT COUNT(*) FROM entries") == (25,)
    raw.close()


def test_reopen_rebuilds_the_tree_and_detects_tampering(storage: str) -> None:
    fed = build_federation(storage)
    root, size = fed.ledger.root(), fed.ledger.size
    fed.ledger.close()
    with Ledger(storage, origin=ORIGIN) as again:
        assert (again.root(), again.size) == (root, size)
        assert again.append(fed.event(EventKind.ROUND_CLOSED, 9, {})) == size
    with pytest.raises(LedgerError, match="origin"):
        Ledger(storage, origin="someone-else")
    raw = Database(storage)
    with raw.tx() as db:  # tamper at rest, bypassing the triggers
        db.execute(
            "DROP TRIGGER entries_no_update" + (" ON entries" if db.dialect == "postgresql" else "")
        )
        (entry,) = db.one("SELECT entry FROM entries WHERE idx = 4") or ()
        db.execute(
            "UPDATE entries SET entry = ? WHERE idx = 4",
            (entry.replace(b"hospital-a", b"hospital-x"),),
        )
    raw.close()
    with pytest.raises(LedgerError, match="entry 4 does not match"):
        Ledger(storage, origin=ORIGIN)


def test_a_stale_second_writer_cannot_fork(storage: str) -> None:
    fed = build_federation(storage)
    other = Ledger(storage, origin=ORIGIN)
    fed.ledger.append(fed.event(EventKind.ROUND_CLOSED, 8, {}))
    with pytest.raises(LedgerError, match="nothing written"):
        other.append(fed.event(EventKind.ROUND_CLOSED, 9, {}))
    other.close()
    fed.ledger.close()
    with Ledger(storage, origin=ORIGIN) as again:
        assert again.size == 26


def test_a_newer_schema_is_refused_and_an_unversioned_one_is_migrated(storage: str) -> None:
    fed = build_federation(storage)
    root = fed.ledger.root()
    fed.ledger.close()
    raw = Database(storage)
    assert raw.one("SELECT version FROM schema_versions WHERE component = 'ledger'") == (
        SCHEMA_VERSION,
    )
    with raw.tx() as db:  # as written before versions were recorded
        db.execute("DELETE FROM schema_versions WHERE component = 'ledger'")
    with Ledger(storage, origin=ORIGIN) as migrated:
        assert migrated.root() == root
    assert raw.one("SELECT version FROM schema_versions WHERE component = 'ledger'") == (
        SCHEMA_VERSION,
    )
    with raw.tx() as db:
        db.execute(
            "UPDATE schema_versions SET version = ? WHERE component = 'ledger'",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(
        LedgerError, match=rf"ledger schema version {SCHEMA_VERSION + 1}, newer than"
    ):
        Ledger(storage, origin=ORIGIN)
    # the refusal changed nothing
    assert raw.one("SELECT version FROM schema_versions WHERE component = 'ledger'") == (
        SCHEMA_VERSION + 1,
    )
    assert raw.one("SELECT COUNT(*) FROM entries") == (25,)
    raw.close()


def test_a_postgresql_password_never_appears_in_messages(postgres: object) -> None:
    from tests.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    url = postgres.url("no_such_database")
    with pytest.raises(LedgerError) as caught:
        Ledger(url, origin=ORIGIN)
    assert postgres.password not in str(caught.value)
    assert "***" in str(caught.value)
