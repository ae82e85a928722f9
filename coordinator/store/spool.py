"""Upload spools: a throwaway SQLite file per round for Paillier ciphertext chunks.

Notes:
    Ciphertext chunks are spooled rather than kept in RAM: memory grows with the vector, not with the number
    of silos (DESIGN 8). The spooled ciphertexts are encrypted under the threshold key, so the spool reveals
    nothing to anyone holding fewer than ``t`` shares; losing it in a crash only aborts the open round, which
    a restart does anyway.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from secagg.errors import ProtocolError

__all__ = ["SQLiteContributionStore"]


class SQLiteContributionStore:
    """A :class:`~secagg.paillier.ContributionStore` in a throwaway SQLite file (one per round). Thread-safe.

    Args:
        directory: where to create the file (a fresh temporary directory by default).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="secagg-paillier-", dir=directory))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self._dir / "contributions.sqlite"), check_same_thread=False, isolation_level=None
        )
        # a spool, not a record: losing it in a crash only aborts the open round, which a restart does anyway
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE chunks (silo TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, "
            "PRIMARY KEY (silo, idx))"
        )

    def append(self, silo_id: str, chunk_index: int, data: bytes) -> None:
        """Store chunk ``chunk_index`` of ``silo_id`` (chunks arrive in order)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM chunks WHERE silo = ?", (silo_id,)
            ).fetchone()
            if chunk_index != count:
                raise ProtocolError("chunks must be stored in order")
            self._db.execute("INSERT INTO chunks VALUES (?, ?, ?)", (silo_id, chunk_index, data))

    def chunks(self, silo_id: str) -> Iterator[bytes]:
        """The stored chunks of ``silo_id`` in order (read one at a time)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM chunks WHERE silo = ?", (silo_id,)
            ).fetchone()
        for index in range(int(count)):
            with self._lock:
                row = self._db.execute(
                    "SELECT data FROM chunks WHERE silo = ? AND idx = ?", (silo_id, index)
                ).fetchone()
            if row is None:
                return
            yield bytes(row[0])

    def discard(self, silo_id: str) -> None:
        """Forget everything stored for ``silo_id``."""
        with self._lock:
            self._db.execute("DELETE FROM chunks WHERE silo = ?", (silo_id,))

    def close(self) -> None:
        """Close and delete the spool."""
        with self._lock:
            self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)
