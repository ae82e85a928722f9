"""Backup and restore of a coordinator's database (rounds, models and the audit ledger, all in one database).

SQLite: SQLite's online backup API (``sqlite3.Connection.backup``), which copies a consistent snapshot page by
page while the coordinator keeps writing (https://www.sqlite.org/backup.html), so a backup needs no downtime.
PostgreSQL: ``pg_dump --format=custom`` (one consistent snapshot, also online) and ``pg_restore
--single-transaction --exit-on-error`` into an empty database. The password of a URL is passed to the tools in
``PGPASSWORD``, never on their command line, where any local user could read it (``ps``).

A restore never overwrites: its target must be empty (a new SQLite file, a database without tables) and not in
use by a coordinator (the store lock is taken for the restore). The restored database is opened once as a store
and as a ledger before the restore returns, so its schema version is checked and every ledger entry's hash
recomputed: a damaged backup fails here, not at the coordinator's next start.

Restoring a backup older than the last round rolls the ledger back; every silo that witnessed a later
checkpoint then refuses the coordinator's log (fork detection, DESIGN 7). That is the ledger doing its job:
restore the latest backup, and keep backups at least as often as rounds complete.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from audits.database import Database, is_postgresql, redact
from audits.errors import StorageError
from coordinator.errors import StoreError
from coordinator.store.lock import StoreLock
from coordinator.store.sql import SQLStore

__all__ = ["backup_store", "restore_store"]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StoreError(
            f"{name} not found: install the PostgreSQL client tools (Debian: apt-get install postgresql-client)"
        )
    return found


def _split_password(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that carries the password instead."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password is None:
        return url, env
    env["PGPASSWORD"] = parts.password
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)), env


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise StoreError(f"{what} failed: {lines[-1] if lines else f'exit {result.returncode}'}")


def backup_store(target: str | Path, out: Path) -> None:
    """Write a consistent backup of the database ``target`` into the new file ``out`` (online: no downtime).

    Raises:
        StoreError: ``out`` exists, or the backup failed (nothing is left at ``out`` then).
    """
    if out.exists():
        raise StoreError(f"{out} exists; a backup is written to a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if is_postgresql(target):
            url, env = _split_password(str(target))
            _run(
                [
                    _tool("pg_dump"),
                    "--format=custom",
                    "--no-owner",
                    # who leads is not data: a restored database starts a new leadership
                    "--exclude-table=secagg_leadership",
                    f"--file={out}",
                    f"--dbname={url}",
                ],
                env,
                f"pg_dump of {redact(target)}",
            )
            return
        if not Path(target).exists():
            raise StoreError(f"no store at {target}")
        source = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        copy = sqlite3.connect(out)
        try:
            source.backup(copy)
        except sqlite3.Error as exc:
            raise StoreError(f"backup of {target} failed: {exc}") from exc
        finally:
            copy.close()
            source.close()
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def restore_store(backup: Path, target: str | Path) -> None:
    """Restore ``backup`` into the empty database ``target`` and check it opens (schema version, ledger hashes).

    Raises:
        StoreError: the backup is missing or damaged, the target is not empty or is being served.
    """
    if not backup.is_file():
        raise StoreError(f"no backup at {backup}")
    if not is_postgresql(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    with StoreLock(target):
        if is_postgresql(target):
            _restore_postgresql(backup, str(target))
            _check(target)
            return
        _restore_sqlite(backup, Path(target))
        try:
            _check(target)
        except BaseException:
            Path(target).unlink(
                missing_ok=True
            )  # the target was new: leave nothing half-usable behind
            raise


def _restore_sqlite(backup: Path, target: Path) -> None:
    if target.exists() and target.stat().st_size > 0:
        raise StoreError(f"{target} exists; restore into a new file, then point [storage] at it")
    try:
        source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            if source.execute("PRAGMA integrity_check").fetchone() != ("ok",):
                raise StoreError(f"{backup} is damaged (SQLite integrity check failed)")
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise StoreError(f"{backup} is not a SQLite store backup: {exc}") from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _restore_postgresql(backup: Path, url: str) -> None:
    try:
        db = Database(url)
    except StorageError as exc:
        raise StoreError(str(exc)) from exc
    try:
        tables = db.one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'secagg_leadership'"  # the restore's own store lock creates it
        )
    finally:
        db.close()
    if tables and tables[0]:
        raise StoreError(f"{redact(url)} is not empty; restore into a new database")
    plain, env = _split_password(url)
    _run(
        [
            _tool("pg_restore"),
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={plain}",
            str(backup),
        ],
        env,
        f"pg_restore into {redact(url)}",
    )


def _check(target: str | Path) -> None:
    from audits import Ledger, LedgerError

    store = SQLStore(target)
    store.close()
    db = Database(target)
    try:
        row = (
            db.one("SELECT value FROM meta WHERE key = 'origin'") if db.has_table("meta") else None
        )
    finally:
        db.close()
    if row is None:
        return  # a store whose federation never started has no ledger yet
    try:
        Ledger(target, origin=str(row[0])).close()
    except LedgerError as exc:
        raise StoreError(f"the restored ledger does not verify: {exc}") from exc
