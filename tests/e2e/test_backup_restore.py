"""Backup and restore through the CLI, on both stores: ``secagg store backup`` while a real coordinator serves,
the machine is lost (SIGKILL), ``secagg store restore`` into new storage, and a coordinator started on the
restore carries on: completed rounds and models kept, the open round aborted, the next round completes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.common import RoundStatus
from coordinator.store import SQLStore
from tests.e2e.harness import FEDERATION, Consortium, ManualSilo, expected_model
from tests.e2e.test_restart import REPO, coordinator_process, sdk_round, units
from tests.e2e.test_single_coordinator import serve_command, statuses

pytestmark = pytest.mark.e2e

SECAGG = str(Path(sys.executable).parent / "secagg")


def secagg(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SECAGG, *argv], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_backup_while_serving_then_restore_on_new_storage(
    trio: Consortium, tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    command = serve_command(trio, tmp_path / "old", storage)
    backup = tmp_path / "coordinator.backup"
    with coordinator_process(command) as (proc, address):
        round0 = sdk_round(trio, address)
        with ManualSilo(trio, "a", address) as probe:
            assert probe.open_round(after=1).round == 1
        made = secagg("store", "backup", "--config", command[-1], "--out", str(backup))
        assert made.returncode == 0, made.stderr
        assert proc.poll() is None  # online: the coordinator kept serving
        proc.send_signal(signal.SIGKILL)  # the machine is lost
        proc.wait()

    if storage.startswith("postgresql://"):
        new_storage = request.getfixturevalue("postgres").new_database()
    else:
        new_storage = str(tmp_path / "new" / "state" / "coordinator.sqlite")
    new_command = serve_command(trio, tmp_path / "new", new_storage)
    restored = secagg("store", "restore", "--config", new_command[-1], "--from", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert "the ledger verified" in restored.stdout
    again = secagg("store", "restore", "--config", new_command[-1], "--from", str(backup))
    assert again.returncode == 1
    (line,) = [x for x in again.stderr.splitlines() if x.startswith("error:")]
    assert "exists" in line or "not empty" in line
    assert statuses(new_storage) == [(0, RoundStatus.COMPLETED), (1, RoundStatus.OPEN)]

    with coordinator_process(new_command) as (_, address):
        round2 = sdk_round(trio, address)
    assert [(r.round, r.status) for r in round2] == [(2, RoundStatus.COMPLETED)] * 3
    store = SQLStore(new_storage)
    try:
        records = store.rounds(FEDERATION)
        models = [store.model(FEDERATION, r)[0] for r in range(4)]
    finally:
        store.close()
    # (round 3 may have opened before the test stopped the coordinator)
    assert [r.status for r in records[:3]] == [
        RoundStatus.COMPLETED,
        RoundStatus.ABORTED,
        RoundStatus.COMPLETED,
    ]
    assert records[0].new_model_hash == round0[0].new_model_hash
    assert np.array_equal(models[3], expected_model(models[2], [units(s, 2) for s in trio.silos]))
