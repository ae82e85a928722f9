"""One coordinator per store: an exclusive lock on the store, held for the serving process's life; on PostgreSQL
also the leader election of standby replicas, with a fencing epoch.

Notes:
    Two coordinators on one store each believe they own the open round: the second marks the first one's round
    "interrupted by a restart" and both then write rounds, models and ledger entries (issue 17 saw
    ``UNIQUE constraint failed`` and a ledger refusing an out-of-order index). So the coordinator takes the lock
    before it reads anything.

    SQLite: an ``flock(2)`` on a ``<store>.lock`` file beside the store. The kernel drops it when the process
    exits, however it exits (SIGKILL included), so a crashed coordinator never leaves a stale lock; a lock file
    left on disk is harmless. ``flock`` is per open file description and independent of SQLite's ``fcntl``
    byte-range locks (Linux ``flock(2)``), so it cannot interfere with SQLite's own locking.

    PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``, PostgreSQL manual "Advisory Locks") on
    a connection of its own; the server drops it when the session ends, including when the process is killed
    and its TCP connection closes. A standby (``wait=True``) polls for the lock and leads once it is free.
    An advisory lock alone cannot stop a leader that lost its lock session but not its process (a network
    partition) from writing on its other connections, so leadership carries a *fencing token* (Kleppmann,
    "How to do distributed locking", 2016): on winning the lock the new leader increments
    ``secagg_leadership.epoch``, and every store and ledger transaction first reads the epoch ``FOR SHARE``
    (:meth:`StoreLock.fence`) and refuses to write under an epoch that is not its own. The increment waits
    for the old leader's open transactions, and every later one sees the new epoch, so the old leader's writes
    stop at the next transaction. A watchdog (:meth:`StoreLock.watch`) notices a lost lock session within a
    second and stops the process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from audits.database import Database, is_postgresql, redact
from audits.errors import StorageError
from coordinator.errors import StoreError

__all__ = ["ADVISORY_LOCK_KEY", "StoreLock"]

ADVISORY_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"secagg coordinator store lock").digest()[:8], "big", signed=True
)
"""The PostgreSQL advisory lock key (a bigint) a serving coordinator holds on its database."""

_LEADERSHIP: Final = (
    "CREATE TABLE IF NOT EXISTS secagg_leadership ("
    "id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL, pid INTEGER NOT NULL, "
    "since TIMESTAMPTZ NOT NULL DEFAULT now())"
)


class StoreLock:
    """An exclusive lock on the store: ``<path>.lock`` for SQLite, an advisory lock for PostgreSQL.

    Args:
        path: the store (a SQLite path or a PostgreSQL URL).
        wait: stand by until the lock is free instead of refusing (a standby replica).
        on_wait: called once when ``wait`` finds the lock taken (to say so in the log).
        poll: seconds between two attempts while standing by.

    Raises:
        StoreError: another process holds the lock and ``wait`` is false (its pid is in the message when known).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        wait: bool = False,
        on_wait: Callable[[], None] | None = None,
        poll: float = 0.5,
    ) -> None:
        self._fd: int | None = None
        self._conn: Any = None
        self.epoch: int | None = None
        """The fencing epoch of this leadership (PostgreSQL only)."""
        self._stop = threading.Event()
        waited = False
        while True:
            try:
                if is_postgresql(path):
                    self._lock_postgresql(str(path))
                else:
                    self._lock_file(Path(path))
                return
            except _Taken as taken:
                if not wait:
                    raise StoreError(str(taken)) from None
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(poll)

    def _lock_file(self, path: Path) -> None:
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
            raise _Taken(
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
            conn = psycopg.connect(
                url,
                autocommit=True,
                application_name="secagg coordinator lock",
                # notice a dead server or a cut network within about 10 s (libpq keepalive parameters)
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()
            raise StoreError(f"cannot lock the store {shown}: {text[0] if text else exc}") from exc
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
            if not (row and row[0]):
                conn.close()
                raise _Taken(
                    f"another coordinator is serving the store {shown}; "
                    "stop it first, give this one its own database, or make it a standby"
                )
            with conn.transaction():
                conn.execute(_LEADERSHIP)
                (epoch,) = conn.execute(
                    "INSERT INTO secagg_leadership (id, epoch, pid) VALUES (1, 1, %s) "
                    "ON CONFLICT (id) DO UPDATE SET epoch = secagg_leadership.epoch + 1, "
                    "pid = excluded.pid, since = now() RETURNING epoch",
                    (os.getpid(),),
                ).fetchone() or (None,)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot lock the store {shown}: {exc}") from exc
        self.epoch = int(epoch)
        self._conn = conn

    def fence(self, db: Database) -> None:
        """Refuse a transaction of ``db`` unless this lock's leadership is current (run first in every write).

        Raises:
            StorageError: another coordinator has taken the lead since.
        """
        if self.epoch is None or db.dialect != "postgresql":
            return
        row = db.one("SELECT epoch FROM secagg_leadership WHERE id = 1 FOR SHARE")
        if row is None or int(row[0]) != self.epoch:
            raise StorageError(
                f"this coordinator lost the lead of {db.target} (epoch {self.epoch}, now "
                f"{row[0] if row else 'none'}): another coordinator took over"
            )

    @property
    def held(self) -> bool:
        """Whether this lock is still held (a PostgreSQL lock is lost with its connection)."""
        if self._fd is not None:
            return True
        if self._conn is None or self._conn.closed or self._conn.broken:
            return False
        try:
            self._conn.execute("SELECT 1")
        except Exception:  # any failure of the session means the lock is gone
            return False
        return True

    def watch(self, on_lost: Callable[[], None], interval: float = 1.0) -> None:
        """Call ``on_lost`` (once, from a daemon thread) when the lock is found lost; PostgreSQL only."""
        if self._conn is None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                if not self.held:
                    if not self._stop.is_set():
                        on_lost()
                    return

        threading.Thread(target=run, name="store-lock-watch", daemon=True).start()

    def release(self) -> None:
        """Release the lock (idempotent); the process's exit releases it too."""
        self._stop.set()
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


class _Taken(Exception):
    """The lock is held by someone else (internal: refused, or waited on)."""
