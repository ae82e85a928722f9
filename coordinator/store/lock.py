"""One coordinator per store: an exclusive OS lock on the SQLite store, held for the serving process's life.

Notes:
    Two coordinators on one store each believe they own the open round: the second marks the first one's round
    "interrupted by a restart" and both then write rounds, models and ledger entries (issue 17 saw
    ``UNIQUE constraint failed`` and a ledger refusing an out-of-order index). SQLite's own locks only
    serialise transactions, so the coordinator takes an ``flock(2)`` on a ``<store>.lock`` file beside the
    store before it reads anything, without waiting. The kernel drops the lock when the process exits, however
    it exits (SIGKILL included), so a crashed coordinator never leaves a stale lock behind; a lock file left on
    disk is harmless. ``flock`` is per open file description and independent of SQLite's ``fcntl`` byte-range
    locks (Linux ``flock(2)``), so it cannot interfere with SQLite's own locking.

    On PostgreSQL the lock is a session-level advisory lock (``pg_try_advisory_lock``, PostgreSQL manual 9.27.10)
    on a connection of its own, held the same way: the server drops it when the session ends, including when
    the process is killed and its TCP connection closes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from audits.database import is_postgresql, redact
from coordinator.errors import StoreError

__all__ = ["ADVISORY_LOCK_KEY", "StoreLock"]

ADVISORY_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"secagg coordinator store lock").digest()[:8], "big", signed=True
)
"""The PostgreSQL advisory lock key (a bigint) a serving coordinator holds on its database."""


class StoreLock:
    """An exclusive, non-blocking lock on the store: ``<path>.lock`` for SQLite, an advisory lock for PostgreSQL.

    Raises:
        StoreError: another process holds the lock (its pid is in the message when known).
    """

    def __init__(self, path: str | Path) -> None:
        self._fd: int | None = None
        self._conn: Any = None
        if is_postgresql(path):
            self._lock_postgresql(str(path))
            return
        self.path = Path(f"{path}.lock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the store lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"another coordinator (pid {holder}) is serving the store {path}; "
                "stop it first or give this one its own storage"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def _lock_postgresql(self, url: str) -> None:
        import psycopg

        shown = redact(url)
        try:
            conn = psycopg.connect(url, autocommit=True, application_name="secagg coordinator lock")
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()
            raise StoreError(f"cannot lock the store {shown}: {text[0] if text else exc}") from exc
        if not (row and row[0]):
            conn.close()
            raise StoreError(
                f"another coordinator is serving the store {shown}; "
                "stop it first or give this one its own database"
            )
        self._conn = conn

    @property
    def held(self) -> bool:
        """Whether this lock is still held (a PostgreSQL lock is lost with its connection)."""
        if self._fd is not None:
            return True
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def release(self) -> None:
        """Release the lock (idempotent); the process's exit releases it too."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
