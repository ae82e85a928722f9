"""Never two coordinators: a second ``secagg serve`` on the same store, or on the same port, refuses to start with
a one-line error, and the running coordinator's round goes on untouched (issue 17)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coordinator.common import RoundStatus
from coordinator.config import write_demo_configs
from tests.e2e.harness import EXACT_BITS, EXACT_CLIP, Consortium, deadlines_with
from tests.e2e.test_restart import (
    REPO,
    coordinator_command,
    coordinator_process,
    sdk_round,
    snapshot,
)

pytestmark = pytest.mark.e2e


def second_serve(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_a_second_coordinator_on_the_same_store_is_refused_and_the_first_goes_on(
    trio: Consortium, tmp_path: Path
) -> None:
    command, db = coordinator_command("secagg_serve", trio, tmp_path)
    with coordinator_process(command) as (first, address):
        second = second_serve(command)
        assert second.returncode != 0
        (message,) = error_lines(second)
        assert "another coordinator" in message and str(db) in message
        assert f"pid {first.pid}" in message
        assert "Traceback" not in second.stderr
        # the refused coordinator touched nothing: round 0 is still open, not "interrupted by a restart"
        records, _ = snapshot(db)
        assert [(r.round, r.status) for r in records] == [(0, RoundStatus.OPEN)]
        reports = sdk_round(trio, address)
        assert first.poll() is None
    assert [(r.round, r.status) for r in reports] == [(0, RoundStatus.COMPLETED)] * 3
    records, _ = snapshot(db)
    assert records[0].status is RoundStatus.COMPLETED
    assert all("restart" not in r.reason for r in records)


def test_a_second_coordinator_on_the_same_port_is_refused(trio: Consortium, tmp_path: Path) -> None:
    command, _ = coordinator_command("secagg_serve", trio, tmp_path / "first")
    with coordinator_process(command) as (first, address):
        port = int(address.rsplit(":", 1)[1])
        other, _ = write_demo_configs(
            trio.paths,
            tmp_path / "second",
            rounds=1,
            clip=EXACT_CLIP,
            bits=EXACT_BITS,
            threshold=2,
            min_cohort=3,
            model_size=10,
            listen=f"127.0.0.1:{port}",
            coordinator="127.0.0.1:1",
            deadlines=deadlines_with(),
        )
        second = second_serve([command[0], "serve", "--config", str(other)])
        assert second.returncode != 0
        (message,) = error_lines(second)
        assert f"cannot bind 127.0.0.1:{port}" in message
        assert "Traceback" not in second.stderr
        reports = sdk_round(trio, address)
        assert first.poll() is None
    assert [r.status for r in reports] == [RoundStatus.COMPLETED] * 3
