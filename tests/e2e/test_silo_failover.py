"""Silos that are never restarted: given both replicas' addresses they fail over by themselves when the leader is
SIGKILLed mid-round (two ``secagg serve`` on one PostgreSQL database), and they reconnect by themselves when a
single coordinator on SQLite is stopped (SIGTERM) and started again; either way the federation finishes, nothing
completed is lost and the ledger verifies (issue 17)."""

from __future__ import annotations

import logging
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from coordinator.common import RoundStatus, ledger_origin, model_hash
from coordinator.sdk.masking import RetryPolicy, RoundReport
from coordinator.store import SQLStore
from tests.e2e.harness import FEDERATION, Consortium, exact, expected_model
from tests.e2e.test_restart import LENGTH, REPO, coordinator_process, units
from tests.e2e.test_single_coordinator import serve_command
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

ROUNDS = 4  # serve_command's federation
RETRY = RetryPolicy(attempts=4, initial=0.1, maximum=0.5, reconnect_seconds=90.0)
"""Fast backoff for tests; the reconnect window outlasts a loaded machine's coordinator start-up."""

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


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def federation(
    consortium: Consortium, addresses: list[str]
) -> Iterator[tuple[threading.Event, Callable[[], dict[str, list[RoundReport]]]]]:
    """Every silo runs the whole federation in a thread (the SDK, never restarted).

    Yields ``(training, resume)``: ``training`` is set once every silo trains in round 1 (mid-round: the cohort
    is fixed and nothing is uploaded yet) and each waits there until ``resume()`` lets it go on; ``resume``
    then returns each silo's reports once its federation has finished.
    """
    arrived = threading.Barrier(len(consortium.silos) + 1)
    go = threading.Event()
    training = threading.Event()
    reports: dict[str, list[RoundReport]] = {}
    errors: list[BaseException] = []

    def silo(s: str) -> None:
        def train(ctx: object) -> object:
            round_ = ctx.round  # type: ignore[attr-defined]
            if round_ == 1:
                arrived.wait(60)
                go.wait(120)
            return exact(units(s, round_))

        try:
            with consortium.sdk(s, addresses, retry=RETRY) as client:  # type: ignore[arg-type]
                reports[s] = list(client.run(train))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)
            arrived.abort()

    threads = [threading.Thread(target=silo, args=(s,), daemon=True) for s in consortium.silos]
    for t in threads:
        t.start()

    def resume() -> dict[str, list[RoundReport]]:
        go.set()
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert all(not t.is_alive() for t in threads), "a silo did not finish"
        return reports

    def mark() -> None:
        try:
            arrived.wait(120)
        except threading.BrokenBarrierError:
            return
        training.set()

    threading.Thread(target=mark, daemon=True).start()
    try:
        yield training, resume
    finally:
        go.set()


def outcomes(reports: list[RoundReport]) -> list[tuple[int, RoundStatus]]:
    return [(r.round, r.status) for r in reports]


def check_store(storage: str, reports: dict[str, list[RoundReport]]) -> None:
    """Rounds 0, 2 and 3 completed, round 1 aborted as interrupted; every model is the exact FedAvg."""
    store = SQLStore(storage)
    try:
        records = store.rounds(FEDERATION)
        models = [store.model(FEDERATION, r)[0] for r in range(ROUNDS + 1)]
    finally:
        store.close()
    assert [(r.round, r.status) for r in records] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.ABORTED),
        (2, RoundStatus.COMPLETED),
        (3, RoundStatus.COMPLETED),
    ]
    assert "restart" in records[1].reason
    silos = sorted(reports)
    assert np.array_equal(
        models[1], expected_model(np.zeros(LENGTH, np.float32), [units(s, 0) for s in silos])
    )
    assert models[2].tobytes() == models[1].tobytes()  # the aborted round changed nothing
    for r in (2, 3):
        assert np.array_equal(
            models[r + 1], expected_model(models[r], [units(s, r) for s in silos])
        )
    for s in silos:
        done = [r for r in reports[s] if r.status is RoundStatus.COMPLETED]
        assert [r.round for r in done] == [0, 2, 3]
        assert [r.new_model_hash for r in done] == [records[r].new_model_hash for r in (0, 2, 3)]
        assert model_hash(models[4]) == done[-1].new_model_hash


def check_ledger(consortium: Consortium, secagg: str, config: str, tmp_path: Path) -> None:
    """The ledger across every coordinator run is one log, verified by the auditor's commands."""
    bundle = tmp_path / "bundle"
    keys = consortium.paths
    for args in (
        ["audit", "export", "--config", config, "--out", str(bundle)],
        [
            "audit",
            "verify",
            str(bundle),
            "--audit-key",
            str(keys.audit_public_key),
            "--consortium-key",
            str(keys.consortium_public_key),
            "--origin",
            ledger_origin(FEDERATION),
        ],
    ):
        done = subprocess.run(
            [secagg, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_silos_fail_over_to_the_standby_when_the_leader_is_killed_mid_round(
    trio: Consortium, tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="coordinator.sdk.transport")
    url = postgres.new_database()
    addresses = [free_address(), free_address()]
    leader_cmd = replica(trio, tmp_path / "leader", url)
    standby_cmd = replica(trio, tmp_path / "standby", url)
    for command, address in zip((leader_cmd, standby_cmd), addresses, strict=True):
        path = Path(command[-1])
        path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"{address}"', 1))
    with coordinator_process(leader_cmd) as (leader, leader_address):
        assert leader_address == addresses[0]
        standby = subprocess.Popen(
            standby_cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            lines = lines_of(standby)
            wait_for(lines, r"standing by: another coordinator serves postgresql://", 60)
            with federation(trio, addresses) as (training, resume):
                assert training.wait(120), "the silos never reached round 1"
                assert standby.poll() is None  # still standing by while the leader serves
                killed = time.monotonic()
                leader.send_signal(signal.SIGKILL)
                leader.wait()
                port = int(wait_for(lines, r"listening on port (\d+)", TAKEOVER_SECONDS).group(1))
                takeover = time.monotonic() - killed
                reports = resume()
            assert standby.wait(60) == 0  # the federation finished on the standby
        finally:
            standby.kill()
            standby.wait()
    assert f"127.0.0.1:{port}" == addresses[1]
    switches = {r.getMessage() for r in caplog.records if "fails over" in r.getMessage()}
    assert {f"silo {s} fails over to {addresses[1]}" in " ".join(switches) for s in trio.silos} == {
        True
    }
    assert takeover < TAKEOVER_SECONDS
    for s in trio.silos:
        assert outcomes(reports[s]) == [
            (0, RoundStatus.COMPLETED),
            (1, RoundStatus.ABORTED),
            (2, RoundStatus.COMPLETED),
            (3, RoundStatus.COMPLETED),
        ]
    check_store(url, reports)
    check_ledger(trio, leader_cmd[0], standby_cmd[-1], tmp_path)


def test_silos_reconnect_by_themselves_when_the_coordinator_restarts(
    trio: Consortium, tmp_path: Path
) -> None:
    address = free_address()
    db = tmp_path / "coordinator.sqlite"
    command = serve_command(trio, tmp_path / "serve", str(db), listen=address)
    with coordinator_process(command) as (first, served):
        assert served == address
        with federation(trio, [address]) as (training, resume):
            assert training.wait(120), "the silos never reached round 1"
            first.send_signal(signal.SIGTERM)
            first.wait(60)
            with coordinator_process(command) as (second, again):
                assert again == address
                reports = resume()
                assert second.wait(60) == 0  # the federation finished
    for s in trio.silos:
        assert outcomes(reports[s]) == [
            (0, RoundStatus.COMPLETED),
            (1, RoundStatus.ABORTED),
            (2, RoundStatus.COMPLETED),
            (3, RoundStatus.COMPLETED),
        ]
    check_store(str(db), reports)
    check_ledger(trio, command[0], command[-1], tmp_path)
