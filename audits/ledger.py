"""The append-only audit ledger: entries in SQLite or PostgreSQL, a Merkle tree in memory, signed checkpoints.

Notes:
    Storage follows DESIGN section 7: one SQLite file, ``journal_mode=WAL`` and
    ``synchronous=FULL`` so a commit is on disk (fsync of the WAL) before ``append`` returns; or
    a PostgreSQL database (a ``postgresql://`` URL, durable commits by default) through the same
    :mod:`audits.database` layer. On both, triggers refuse every UPDATE or DELETE on the entries,
    checkpoints and meta tables, and an INSERT trigger refuses any entry whose index is not exactly
    the next one, so even a second writer on the same database cannot leave a gap or overwrite
    history. The schema carries a version checked at open (:meth:`audits.database.Database.ensure_schema`). On open, every
    stored leaf hash is recomputed from the entry bytes and the tree is checked against the
    latest stored checkpoint (RFC 9162 root), so tampering at rest is caught before the
    ledger appends on top of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from audits.checkpoint import CheckpointSigner, SignedCheckpoint, parse_checkpoint
from audits.database import Database
from audits.errors import LedgerError, StorageError, VerificationError
from audits.events import Event, LedgerEntry
from audits.merkle import EMPTY_ROOT, MerkleTree, leaf_hash

__all__ = ["SCHEMA_VERSION", "Ledger"]

_FORMAT: Final = "secagg-audit-ledger-1"

SCHEMA_VERSION: Final = 1
"""The ledger's table layout version (version 0: the same tables, written before versions were recorded)."""

_SQLITE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    idx       INTEGER PRIMARY KEY,
    entry     BLOB NOT NULL,
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    size INTEGER NOT NULL CHECK (size >= 0),
    root BLOB NOT NULL CHECK (length(root) = 32),
    note TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'audit ledger is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'audit ledger is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS entries_next_index BEFORE INSERT ON entries
WHEN NEW.idx IS NOT (SELECT COALESCE(MAX(idx) + 1, 0) FROM entries)
BEGIN SELECT RAISE(ABORT, 'audit ledger is append-only: index is not the next one'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit ledger is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit ledger is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'audit ledger metadata is write-once'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'audit ledger metadata is write-once'); END;
"""

_POSTGRESQL_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    idx       BIGINT PRIMARY KEY,
    entry     BYTEA NOT NULL,
    leaf_hash BYTEA NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    size BIGINT NOT NULL CHECK (size >= 0),
    root BYTEA NOT NULL CHECK (length(root) = 32),
    note TEXT NOT NULL
);
CREATE OR REPLACE FUNCTION audit_next_index() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.idx IS DISTINCT FROM (SELECT COALESCE(MAX(idx) + 1, 0) FROM entries) THEN
        RAISE EXCEPTION 'audit ledger is append-only: index is not the next one';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER entries_no_update BEFORE UPDATE ON entries
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('audit ledger is append-only: UPDATE refused');
CREATE OR REPLACE TRIGGER entries_no_delete BEFORE DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('audit ledger is append-only: DELETE refused');
CREATE OR REPLACE TRIGGER entries_next_index BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION audit_next_index();
CREATE OR REPLACE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('audit ledger is append-only: UPDATE refused');
CREATE OR REPLACE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('audit ledger is append-only: DELETE refused');
CREATE OR REPLACE TRIGGER meta_no_update BEFORE UPDATE ON meta
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('audit ledger metadata is write-once');
CREATE OR REPLACE TRIGGER meta_no_delete BEFORE DELETE ON meta
    FOR EACH ROW EXECUTE FUNCTION secagg_refuse('audit ledger metadata is write-once');
"""


def _from_unversioned(db: Database) -> None:
    """Version 0 to 1: the tables are unchanged; only ``schema_versions`` is new (created by the caller)."""


class Ledger:
    """A tamper-evident, append-only log of :class:`~audits.events.Event` s.

    Args:
        path: the SQLite file (created if missing), ``":memory:"`` for a throwaway ledger, or a
            ``postgresql://`` URL (one ledger per database).
        origin: the log's unique name, written into every checkpoint; fixed at creation.
        fence: run first in every write transaction; raising refuses it (the coordinator's leadership check).

    Raises:
        LedgerError: the file cannot be opened, belongs to another origin, or its stored
            entries do not match their hashes or the latest checkpoint.

    Thread safety: all methods take one lock; the ledger may be shared between threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        origin: str,
        fence: Callable[[Database], None] | None = None,
    ) -> None:
        if not isinstance(origin, str) or not origin or any(c.isspace() for c in origin):
            raise ValueError("origin must be a non-empty string without whitespace")
        self._lock = threading.Lock()
        try:
            # explicit transactions (Database.tx): a batch is one transaction and one fsync
            self._db = Database(path, fence=fence)
        except StorageError as exc:
            raise LedgerError(f"cannot open audit ledger: {exc}") from exc
        self._path = self._db.target
        # a refused fence (StorageError) fails a write like a database error: nothing is written
        self._write_errors: tuple[type[Exception], ...] = (StorageError, *self._db.errors)
        try:
            self._db.ensure_schema(
                "ledger",
                version=SCHEMA_VERSION,
                ddl={"sqlite": _SQLITE_SCHEMA, "postgresql": _POSTGRESQL_SCHEMA},
                probe_table="entries",
                migrations={0: _from_unversioned},
            )
            self._origin = self._init_meta(origin)
        except StorageError as exc:
            self._db.close()
            raise LedgerError(str(exc)) from exc
        except self._db.errors as exc:
            self._db.close()
            raise LedgerError(f"cannot open audit ledger {self._path}: {exc}") from exc
        self._tree = MerkleTree()
        self._load()

    # ------------------------------------------------------------------ lifecycle

    def _init_meta(self, origin: str) -> str:
        rows = {str(k): str(v) for k, v in self._db.query("SELECT key, value FROM meta")}
        if not rows:
            with self._db.tx() as db:
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("format", _FORMAT), ("origin", origin)],
                )
            return origin
        if rows.get("format") != _FORMAT:
            raise LedgerError(f"{self._path} is not an audit ledger of format {_FORMAT}")
        if rows.get("origin") != origin:
            raise LedgerError(
                f"{self._path} belongs to origin {rows.get('origin')!r}, not {origin!r}"
            )
        return origin

    def _load(self) -> None:
        tree = self._tree
        rows = self._db.query("SELECT idx, entry, leaf_hash FROM entries ORDER BY idx")
        for idx, entry, stored in rows:
            if idx != tree.size:
                raise LedgerError(f"audit ledger is corrupt: entry {tree.size} is missing")
            computed = leaf_hash(bytes(entry))
            if computed != bytes(stored):
                raise LedgerError(f"audit ledger is corrupt: entry {idx} does not match its hash")
            tree.append(computed)
        latest = self._latest_checkpoint_locked()
        if latest is not None and (
            latest.size > tree.size or tree.root(latest.size) != latest.root
        ):
            raise LedgerError(
                f"audit ledger is corrupt: entries do not match checkpoint of size {latest.size}"
            )

    def close(self) -> None:
        """Close the database (further calls fail)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger(path={self._path!r}, origin={self._origin!r}, size={self.size})"

    # ------------------------------------------------------------------ writing

    @property
    def origin(self) -> str:
        """The log's origin line."""
        return self._origin

    @property
    def size(self) -> int:
        """Number of entries."""
        return self._tree.size

    def append(self, event: Event) -> int:
        """Append one event; it is committed and fsynced before this returns.

        Returns:
            The new entry's index.

        Raises:
            LedgerError: the write failed; nothing was appended.
        """
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Event]) -> list[int]:
        """Append events atomically: all are committed in one transaction (one fsync), or none.

        Returns:
            The indices of the new entries, in order.
        """
        items = list(events)
        for item in items:
            if not isinstance(item, Event):
                raise TypeError("append takes audits.events.Event objects")
        if not items:
            return []
        with self._lock:
            tree = self._tree
            start = tree.size
            prev = tree.leaf(start - 1) if start else EMPTY_ROOT
            rows: list[tuple[int, bytes, bytes]] = []
            for offset, event in enumerate(items):
                data = LedgerEntry(start + offset, prev, event).encode()
                prev = leaf_hash(data)
                rows.append((start + offset, data, prev))
            try:
                with self._db.tx() as db:
                    db.executemany(
                        "INSERT INTO entries (idx, entry, leaf_hash) VALUES (?, ?, ?)", rows
                    )
            except self._write_errors as exc:
                raise LedgerError(f"append failed, nothing written: {exc}") from exc
            for _, _, h in rows:
                tree.append(h)
            return list(range(start, start + len(items)))

    def checkpoint(self, signer: CheckpointSigner) -> SignedCheckpoint:
        """Sign and store a checkpoint of the whole ledger as it is now."""
        with self._lock:
            size = self._tree.size
            signed = signer.sign(origin=self._origin, size=size, root=self._tree.root(size))
            try:
                with self._db.tx() as db:
                    db.execute(
                        "INSERT INTO checkpoints (size, root, note) VALUES (?, ?, ?)",
                        (signed.size, signed.root, signed.text),
                    )
            except self._write_errors as exc:
                raise LedgerError(f"storing the checkpoint failed: {exc}") from exc
            return signed

    # ------------------------------------------------------------------ reading

    def _latest_checkpoint_locked(self) -> SignedCheckpoint | None:
        row = self._db.one("SELECT size, root, note FROM checkpoints ORDER BY id DESC LIMIT 1")
        if row is None:
            return None
        try:
            parsed = parse_checkpoint(row[2])
        except VerificationError as exc:
            raise LedgerError(f"stored checkpoint is malformed: {exc}") from exc
        if (parsed.size, parsed.root, parsed.origin) != (row[0], bytes(row[1]), self._origin):
            raise LedgerError("stored checkpoint note disagrees with its columns")
        return parsed

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The most recent stored checkpoint, or ``None`` if none was made."""
        with self._lock:
            return self._latest_checkpoint_locked()

    def root(self, size: int | None = None) -> bytes:
        """RFC 6962 root of the first ``size`` entries (default: all)."""
        with self._lock:
            return self._tree.root(size)

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Leaf hashes of entries ``[start, end)``."""
        with self._lock:
            stop = self._tree.size if end is None else end
            self._check_range(start, stop)
            return [self._tree.leaf(i) for i in range(start, stop)]

    def _check_range(self, start: int, end: int) -> None:
        if not 0 <= start <= end <= self._tree.size:
            raise ValueError(f"range [{start}, {end}) is outside 0..{self._tree.size}")

    def entries(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """The stored bytes of entries ``[start, end)`` (default: to the end)."""
        with self._lock:
            stop = self._tree.size if end is None else end
            self._check_range(start, stop)
            rows = self._db.query(
                "SELECT entry FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
            )
        return [bytes(r[0]) for r in rows]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 audit path of entry ``index`` in the tree of ``size`` entries."""
        with self._lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 6962 consistency proof from ``old_size`` to ``new_size`` entries."""
        with self._lock:
            return self._tree.consistency_proof(old_size, new_size)

    def decoded(self, start: int = 0, end: int | None = None) -> Sequence[LedgerEntry]:
        """Entries ``[start, end)`` parsed back into :class:`LedgerEntry` objects."""
        return [LedgerEntry.decode(data) for data in self.entries(start, end)]
