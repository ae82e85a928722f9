"""Coordinator restarts: SIGKILL the coordinator process between rounds and mid-round, restart it on the same
SQLite file, and check that nothing completed is lost, interrupted rounds are aborted, and training goes on."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from coordinator.common import RoundStatus, model_hash
from coordinator.config import write_demo_configs
from coordinator.sdk.masking import RoundReport
from coordinator.store import RoundRecord, SQLiteStore
from secagg import Stage
from tests.e2e.harness import (
    EXACT_BITS,
    EXACT_CLIP,
    FEDERATION,
    Consortium,
    IntVector,
    ManualSilo,
    deadlines_with,
    exact,
    expected_model,
    in_threads,
    integer_update,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LENGTH, ROUNDS = 1000, 4


def units(silo: str, round_: int) -> IntVector:
    return integer_update(100 * round_ + ord(silo), LENGTH)


LAUNCHERS = ("launcher", "secagg_serve")


def coordinator_command(kind: str, consortium: Consortium, workdir: Path) -> tuple[list[str], Path]:
    """The command that starts a coordinator of kind ``kind``, and the SQLite file it uses.

    ``launcher`` is this directory's ``coordinator_main``; ``secagg_serve`` is the real CLI with a TOML file
    written by :func:`coordinator.config.write_demo_configs` (same rounds, threshold and quantization).
    """
    if kind == "launcher":
        db = workdir / "coordinator.sqlite"
        return [
            sys.executable,
            "-m",
            "tests.e2e.coordinator_main",
            "--pki",
            str(consortium.paths.root),
            "--db",
            str(db),
            "--rounds",
            str(ROUNDS),
            "--length",
            str(LENGTH),
            "--threshold",
            "2",
            "--min-cohort",
            "3",
        ], db
    serve_toml, _ = write_demo_configs(
        consortium.paths,
        workdir / "serve",
        rounds=ROUNDS,
        clip=EXACT_CLIP,
        bits=EXACT_BITS,
        threshold=2,
        min_cohort=3,
        model_size=LENGTH,
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:1",  # the silo files are not used here
        deadlines=deadlines_with(),
    )
    secagg = Path(sys.executable).parent / "secagg"
    return [
        str(secagg),
        "serve",
        "--config",
        str(serve_toml),
    ], serve_toml.parent / "coordinator.sqlite"


@contextmanager
def coordinator_process(command: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a coordinator process and yield it with its address; SIGKILL it on exit if still alive.

    Both kinds announce their port: the launcher as ``PORT <n>`` on stdout, ``secagg serve`` as
    ``... listening on port <n>`` on stderr (between log lines).
    """
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            match = re.search(r"^PORT (\d+)$|listening on port (\d+)", line.strip())
            if match:
                port = int(match.group(1) or match.group(2))
                break
        assert port is not None, f"the coordinator exited with {proc.wait()} before serving"
        # keep draining its output so a chatty coordinator never blocks on a full pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield proc, f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def sdk_round(consortium: Consortium, address: str) -> list[RoundReport]:
    """Every silo takes part in one round with the SDK; returns one report per silo."""

    def silo(s: str) -> RoundReport:
        with consortium.sdk(s, address) as client:
            (report,) = client.run(lambda ctx: exact(units(s, ctx.round)), max_rounds=1)
            return report

    return in_threads(*[lambda s=s: silo(s) for s in consortium.silos])


def snapshot(db: Path) -> tuple[list[RoundRecord], list[bytes]]:
    """Rounds and the bytes of every stored model, read from the file with a fresh connection."""
    store = SQLiteStore(db)
    try:
        records = store.rounds(FEDERATION)
        finished = [r for r in records if r.status is not RoundStatus.OPEN]
        models = [store.model(FEDERATION, r)[0].tobytes() for r in range(len(finished) + 1)]
        return records, models
    finally:
        store.close()


@pytest.mark.parametrize("kind", LAUNCHERS)
def test_sigkill_between_rounds_and_mid_round_then_restart(
    trio: Consortium, tmp_path: Path, kind: str
) -> None:
    command, db = coordinator_command(kind, trio, tmp_path)

    # Run 1: round 0 completes; the coordinator opens round 1 at once and is killed before anyone joins it.
    with coordinator_process(command) as (proc, address):
        round0 = sdk_round(trio, address)
        with ManualSilo(trio, "a", address) as probe:
            assert probe.open_round(after=1).round == 1  # round 1 is open and untouched
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert {r.status for r in round0} == {RoundStatus.COMPLETED}
    records, models = snapshot(db)
    assert [(r.round, r.status) for r in records] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.OPEN),
    ]
    after_round0 = models[1]
    assert model_hash(np.frombuffer(after_round0, np.float32)) == round0[0].new_model_hash

    # Run 2: the restart aborts round 1 and opens round 2; the silos get as far as uploading their masked
    # inputs (the coordinator holds the masked sum in memory only) and the coordinator is killed.
    with coordinator_process(command) as (proc, address):
        silos = [ManualSilo(trio, s, address) for s in trio.silos]
        in_threads(
            *[
                lambda m=m: m.run(
                    exact(units(m.silo, 2)), stop_before=Stage.CONSISTENCY_CHECK, after=2
                )
                for m in silos
            ]
        )
        assert {m.round for m in silos} == {2}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    records, models = snapshot(db)
    assert [(r.round, r.status) for r in records] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.ABORTED),
        (2, RoundStatus.OPEN),
    ]

    # Run 3: round 2 is aborted in turn, and round 3 (the last planned) completes from the round-0 model.
    with coordinator_process(command) as (proc, address):
        round3 = sdk_round(trio, address)
    assert [(r.round, r.status) for r in round3] == [(3, RoundStatus.COMPLETED)] * 3

    store = SQLiteStore(db)
    try:
        records3 = store.rounds(FEDERATION)
        stored = [store.model(FEDERATION, r)[0] for r in range(5)]
    finally:
        store.close()
    assert [(r.round, r.status) for r in records3] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.ABORTED),
        (2, RoundStatus.ABORTED),
        (3, RoundStatus.COMPLETED),
    ]
    assert records3[0] == records[0]  # the completed round is exactly as it was before both kills
    for aborted in records3[1:3]:
        assert "restart" in aborted.reason
        assert aborted.new_model_hash == b""
    # nothing completed is lost: the round-0 model survives both kills, and aborted rounds changed nothing
    assert stored[1].tobytes() == after_round0
    assert stored[2].tobytes() == stored[3].tobytes() == after_round0
    assert np.array_equal(stored[4], expected_model(stored[3], [units(s, 3) for s in trio.silos]))
    assert records3[3].new_model_hash == round3[0].new_model_hash == model_hash(stored[4])
    assert np.array_equal(
        stored[1], expected_model(np.zeros(LENGTH, np.float32), [units(s, 0) for s in trio.silos])
    )
