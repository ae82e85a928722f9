"""Two ``secagg serve`` replicas on one PostgreSQL database: one leads, the other stands by without binding its
port; SIGKILL the leader mid-round and the standby leads within seconds, records the interrupted round as
aborted, completes the next round, and the ledger stays one verifiable log."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from coordinator.common import RoundStatus, ledger_origin
from coordinator.store import SQLStore
from tests.e2e.harness import FEDERATION, Consortium, ManualSilo, expected_model
from tests.e2e.test_restart import REPO, coordinator_process, sdk_round, units
from tests.e2e.test_single_coordinator import serve_command
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

TAKEOVER_SECONDS = 15.0
"""Generous for a loaded CI machine; the takeover itself is the standby's next poll (0.5 s) plus start-up."""


def replica(consortium: Consortium, workdir: Path, url: str) -> list[str]:
    command = serve_command(consortium, workdir, url)
    path = Path(command[-1])
    doc = tomllib.loads(path.read_text())
    doc["storage"]["standby"] = True
    path.write_text(tomli_w.dumps(doc))
    return command


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return out


def wait_for(lines: queue.Queue[str], pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; saw {seen[-10:]}")


def test_the_standby_takes_over_when_the_leader_is_killed_mid_round(
    trio: Consortium, tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    leader_cmd = replica(trio, tmp_path / "leader", url)
    standby_cmd = replica(trio, tmp_path / "standby", url)
    with coordinator_process(leader_cmd) as (leader, leader_address):
        standby = subprocess.Popen(
            standby_cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            lines = lines_of(standby)
            wait_for(lines, r"standing by: another coordinator serves postgresql://", 60)
            round0 = sdk_round(trio, leader_address)
            with ManualSilo(trio, "a", leader_address) as probe:
                assert probe.open_round(after=1).round == 1  # mid-round: round 1 is open
            assert standby.poll() is None
            killed = time.monotonic()
            leader.send_signal(signal.SIGKILL)
            leader.wait()
            port = int(wait_for(lines, r"listening on port (\d+)", TAKEOVER_SECONDS).group(1))
            takeover = time.monotonic() - killed
            round2 = sdk_round(trio, f"127.0.0.1:{port}")
        finally:
            standby.kill()
            standby.wait()
    assert takeover < TAKEOVER_SECONDS
    assert [(r.round, r.status) for r in round0] == [(0, RoundStatus.COMPLETED)] * 3
    assert [(r.round, r.status) for r in round2] == [(2, RoundStatus.COMPLETED)] * 3

    store = SQLStore(url)
    try:
        records = store.rounds(FEDERATION)
        models = [store.model(FEDERATION, r)[0] for r in range(4)]
    finally:
        store.close()
    assert [(r.round, r.status) for r in records[:3]] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.ABORTED),
        (2, RoundStatus.COMPLETED),
    ]
    assert "restart" in records[1].reason
    assert records[0].new_model_hash == round0[0].new_model_hash
    assert models[2].tobytes() == models[1].tobytes()
    assert np.array_equal(models[3], expected_model(models[2], [units(s, 2) for s in trio.silos]))

    # one log across both leaders, verified against the pinned keys by the auditor's command
    bundle = tmp_path / "bundle"
    secagg = leader_cmd[0]
    exported = subprocess.run(
        [secagg, "audit", "export", "--config", standby_cmd[-1], "--out", str(bundle)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    verified = subprocess.run(
        [
            secagg,
            "audit",
            "verify",
            str(bundle),
            "--audit-key",
            str(trio.paths.audit_public_key),
            "--consortium-key",
            str(trio.paths.consortium_public_key),
            "--origin",
            ledger_origin(FEDERATION),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
