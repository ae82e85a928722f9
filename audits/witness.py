"""What a silo runs to hold the coordinator to its history: a checkpoint witness and local ledger.

Notes:
    A coordinator that rewrites its log must either sign a checkpoint that is not an
    extension of one it signed before (caught here by the RFC 9162 2.1.4 consistency proof),
    or keep showing silos an old view (caught when any silo's latest checkpoint is compared
    with a bundle: see ``verify_bundle(..., checkpoints=...)``). This is the "gossip" defence
    of Certificate Transparency (RFC 9162 section 8.1.4) with the silos as witnesses. The
    witness also keeps the silo's own record of what it sent and spent, so the silo can later
    prove which facts the coordinator should have logged (its attestations, by inclusion proof).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from audits.canonical import canonical_json, parse_canonical
from audits.checkpoint import SignedCheckpoint, parse_checkpoint, verify_checkpoint
from audits.errors import LedgerError, VerificationError
from audits.events import utc_now
from audits.merkle import leaf_hash, verify_consistency, verify_inclusion

__all__ = ["CheckpointWitness", "LocalRecord"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accepted (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    time TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS accepted_no_update BEFORE UPDATE ON accepted
BEGIN SELECT RAISE(ABORT, 'witness state is append-only'); END;
CREATE TRIGGER IF NOT EXISTS accepted_no_delete BEFORE DELETE ON accepted
BEGIN SELECT RAISE(ABORT, 'witness state is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'local ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'local ledger is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """One fact from a silo's local ledger."""

    record_id: int
    kind: str
    body: Mapping[str, Any]
    time: str


class CheckpointWitness:
    """A silo's witness of the coordinator's audit log, stored in its own SQLite file.

    Args:
        path: the witness's SQLite file (or ``":memory:"``).
        audit_public_key: the coordinator's raw 32-byte Ed25519 audit key, pinned out of band.
        origin: the log origin the silo expects.
        clock: time source for local records (RFC 3339 UTC text).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        audit_public_key: bytes,
        origin: str,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self._key = bytes(audit_public_key)
        self._origin = origin
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open witness store {path}: {exc}") from exc

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> CheckpointWitness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _insert(self, sql: str, params: tuple[Any, ...]) -> int:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"witness store write failed: {exc}") from exc
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def latest(self) -> SignedCheckpoint | None:
        """The last checkpoint this witness accepted, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT note FROM accepted ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else parse_checkpoint(row[0])

    def update(self, checkpoint_text: str, consistency_proof: Sequence[bytes]) -> SignedCheckpoint:
        """Accept a new checkpoint if it is signed and extends the last accepted one.

        Args:
            checkpoint_text: the coordinator's new signed note.
            consistency_proof: proof from the last accepted size to the new size (empty on
                the first call, or if the size did not change).

        Returns:
            The accepted checkpoint (now the latest).

        Raises:
            VerificationError: bad signature or origin; or "coordinator rewrote history" when
                the new checkpoint does not extend the previous one. Nothing is stored then.
        """
        new = verify_checkpoint(checkpoint_text, self._key, self._origin)
        with self._lock:
            row = self._db.execute("SELECT note FROM accepted ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None:
                old = parse_checkpoint(row[0])
                if new.size < old.size:
                    raise VerificationError(
                        f"coordinator rewrote history: checkpoint size went back from "
                        f"{old.size} to {new.size}"
                    )
                try:
                    verify_consistency(old.size, new.size, consistency_proof, old.root, new.root)
                except VerificationError as exc:
                    raise VerificationError(
                        f"coordinator rewrote history: checkpoint of size {new.size} is not "
                        f"consistent with the accepted one of size {old.size} ({exc})"
                    ) from exc
            self._insert(
                "INSERT INTO accepted (size, root, note) VALUES (?, ?, ?)",
                (new.size, new.root, new.text),
            )
        return new

    def check_inclusion(
        self,
        entry: bytes,
        index: int,
        proof: Sequence[bytes],
        checkpoint: SignedCheckpoint | None = None,
    ) -> None:
        """Check that ``entry`` is at ``index`` in the log of an accepted checkpoint.

        Args:
            entry: the entry bytes the silo expects (e.g. the entry with its attestation).
            index: the entry's index.
            proof: the coordinator's inclusion proof.
            checkpoint: an accepted checkpoint to check against (default: the latest).

        Raises:
            VerificationError: the entry is not in the log the coordinator committed to.
        """
        target = checkpoint if checkpoint is not None else self.latest()
        if target is None:
            raise VerificationError("no checkpoint accepted yet: cannot check inclusion")
        try:
            verify_inclusion(leaf_hash(entry), index, target.size, proof, target.root)
        except VerificationError as exc:
            raise VerificationError(
                f"entry {index} is not in the log of checkpoint size {target.size}: {exc}"
            ) from exc

    def record(self, kind: str, body: Mapping[str, Any]) -> int:
        """Append a fact to the silo's local ledger (what it sent, what it spent).

        Returns:
            The record id.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty string")
        if not isinstance(body, Mapping):
            raise TypeError("body must be a JSON object")
        data = canonical_json(body)
        with self._lock:
            return self._insert(
                "INSERT INTO records (kind, body, time) VALUES (?, ?, ?)",
                (kind, data, self._clock()),
            )

    def records(self, kind: str | None = None) -> list[LocalRecord]:
        """The local ledger, oldest first (optionally only one kind)."""
        with self._lock:
            if kind is None:
                rows = self._db.execute(
                    "SELECT id, kind, body, time FROM records ORDER BY id"
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, kind, body, time FROM records WHERE kind = ? ORDER BY id", (kind,)
                ).fetchall()
        return [LocalRecord(r[0], r[1], parse_canonical(bytes(r[2])), r[3]) for r in rows]
