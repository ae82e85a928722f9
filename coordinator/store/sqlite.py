"""Persistence of federations, rounds and global models behind a small interface; SQLite by default.

Notes:
    Every write is one transaction committed (``synchronous=FULL`` in WAL mode, so the commit is fsynced)
    before the caller answers anyone, and nothing is ever updated in place except a round's status moving
    forward from ``open``. A coordinator killed at any moment therefore restarts with every completed round
    and every global model; a round that was open is marked aborted on restart (its in-memory protocol state,
    masks and shares included, is gone by design: it must never be written to disk).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from coordinator.common import FloatVector, RoundStatus, model_bytes_view, model_hash
from coordinator.errors import NotFound, StoreError

__all__ = ["RoundRecord", "RoundStatus", "SQLiteStore", "Store", "model_hash"]


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


_SCHEMA = """
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


class SQLiteStore:
    """The default store: one SQLite file in WAL mode, fsync on commit. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            # No statement cache: a cached INSERT keeps its last bound model (SQLite's own copy of the
            # blob) until the statement runs again, one more vector resident for a whole round. The
            # store runs a few statements per round, so re-preparing them costs nothing measurable.
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, cached_statements=0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"store write failed: {exc}") from exc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def init_federation(
        self, federation: str, *, settings: str, initial_model: FloatVector
    ) -> None:
        """Create the federation with its round-0 model; a restart with identical settings is a no-op."""
        with self._tx() as db:
            row = db.execute(
                "SELECT settings FROM federations WHERE id = ?", (federation,)
            ).fetchone()
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
        with self._lock:
            row = self._db.execute(
                "SELECT settings FROM federations WHERE id = ?", (federation,)
            ).fetchone()
        if row is None:
            raise NotFound(f"unknown federation {federation!r}")
        return str(row[0])

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
            ).rowcount
            if updated != 1:
                raise StoreError(f"round {round_} of {federation} is not open")
        return digest

    def abort_round(self, federation: str, round_: int, reason: str) -> None:
        """Mark an open round aborted with its reason; the next round reuses this round's model."""
        with self._tx() as db:
            start = db.execute(
                "SELECT hash, data FROM models WHERE federation=? AND round=?", (federation, round_)
            ).fetchone()
            if start is None:
                raise StoreError(f"no starting model for round {round_} of {federation}")
            db.execute(
                "UPDATE rounds SET status='aborted', reason=? WHERE federation=? AND round=? AND status='open'",
                (reason, federation, round_),
            )
            # the next round starts from the same model
            db.execute(
                "INSERT OR IGNORE INTO models (federation, round, hash, data) VALUES (?, ?, ?, ?)",
                (federation, round_ + 1, start[0], start[1]),
            )

    def abort_open_rounds(self, federation: str, reason: str) -> list[int]:
        """Abort every round left open (after a restart); returns their numbers."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round FROM rounds WHERE federation=? AND status='open' ORDER BY round",
                (federation,),
            ).fetchall()
        for (round_,) in rows:
            self.abort_round(federation, int(round_), reason)
        return [int(r) for (r,) in rows]

    def rounds(self, federation: str) -> list[RoundRecord]:
        """Every round of the federation, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round, status, model_hash, survivors, dropped, reason, new_model_hash "
                "FROM rounds WHERE federation=? ORDER BY round",
                (federation,),
            ).fetchall()
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
        with self._lock:
            row = self._db.execute(
                "SELECT hash, data FROM models WHERE federation=? AND round=?", (federation, round_)
            ).fetchone()
        if row is None:
            raise NotFound(f"no model for round {round_} of {federation!r}")
        vec = np.frombuffer(row[1], dtype="<f4").astype(np.float32)
        if model_hash(vec) != bytes(row[0]):
            raise StoreError(f"stored model of round {round_} does not match its hash")
        return vec, bytes(row[0])
