"""Dropouts over real gRPC: what only an end-to-end run shows (a silo's channel closing, a cancelled stream, a
SIGKILLed silo process) with the real SDK silos finishing the round.

Four silos, t=3, min_cohort=3: one silo may vanish. The vanishing silo is driven by hand (:class:`ManualSilo`)
and simply stops calling; the others run the real SDK in threads. The stage the silo vanishes at has a SHORT
deadline (the test waits it out); every other stage closes as soon as all answered.

The pipeline logic of dropouts (a silo missing at each of the five stages, too few survivors and the next
round, a stalled upload cut off at the deadline) is shown without a wire and without waiting, on a fake clock,
in ``tests/coordinator/rounds/``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from coordinator.common import RoundStatus
from coordinator.sdk.masking import RoundReport
from secagg import Stage
from tests.e2e.harness import (
    SHORT,
    Consortium,
    ManualSilo,
    deadlines_with,
    exact,
    expected_model,
    in_threads,
    integer_update,
    received_words,
    running_coordinator,
    settings,
    wait_until,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LENGTH = 1000
DEADLINE_OF = {
    Stage.ADVERTISE_KEYS: "advertise",
    Stage.SHARE_KEYS: "share_keys",
    Stage.MASKED_INPUT: "masked_input",
    Stage.CONSISTENCY_CHECK: "consistency",
    Stage.UNMASK: "unmask",
}
UNITS = {s: integer_update(i, LENGTH) for i, s in enumerate("abcd")}


def sdk_silo(consortium: Consortium, silo: str, address: str) -> list[RoundReport]:
    """An honest silo on the SDK, for one round with update UNITS[silo]."""
    with consortium.sdk(silo, address) as client:
        return list(client.run(lambda ctx: exact(UNITS[silo]), max_rounds=1))


# One stage over the wire; every stage (and the round's sum) is covered on a fake clock by
# tests/coordinator/rounds/test_masking_rounds.py::
# test_a_silo_that_does_not_answer_by_the_deadline_is_dropped_and_the_round_completes.
@pytest.mark.parametrize("stage", [Stage.MASKED_INPUT], ids=lambda s: f"before_{s.value}")
def test_one_silo_vanishes_and_the_round_completes(
    consortium: Consortium, tmp_path: Path, stage: Stage
) -> None:
    config = settings(n=4, deadlines=deadlines_with(**{DEADLINE_OF[stage]: SHORT}))
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        vanishing = ManualSilo(consortium, "d", coord.address)
        reports = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            lambda: vanishing.run(exact(UNITS["d"]), stop_before=stage),
        )
        (record,) = coord.rounds()
        new_model = coord.model(1)

    # A silo that vanished before uploading is not in the sum; one that vanished after uploading is (the
    # others reveal its self-mask share, DESIGN 4.1 stage 5), so its update counts.
    uploaded = stage in (Stage.CONSISTENCY_CHECK, Stage.UNMASK)
    contributors = ("a", "b", "c", "d") if uploaded else ("a", "b", "c")
    assert record.status is RoundStatus.COMPLETED
    assert record.survivors == contributors
    # "dropped" is everyone on the roster whose update is not in the sum, whenever they vanished
    assert record.dropped == (() if uploaded else ("d",))
    assert np.array_equal(
        new_model, expected_model(np.zeros(LENGTH, np.float32), [UNITS[s] for s in contributors])
    )
    for silo_reports in reports[:3]:
        assert isinstance(silo_reports, list)
        assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED]
        assert silo_reports[0].new_model_hash == record.new_model_hash


def test_upload_broken_midway_is_rolled_back(consortium: Consortium, tmp_path: Path) -> None:
    """d streams 3 of its 10 chunks, which the coordinator adds to the running sum, then cancels the stream."""
    config = settings(n=4, deadlines=deadlines_with(masked_input=SHORT))
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        breaker = ManualSilo(consortium, "d", coord.address)

        def break_upload() -> grpc.StatusCode:
            breaker.advertise()
            breaker.share_keys()
            return breaker.broken_upload(
                exact(UNITS["d"]),
                chunk_words=100,
                send=3,
                arrived=lambda: wait_until(
                    lambda: received_words(coord, "d") == 300, what="d's first chunks"
                ),
            )

        results = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"], break_upload
        )
        (record,) = coord.rounds()
        new_model = coord.model(1)
    assert results[3] == grpc.StatusCode.CANCELLED
    assert record.status is RoundStatus.COMPLETED
    assert (record.survivors, record.dropped) == (("a", "b", "c"), ("d",))
    # bit-exact: not one coordinate of d's partial upload is left in the sum
    assert np.array_equal(
        new_model, expected_model(np.zeros(LENGTH, np.float32), [UNITS[s] for s in "abc"])
    )


def _silo_process(consortium: Consortium, address: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.silo_main",
            "--pki",
            str(consortium.paths.root),
            "--silo",
            "d",
            "--address",
            address,
            "--seed",
            "3",  # UNITS["d"]
            "--length",
            str(LENGTH),
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("where", "args", "deadline"),
    [
        (
            "mid_upload",
            ("--pause-before", "consistency_check", "--upload-chunks", "2"),
            "masked_input",
        ),
        ("before_unmask", ("--pause-before", "unmask"), "unmask"),
    ],
)
def test_killed_silo_process(
    consortium: Consortium, tmp_path: Path, where: str, args: tuple[str, ...], deadline: str
) -> None:
    """SIGKILL silo d's process at a stage (mid-upload: after 2 of its 4 chunks arrived); a, b, c finish."""
    # The killed stage gets a few seconds: the process must reach it (and be killed) before its deadline.
    config = settings(n=4, deadlines=deadlines_with(**{deadline: 5.0}))
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        proc = _silo_process(consortium, coord.address, *args)
        try:

            def kill_when_paused() -> None:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line.startswith("PAUSED"), line
                if where == "mid_upload":
                    wait_until(lambda: received_words(coord, "d") == 512, what="d's chunks")
                os.kill(proc.pid, signal.SIGKILL)

            reports = in_threads(
                *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
                kill_when_paused,
            )
        finally:
            proc.kill()
            proc.wait()
        (record,) = coord.rounds()
        new_model = coord.model(1)
    assert proc.returncode == -signal.SIGKILL
    contributors = ("a", "b", "c") if where == "mid_upload" else ("a", "b", "c", "d")
    assert record.status is RoundStatus.COMPLETED
    assert record.survivors == contributors
    assert np.array_equal(
        new_model, expected_model(np.zeros(LENGTH, np.float32), [UNITS[s] for s in contributors])
    )
    assert all(isinstance(r, list) and r[0].status is RoundStatus.COMPLETED for r in reports[:3])
