"""Persistence of federations, rounds and global models behind a small interface, on SQLite or PostgreSQL.

Notes:
    Every write is one transaction committed and durable (SQLite: ``synchronous=FULL`` in WAL mode, so the
    commit is fsynced; PostgreSQL: its default ``synchronous_commit``) before the caller answers anyone, and nothing is ever updated in place except a round's status moving
    forward from ``open``. A coordinator killed at any moment therefore restarts with every completed round
    and every global model; a round that was open is marked aborted on restart (its in-memory protocol state,
    masks and shares included, is gone by design: it must never be written to disk). Triggers on both
    databases refuse to update a model or a finished round and to delete either, whoever connects.

    The database layer (placeholders, transactions, schema versions) is :mod:`audits.database`, shared with
    the audit ledger, which lives in the same database (its own tables).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from audits.database import Database
from audits.errors import StorageError
from coordinator.common import FloatVector, RoundStatus, model_bytes_view, model_hash
from coordinator.errors import NotFound, StoreError

__all__ = ["SCHEMA_VERSION", "RoundRecord", "RoundStatus", "SQLStore", "Store", "model_hash"]


@dataclass(frozen=True)
class RoundRecord:
    """One round as stored."""

    federation: str
    round: int
    status: RoundStatus
    model_hash: bytes
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    reason: str
    new_model_hash: bytes


class Store(Protocol):
    """What the round service needs from persistence."""

    def init_federation(
        self, federation: str, *, settings: str, initial_model: FloatVector
    ) -> None: ...
    def open_round(self, federation: str, round_: int, model_hash: bytes) -> None: ...
    def complete_round(
        self,
        federation: str,
        round_: int,
        *,
        survivors: Sequence[str],
        dropped: Sequence[str],
        new_model: FloatVector,
    ) -> bytes: ...
    def abort_round(self, federation: str, round_: int, reason: str) -> None: ...
    def abort_open_rounds(self, federation: str, reason: str) -> list[int]: ...
    def rounds(self, federation: str) -> list[RoundRecord]: ...
    def model(self, federation: str, round_: int) -> tuple[FloatVector, bytes]: ...
    def settings(self, federation: str) -> str: ...


SCHEMA_VERSION: Final = 1
"""The store's schema version (version 0: the same tables, written before versions were recorded)."""

_SQLITE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS federations (
    id TEXT PRIMARY KEY, settings TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    federation TEXT NOT NULL, round INTEGER NOT NULL, hash BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (federation, round));
CREATE TABLE IF NOT EXISTS rounds (
    federation TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, model_hash BLOB NOT NULL,
    survivors TEXT NOT NULL DEFAULT '[]', dropped TEXT NOT NULL DEFAULT '[]', reason TEXT NOT NULL DEFAULT '',
    new_model_hash BLOB NOT NULL DEFAULT x'', PRIMARY KEY (federation, round));
CREATE TRIGGER IF NOT EXISTS models_immutable BEFORE UPDATE ON models
    BEGIN SELECT RAISE(ABORT, 'models are immutable'); END;
CREATE TRIGGER IF NOT EXISTS models_kept BEFORE DELETE ON models
    BEGIN SELECT RAISE(ABORT, 'models are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS rounds_kept BEFORE DELETE ON rounds
    BEGIN SELECT RAISE(ABORT, 'rounds are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS rounds_final BEFORE UPDATE ON rounds WHEN OLD.status != 'open'
    BEGIN SELECT RAISE(ABORT, 'a finished round is immutable'); END;
"""

_POSTGRESQL_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS federations (
    id TEXT PRIMARY KEY, settings TEXT NOT NULL, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    federation TEXT NOT NULL, round INTEGER NOT NULL, hash BYTEA NOT NULL, data BYTEA NOT NULL,
    PRIMARY KEY (federation, round));
CREATE TABLE IF NOT EXISTS rounds (
    federation TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, model_hash BYTEA NOT NULL,
    survivors TEXT NOT NULL DEFAULT '[]', dropped TEXT NOT NULL DEFAULT '[]', reason TEXT NOT NULL DEFAULT '',
    new_model_hash BYTEA NOT NULL DEFAULT '\\x'::bytea, PRIMARY KEY (federation, round));
CREATE OR REPLACE TRIGGER models_immutable BEFORE UPDATE ON models
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('models are immutable');
CREATE OR REPLACE TRIGGER models_kept BEFORE DELETE ON models
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('models are never deleted');
CREATE OR REPLACE TRIGGER rounds_kept BEFORE DELETE ON rounds
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('rounds are never deleted');
CREATE OR REPLACE TRIGGER rounds_final BEFORE UPDATE ON rounds
    FOR EACH ROW WHEN (OLD.status <> 'open') EXECUTE FUNCTION secagg_refuse('a finished round is immutable');
"""


def _from_unversioned(db: Database) -> None:
    """Version 0 to 1: the tables are unchanged; only ``schema_versions`` is new (created by the caller)."""


class SQLStore:
    """The store on SQLite (a file path: the embedded default) or PostgreSQL (a ``postgresql://`` URL).

    Thread-safe. One database holds any number of federations. ``fence`` runs first in every write transaction
    (see :class:`coordinator.store.StoreLock`).

    Raises:
        StoreError: the database cannot be opened, or its schema is newer than this code.
    """

    def __init__(
        self, target: str | Path, *, fence: Callable[[Database], None] | None = None
    ) -> None:
        self._lock = threading.Lock()
        try:
            # No statement cache: a cached INSERT keeps its last bound model (SQLite's own copy of the
            # blob) until the statement runs again, one more vector resident for a whole round. The
            # store runs a few statements per round, so re-preparing them costs nothing measurable.
            self._db = Database(target, cached_statements=0, fence=fence)
        except StorageError as exc:
            raise StoreError(f"cannot open store: {exc}") from exc
        self.path = self._db.target
        try:
            self._db.ensure_schema(
                "store",
                version=SCHEMA_VERSION,
                ddl={"sqlite": _SQLITE_SCHEMA, "postgresql": _POSTGRESQL_SCHEMA},
                probe_table="rounds",
                migrations={0: _from_unversioned},
            )
        except StorageError as exc:
            self._db.close()
            raise StoreError(str(exc)) from exc
        except self._db.errors as exc:
            self._db.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[Database]:
        with self._lock:
            try:
                with self._db.tx() as db:
                    yield db
            except StorageError as exc:  # the fence: this coordinator is no longer the leader
                raise StoreError(str(exc)) from exc
            except self._db.errors as exc:
                raise StoreError(f"store write failed: {exc}") from exc

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.query(sql, params)
            except self._db.errors as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    def init_federation(
        self, federation: str, *, settings: str, initial_model: FloatVector
    ) -> None:
        """Create the federation with its round-0 model; a restart with identical settings is a no-op."""
        with self._tx() as db:
            row = db.one("SELECT settings FROM federations WHERE id = ?", (federation,))
            if row is not None:
                if row[0] != settings:
                    raise StoreError(
                        f"federation {federation} exists in {self.path} with different settings; "
                        "use a new storage file or the original configuration"
                    )
                return
            db.execute(
                "INSERT INTO federations (id, settings, created) VALUES (?, ?, ?)",
                (federation, settings, time.time()),
            )
            blob = model_bytes_view(initial_model)
            db.execute(
                "INSERT INTO models (federation, round, hash, data) VALUES (?, 0, ?, ?)",
                (federation, hashlib.sha256(blob).digest(), blob),
            )

    def settings(self, federation: str) -> str:
        """The settings JSON the federation was created with."""
        rows = self._query("SELECT settings FROM federations WHERE id = ?", (federation,))
        if not rows:
            raise NotFound(f"unknown federation {federation!r}")
        return str(rows[0][0])

    def open_round(self, federation: str, round_: int, model_hash: bytes) -> None:
        """Record that a round has opened on the given model."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO rounds (federation, round, status, model_hash) VALUES (?, ?, 'open', ?)",
                (federation, round_, model_hash),
            )

    def complete_round(
        self,
        federation: str,
        round_: int,
        *,
        survivors: Sequence[str],
        dropped: Sequence[str],
        new_model: FloatVector,
    ) -> bytes:
        """Atomically store the next global model and mark the round completed; returns the model hash."""
        blob = model_bytes_view(new_model)
        digest = hashlib.sha256(blob).digest()
        with self._tx() as db:
            db.execute(
                "INSERT INTO models (federation, round, hash, data) VALUES (?, ?, ?, ?)",
                (federation, round_ + 1, digest, blob),
            )
            updated = db.execute(
                "UPDATE rounds SET status='completed', survivors=?, dropped=?, new_model_hash=? "
                "WHERE federation=? AND round=? AND status='open'",
                (
                    json.dumps(list(survivors)),
                    json.dumps(list(dropped)),
                    digest,
                    federation,
                    round_,
                ),
            )
            if updated != 1:
                raise StoreError(f"round {round_} of {federation} is not open")
        return digest

    def abort_round(self, federation: str, round_: int, reason: str) -> None:
        """Mark an open round aborted with its reason; the next round reuses this round's model."""
        with self._tx() as db:
            start = db.one(
                "SELECT hash, data FROM models WHERE federation=? AND round=?", (federation, round_)
            )
            if start is None:
                raise StoreError(f"no starting model for round {round_} of {federation}")
            db.execute(
                "UPDATE rounds SET status='aborted', reason=? WHERE federation=? AND round=? AND status='open'",
                (reason, federation, round_),
            )
            # the next round starts from the same model
            db.execute(
                "INSERT INTO models (federation, round, hash, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (federation, round) DO NOTHING",
                (federation, round_ + 1, start[0], start[1]),
            )

    def abort_open_rounds(self, federation: str, reason: str) -> list[int]:
        """Abort every round left open (after a restart); returns their numbers."""
        rows = self._query(
            "SELECT round FROM rounds WHERE federation=? AND status='open' ORDER BY round",
            (federation,),
        )
        numbers = [int(r[0]) for r in rows]
        for round_ in numbers:
            self.abort_round(federation, round_, reason)
        return numbers

    def rounds(self, federation: str) -> list[RoundRecord]:
        """Every round of the federation, in order."""
        rows = self._query(
            "SELECT round, status, model_hash, survivors, dropped, reason, new_model_hash "
            "FROM rounds WHERE federation=? ORDER BY round",
            (federation,),
        )
        return [
            RoundRecord(
                federation,
                int(r[0]),
                RoundStatus(r[1]),
                bytes(r[2]),
                tuple(json.loads(r[3])),
                tuple(json.loads(r[4])),
                str(r[5]),
                bytes(r[6]),
            )
            for r in rows
        ]

    def model(self, federation: str, round_: int) -> tuple[FloatVector, bytes]:
        """The global model round ``round_`` starts from, and its hash."""
        rows = self._query(
            "SELECT hash, data FROM models WHERE federation=? AND round=?", (federation, round_)
        )
        if not rows:
            raise NotFound(f"no model for round {round_} of {federation!r}")
        stored, data = bytes(rows[0][0]), bytes(rows[0][1])
        vec = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if model_hash(vec) != stored:
            raise StoreError(f"stored model of round {round_} does not match its hash")
        return vec, stored
