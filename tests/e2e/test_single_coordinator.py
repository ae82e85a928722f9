"""Never two coordinators, on either store: a second ``secagg serve`` on the same store (SQLite file or PostgreSQL
database), or on the same port, refuses to start with a one-line error, and the running coordinator's round goes
on untouched (issue 17). Also: real rounds over gRPC with mTLS on PostgreSQL, through a SIGKILL and a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audits import Ledger
from coordinator.common import RoundStatus, ledger_origin, model_hash
from coordinator.config import write_demo_configs
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.store import SQLStore
from tests.e2e.harness import (
    EXACT_BITS,
    EXACT_CLIP,
    FEDERATION,
    Consortium,
    ManualSilo,
    deadlines_with,
    expected_model,
    wait_until,
)
from tests.e2e.test_restart import LENGTH, REPO, coordinator_process, sdk_round, units

pytestmark = pytest.mark.e2e


def serve_command(
    consortium: Consortium, workdir: Path, storage: str, *, listen: str = "127.0.0.1:0"
) -> list[str]:
    """``secagg serve`` on a configuration whose ``[storage] url`` is ``storage``."""
    serve_toml, _ = write_demo_configs(
        consortium.paths,
        workdir,
        rounds=4,
        clip=EXACT_CLIP,
        bits=EXACT_BITS,
        threshold=2,
        min_cohort=3,
        model_size=LENGTH,
        listen=listen,
        coordinator="127.0.0.1:1",  # the silo files are not used here
        deadlines=deadlines_with(),
        storage=storage,
    )
    return [str(Path(sys.executable).parent / "secagg"), "serve", "--config", str(serve_toml)]


def second_serve(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def statuses(storage: str) -> list[tuple[int, RoundStatus]]:
    store = SQLStore(storage)
    try:
        return [(r.round, r.status) for r in store.rounds(FEDERATION)]
    finally:
        store.close()


def test_a_second_coordinator_on_the_same_store_is_refused_and_the_first_goes_on(
    trio: Consortium, tmp_path: Path, storage: str
) -> None:
    command = serve_command(trio, tmp_path, storage)
    with coordinator_process(command) as (first, address):
        for silo in trio.silos:  # round 0 opens once min_cohort silos have joined
            with ManualSilo(trio, silo, address) as joining:
                joining.stub.Join(pb.JoinRequest(federation=FEDERATION, silo=silo))
        wait_until(lambda: statuses(storage) == [(0, RoundStatus.OPEN)], what="round 0 to open")
        second = second_serve(command)
        assert second.returncode != 0
        (message,) = error_lines(second)
        assert "another coordinator" in message
        if storage.startswith("postgresql://"):
            assert "postgresql://" in message and storage not in message  # password redacted
        else:
            assert storage in message and f"pid {first.pid}" in message
        assert "Traceback" not in second.stderr
        # the refused coordinator touched nothing: round 0 is still open, not "interrupted by a restart"
        assert statuses(storage) == [(0, RoundStatus.OPEN)]
        reports = sdk_round(trio, address)
        assert first.poll() is None
    assert [(r.round, r.status) for r in reports] == [(0, RoundStatus.COMPLETED)] * 3
    assert statuses(storage)[0] == (0, RoundStatus.COMPLETED)


def test_a_second_coordinator_on_the_same_port_is_refused(trio: Consortium, tmp_path: Path) -> None:
    command = serve_command(trio, tmp_path / "first", str(tmp_path / "first.sqlite"))
    with coordinator_process(command) as (first, address):
        port = int(address.rsplit(":", 1)[1])
        other = serve_command(
            trio, tmp_path / "second", str(tmp_path / "second.sqlite"), listen=f"127.0.0.1:{port}"
        )
        second = second_serve(other)
        assert second.returncode != 0
        (message,) = error_lines(second)
        assert f"cannot bind 127.0.0.1:{port}" in message
        assert "Traceback" not in second.stderr
        reports = sdk_round(trio, address)
        assert first.poll() is None
    assert [r.status for r in reports] == [RoundStatus.COMPLETED] * 3


def test_rounds_on_postgresql_survive_a_sigkill_and_a_restart(
    trio: Consortium, tmp_path: Path, postgres: object
) -> None:
    from tests.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    url = postgres.new_database()
    command = serve_command(trio, tmp_path, url)
    with coordinator_process(command) as (proc, address):
        round0 = sdk_round(trio, address)
        with ManualSilo(trio, "a", address) as probe:
            assert probe.open_round(after=1).round == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert statuses(url) == [(0, RoundStatus.COMPLETED), (1, RoundStatus.OPEN)]
    with coordinator_process(command) as (proc, address):  # the kill released the advisory lock
        round2 = sdk_round(trio, address)
    assert [(r.round, r.status) for r in round2] == [(2, RoundStatus.COMPLETED)] * 3

    store = SQLStore(url)
    try:
        records = store.rounds(FEDERATION)
        models = [store.model(FEDERATION, r)[0] for r in range(4)]
    finally:
        store.close()
    # (round 3 may have opened before the test stopped the coordinator)
    assert [(r.round, r.status) for r in records[:3]] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.ABORTED),
        (2, RoundStatus.COMPLETED),
    ]
    assert "restart" in records[1].reason
    zeros = np.zeros(LENGTH, np.float32)
    assert np.array_equal(models[1], expected_model(zeros, [units(s, 0) for s in trio.silos]))
    assert models[2].tobytes() == models[1].tobytes()  # the aborted round changed nothing
    assert np.array_equal(models[3], expected_model(models[2], [units(s, 2) for s in trio.silos]))
    assert records[2].new_model_hash == round2[0].new_model_hash == model_hash(models[3])
    assert round0[0].new_model_hash == records[0].new_model_hash
    # the ledger in the same PostgreSQL database is one log, checkpointed at least up to round 2's close
    # (entries of a round 3 that opened before the test stopped the coordinator may follow the checkpoint)
    with Ledger(url, origin=ledger_origin(FEDERATION)) as ledger:
        checkpoint = ledger.latest_checkpoint()
        assert checkpoint is not None and checkpoint.size <= ledger.size
        closed = [e.index for e in ledger.decoded() if e.event.round == 2]
        assert closed and checkpoint.size > max(closed)
        assert ledger.size > 0
