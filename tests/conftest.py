"""Suite-wide: one passphrase file for every consortium the tests create (keys are encrypted at rest), and the
storage backends (SQLite file, real PostgreSQL server) for the parametrised store and ledger tests.

``SECAGG_PASSPHRASE_FILE`` is how an operator hands the key passphrase to ``secagg`` (coordinator.pki.custody);
setting it once here means every key a test writes or loads, in this process or in a subprocess it starts,
uses the same passphrase without a prompt. Tests of a wrong or missing passphrase override it locally.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.pki import PASSPHRASE_ENV
from tests.postgres import PostgresServer, postgres_server, skip_reason_warning

if not os.environ.get(PASSPHRASE_ENV):
    _directory = Path(tempfile.mkdtemp(prefix="secagg-tests-passphrase-"))
    atexit.register(shutil.rmtree, _directory, ignore_errors=True)
    _file = _directory / "passphrase"
    _file.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    _file.chmod(0o600)
    os.environ[PASSPHRASE_ENV] = str(_file)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster per test process (``initdb`` + ``pg_ctl``); skipped loudly if impossible."""
    server = postgres_server()
    if isinstance(server, str):
        skip_reason_warning(server)
        pytest.skip(f"PostgreSQL unavailable: {server}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store or a ledger lives: a fresh SQLite file path, or a fresh PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
