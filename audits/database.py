"""One small database interface over SQLite (embedded default) and PostgreSQL, for the ledger and the store.

The audit ledger and the coordinator's store write the same few statements on either database: SQL is written
once with ``?`` placeholders and ``ON CONFLICT`` clauses (both dialects), and only the table definitions differ
(blob types, identity columns, triggers). A ``postgresql://`` (or ``postgres://``) target opens PostgreSQL
through psycopg 3; anything else is a SQLite file path.

Notes:
    Durability: SQLite runs in WAL mode with ``synchronous=FULL`` (a commit fsyncs the WAL); PostgreSQL commits
    are durable with its defaults (``fsync=on``, ``synchronous_commit=on``). Both connections run in autocommit
    and every write goes through :meth:`Database.tx`, one explicit transaction (SQLite ``BEGIN IMMEDIATE``
    takes the write lock up front, so a transaction never fails half-way on a lock upgrade).

    Schema versions: each component (``ledger``, ``store``) records its version in ``schema_versions``.
    :meth:`Database.ensure_schema` runs at start-up: a database newer than this code is refused (an old
    binary must not write into a layout it does not know), an older one is migrated step by step in one
    transaction, and a database from before versioning (its tables present, no version row) is version 0.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from audits.errors import StorageError

__all__ = ["Database", "Dialect", "is_postgresql", "redact"]

Dialect = Literal["sqlite", "postgresql"]

_MISSING_DATABASE: Final = re.compile(r'database ".*" does not exist')
"""The server's refusal of a connection to a database nobody created (secagg creates tables, not databases)."""

_VERSIONS: Final = "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"

_POSTGRESQL_REFUSE: Final = """
CREATE OR REPLACE FUNCTION secagg_refuse() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$;
"""
"""The PL/pgSQL trigger function every component's immutability triggers call (created before any ``ddl`` on
PostgreSQL): it raises the message given as the trigger's argument, as SQLite's ``RAISE(ABORT, ...)`` does."""

Migration = Callable[["Database"], None]
"""Moves a component's tables from version ``v`` to ``v + 1`` (run inside the start-up transaction)."""


def is_postgresql(target: str | Path) -> bool:
    """Whether ``target`` names a PostgreSQL database (a ``postgresql://`` or ``postgres://`` URL)."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact(target: str | Path) -> str:
    """``target`` fit for a message or a log line: a URL's password replaced by ``***``."""
    text = str(target)
    if not is_postgresql(text):
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Database:
    """A connection to SQLite or PostgreSQL with one placeholder style and explicit transactions.

    Not thread-safe by itself: :meth:`tx` and :meth:`query` serialise on one lock, which callers that already
    hold their own lock do not notice.

    Args:
        target: a SQLite file path (or ``":memory:"``) or a PostgreSQL URL.
        cached_statements: SQLite's statement cache size (0 disables it; see the coordinator's store).
        fence: run first in every transaction of :meth:`tx`; raising refuses the transaction (the
            coordinator's leadership check, :meth:`coordinator.store.StoreLock.fence`).

    Raises:
        StorageError: the database cannot be opened (the message carries no password).
    """

    def __init__(
        self,
        target: str | Path,
        *,
        cached_statements: int = 128,
        fence: Callable[[Database], None] | None = None,
    ) -> None:
        self.target = redact(target)
        self._fence = fence
        self._lock = threading.RLock()
        self._conn: Any
        if is_postgresql(target):
            self.dialect: Dialect = "postgresql"
            try:
                import psycopg
            except ImportError as exc:
                raise StorageError(
                    "PostgreSQL storage needs psycopg: pip install 'secagg[postgresql]'"
                ) from exc
            self.errors: tuple[type[Exception], ...] = (psycopg.Error,)
            try:
                self._conn = psycopg.connect(str(target), autocommit=True)
            except psycopg.Error as exc:
                reason = _first_line(exc)
                if _MISSING_DATABASE.search(
                    reason
                ):  # SQLSTATE 3D000, said only in the text at connect
                    reason += (
                        " (create it first: createdb, or CREATE DATABASE as a user allowed to)"
                    )
                raise StorageError(f"cannot open {self.target}: {reason}") from exc
        else:
            self.dialect = "sqlite"
            self.errors = (sqlite3.Error,)
            try:
                self._conn = sqlite3.connect(
                    str(target),
                    check_same_thread=False,
                    isolation_level=None,
                    cached_statements=cached_statements,
                )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open {self.target}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._lock:
            cursor = self._conn.execute(self._sql(sql), tuple(params))
            return int(cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters."""
        with self._lock:
            if self.dialect == "postgresql":
                with self._conn.cursor() as cursor:
                    cursor.executemany(self._sql(sql), [tuple(r) for r in rows])
            else:
                self._conn.executemany(sql, [tuple(r) for r in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a query (blobs come back as :class:`bytes` on both databases)."""
        with self._lock:
            rows = self._conn.execute(self._sql(sql), tuple(params)).fetchall()
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or ``None``."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def script(self, ddl: str) -> None:
        """Run several parameterless statements (table definitions), inside the current transaction if any.

        SQLite's ``executescript`` would commit an open transaction first, so the script is split into complete
        statements (``sqlite3.complete_statement`` knows a trigger's ``BEGIN ... END``) and run one by one.
        """
        with self._lock:
            if self.dialect == "postgresql":
                self._conn.execute(ddl)
                return
            pending = ""
            for piece in ddl.split(";"):
                pending += piece + ";"
                if sqlite3.complete_statement(pending):
                    if pending.strip(" \n;"):
                        self._conn.execute(pending)
                    pending = ""

    @contextmanager
    def tx(self) -> Iterator[Database]:
        """One transaction: committed when the block ends, rolled back (and re-raised) on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                if self._fence is not None:
                    self._fence(self)
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def has_table(self, name: str) -> bool:
        """Whether a table of that name exists."""
        if self.dialect == "sqlite":
            row = self.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
            return row is not None
        row = self.one("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(row and row[0])

    def ensure_schema(
        self,
        component: str,
        *,
        version: int,
        ddl: Mapping[Dialect, str],
        probe_table: str,
        migrations: Mapping[int, Migration],
    ) -> int:
        """Create, check or migrate ``component``'s tables (see the module notes); returns the version found.

        Args:
            version: the version this code writes.
            ddl: the idempotent table definitions of ``version``, per dialect (run after any migration); on
                PostgreSQL its triggers may call ``secagg_refuse('message')``.
            probe_table: a table whose presence without a version row means "version 0".
            migrations: ``migrations[v]`` moves version ``v`` to ``v + 1``.

        Raises:
            StorageError: the stored version is newer than ``version``, or a migration step is missing; nothing
                was changed.
        """
        with self.tx():
            self.execute(_VERSIONS)
            row = self.one("SELECT version FROM schema_versions WHERE component = ?", (component,))
            if row is not None:
                found = int(row[0])
            elif self.has_table(probe_table):
                found = 0
            else:
                found = version
            if found > version:
                raise StorageError(
                    f"{self.target} holds {component} schema version {found}, newer than this secagg "
                    f"supports ({version}): run the secagg release that wrote it, or restore a backup"
                )
            for step in range(found, version):
                migrate = migrations.get(step)
                if migrate is None:
                    raise StorageError(
                        f"no migration of the {component} schema from version {step} to {step + 1}"
                    )
                migrate(self)
            if self.dialect == "postgresql":
                self.script(_POSTGRESQL_REFUSE)
            self.script(ddl[self.dialect])
            self.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, version),
            )
        return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
