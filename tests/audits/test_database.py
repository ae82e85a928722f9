"""The database layer under the ledger and the store, on both databases: transactions, scripts, schema versions."""

from __future__ import annotations

import pytest

from audits.database import Database, is_postgresql, redact
from audits.errors import StorageError

DDL = {
    "sqlite": """
CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS t_kept BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'kept; really'); END;
""",
    "postgresql": """
CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BYTEA NOT NULL);
CREATE OR REPLACE FUNCTION t_refuse() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'kept; really'; END $$;
CREATE OR REPLACE TRIGGER t_kept BEFORE DELETE ON t FOR EACH ROW EXECUTE FUNCTION t_refuse();
""",
}


def schema(db: Database, version: int, migrations: dict | None = None) -> int:  # type: ignore[type-arg]
    return db.ensure_schema(
        "test", version=version, ddl=DDL, probe_table="t", migrations=migrations or {}
    )


def test_urls_are_recognised_and_passwords_redacted() -> None:
    assert is_postgresql("postgresql://u@h/db") and is_postgresql("postgres://h/db")
    assert not is_postgresql("coordinator.sqlite")
    assert redact("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("state/coordinator.sqlite") == "state/coordinator.sqlite"


def test_a_transaction_commits_whole_or_not_at_all(storage: str) -> None:
    db = Database(storage)
    assert schema(db, 1) == 1
    with db.tx():
        db.executemany("INSERT INTO t (k, v) VALUES (?, ?)", [(1, b"a"), (2, b"\x00b")])

    def two_inserts_the_second_failing() -> None:
        with db.tx():
            db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (3, b"c"))
            db.execute("INSERT INTO t (k, v) VALUES (?, ?)", (1, b"duplicate"))

    with pytest.raises(db.errors):
        two_inserts_the_second_failing()
    assert db.query("SELECT k, v FROM t ORDER BY k") == [(1, b"a"), (2, b"\x00b")]
    with pytest.raises(db.errors, match="kept; really"), db.tx():  # a ';' inside a trigger body
        db.execute("DELETE FROM t")
    assert db.one("SELECT count(*) FROM t") == (2,)
    db.close()


def test_schema_versions_migrate_in_order_and_refuse_newer(storage: str) -> None:
    db = Database(storage)
    schema(db, 1)
    ran: list[int] = []
    found = schema(db, 3, {1: lambda _: ran.append(1), 2: lambda _: ran.append(2)})
    assert (found, ran) == (1, [1, 2])
    with pytest.raises(
        StorageError, match="test schema version 3, newer than this secagg supports"
    ):
        schema(db, 2)
    with pytest.raises(StorageError, match="no migration of the test schema from version 3 to 4"):
        schema(db, 5, {4: lambda _: None})
    assert db.one("SELECT version FROM schema_versions WHERE component = 'test'") == (3,)
    db.close()


def test_a_failed_migration_changes_nothing(storage: str) -> None:
    db = Database(storage)
    schema(db, 1)

    def broken(d: Database) -> None:
        d.execute("ALTER TABLE t ADD COLUMN w TEXT")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError, match="migration bug"):
        schema(db, 2, {1: broken})
    assert db.one("SELECT version FROM schema_versions WHERE component = 'test'") == (1,)
    db.execute("INSERT INTO t (k, v) VALUES (9, ?)", (b"z",))  # no column w was left behind
    assert db.query("SELECT * FROM t") == [(9, b"z")]
    db.close()
