"""A real PostgreSQL server for the tests, started by the suite itself (no mock, no external service).

``initdb`` into a fresh temporary directory, ``pg_ctl start`` on a free loopback port with password (SCRAM)
authentication, one new database per test. PostgreSQL refuses to run as root, so as root the cluster belongs
to an unprivileged user (``postgres`` if it exists, else ``nobody``) through ``runuser``. Without the Debian
binaries (``scripts/system-deps.sh`` installs them) the PostgreSQL tests are skipped with a warning saying so.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

__all__ = ["PostgresServer", "find_bin_dir", "postgres_server"]

USER = "secagg"


def find_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL ``bin`` directory (or the one holding ``pg_ctl`` on ``PATH``)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if dirs:
        return Path(dirs[-1])
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throwaway cluster; :meth:`new_database` gives each test its own database."""

    bin_dir: Path
    data: Path
    port: int
    password: str
    run_as: str | None
    _names: Iterator[int] = field(default_factory=count)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def tool(self, name: str) -> str:
        """Path of one of the cluster's client programs (``pg_dump``, ``pg_restore``, ...)."""
        return str(self.bin_dir / name)

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv

    def stop(self) -> None:
        subprocess.run(
            self.as_owner([self.tool("pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate"]),
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _unprivileged_user() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def postgres_server(*, fsync: bool = False) -> PostgresServer | str:
    """Start a cluster, or return why it cannot be started (the caller skips with that reason).

    ``fsync`` off (the tests' default) trades the durability of a throwaway cluster for speed; benchmarks
    turn it on so that commits cost what they cost on a real server.
    """
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'secagg[postgresql]')"
    bin_dir = find_bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        return (
            "PostgreSQL binaries not found: run scripts/system-deps.sh (apt-get install postgresql)"
        )
    run_as = None
    if os.geteuid() == 0:
        run_as = _unprivileged_user()
        if run_as is None or shutil.which("runuser") is None:
            return "running as root without an unprivileged user and runuser: initdb refuses root"
    root = Path(tempfile.mkdtemp(prefix="secagg-pg-"))
    data = root / "data"
    password = secrets.token_hex(16)
    pwfile = root / "pw"
    pwfile.write_text(password)
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bin_dir, data, _free_port(), password, run_as)
    init = subprocess.run(
        server.as_owner(
            [
                server.tool("initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {init.stderr.strip().splitlines()[-1:]}"
    options = f"-p {server.port} -c listen_addresses=127.0.0.1 -k {root}"
    if not fsync:
        options += " -c fsync=off"
    start = subprocess.run(
        server.as_owner(
            [
                server.tool("pg_ctl"),
                "start",
                "-w",
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if start.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        return f"pg_ctl start failed: {log.strip().splitlines()[-1:]}"
    deadline = time.monotonic() + 30
    import psycopg

    while True:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                return "the PostgreSQL server did not accept connections within 30 s"
            time.sleep(0.2)
    return server


def skip_reason_warning(reason: str) -> None:
    """Say loudly (a warning in the summary) that the PostgreSQL tests did not run."""
    warnings.warn(f"PostgreSQL tests SKIPPED: {reason}", stacklevel=2)
