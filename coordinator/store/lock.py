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
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from coordinator.errors import StoreError

__all__ = ["StoreLock"]


class StoreLock:
    """An exclusive, non-blocking lock on ``<path>.lock`` (see the module notes).

    Raises:
        StoreError: another process holds the lock (its pid is in the message when known).
    """

    def __init__(self, path: str | Path) -> None:
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
        self._fd: int | None = fd

    def release(self) -> None:
        """Release the lock (idempotent); the process's exit releases it too."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
