"""``secagg demo --store postgresql://...``: the main job, end to end (silo processes, DP-SGD, mTLS), on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audits import Ledger
from coordinator.common import RoundStatus, ledger_origin
from coordinator.store import SQLStore
from tests.e2e.test_restart import REPO
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "demo",
            "--rounds",
            "1",
            "--out",
            str(out),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_demo_runs_on_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.new_database()
    result = demo(tmp_path / "demo", "--store", url)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert postgres.password not in result.stdout + result.stderr
    assert not (tmp_path / "demo" / "coordinator.sqlite").exists()
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["rounds_completed"] == 1
    store = SQLStore(url)
    try:
        assert [(r.round, r.status) for r in store.rounds("hospitals")] == [
            (0, RoundStatus.COMPLETED)
        ]
    finally:
        store.close()
    with Ledger(url, origin=ledger_origin("hospitals")) as ledger:
        assert ledger.size > 0
    # a second demo on the same database is refused before anything starts
    again = demo(tmp_path / "again", "--store", url)
    assert again.returncode == 2
    assert "already holds a demo federation" in again.stdout
    assert postgres.password not in again.stdout


def test_the_demo_refuses_a_store_that_is_not_postgresql(tmp_path: Path) -> None:
    result = demo(tmp_path / "demo", "--store", str(tmp_path / "x.sqlite"))
    assert result.returncode == 2
    assert "--store takes a postgresql:// URL" in result.stdout
