"""``secagg serve`` as an operator runs it: round 0 waits for the cohort, and the exit code and last line say how
the federation ended (no cohort, rounds aborted, finished, already finished)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coordinator.cli import SERVE_COMPLETED, SERVE_NO_COHORT, SERVE_ROUNDS_ABORTED
from coordinator.config import write_demo_configs
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.store import SQLiteStore
from tests.e2e.harness import (
    EXACT_BITS,
    EXACT_CLIP,
    FEDERATION,
    Consortium,
    ManualSilo,
    deadlines_with,
    exact,
    in_threads,
    integer_update,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECAGG = Path(sys.executable).parent / "secagg"
LENGTH = 64


def serve_toml(consortium: Consortium, workdir: Path, *, join: float, **short: float) -> Path:
    path, _ = write_demo_configs(
        consortium.paths,
        workdir,
        rounds=1,
        clip=EXACT_CLIP,
        bits=EXACT_BITS,
        min_cohort=3,
        model_size=LENGTH,
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:1",  # the silo files are not used here
        deadlines=deadlines_with(**short).model_copy(update={"join": join}),
    )
    return path


class Serve:
    """A running ``secagg serve`` process: its address, and (once it exits) its code and output lines."""

    def __init__(self, proc: subprocess.Popen[str], address: str, lines: list[str]) -> None:
        self.proc, self.address, self.lines = proc, address, lines
        self._drain: threading.Thread | None = None

    def wait(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout)
        if self._drain is not None:
            self._drain.join(10)
        return code

    def last_line(self) -> str:
        return self.lines[-1].strip()


@contextmanager
def serving(config: Path) -> Iterator[Serve]:
    proc = subprocess.Popen(
        [str(SECAGG), "serve", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        address = ""
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"listening on port (\d+)", line)
            if match:
                address = f"127.0.0.1:{match.group(1)}"
                break
        serve = Serve(proc, address, lines)
        stdout = proc.stdout
        serve._drain = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
        serve._drain.start()
        yield serve
    finally:
        proc.kill()
        proc.wait()


def rounds_in(config: Path) -> list[object]:
    store = SQLiteStore(config.parent / "coordinator.sqlite")
    try:
        return list(store.rounds(FEDERATION))
    finally:
        store.close()


def test_serve_opens_no_round_and_exits_3_when_too_few_silos_join(
    trio: Consortium, tmp_path: Path
) -> None:
    # long enough for one silo's mTLS connection and Join on a loaded CI machine (1 s was not always)
    config = serve_toml(trio, tmp_path / "serve", join=5.0)
    with serving(config) as serve:
        assert "round 0 opens once 3 silos have joined" in "".join(serve.lines)
        with ManualSilo(trio, "a", serve.address) as silo:  # one silo joins, two never come
            silo.stub.Join(pb.JoinRequest(federation=FEDERATION, silo="a"))
        assert serve.wait() == SERVE_NO_COHORT
    assert serve.last_line() == (
        "error: no round opened: only 1 of the 3 silos round 0 needs (min_cohort) joined within the 5 s "
        "join deadline. Start the silos (`secagg silo --config ...`) and run `secagg serve` again, or raise "
        "[deadlines] join."
    )
    assert "Traceback" not in "".join(serve.lines)
    assert rounds_in(config) == []  # no round was opened, so none was aborted


def test_serve_exits_4_and_says_why_when_rounds_aborted_for_lack_of_silos(
    trio: Consortium, tmp_path: Path
) -> None:
    config = serve_toml(trio, tmp_path / "serve", join=60.0, advertise=1.0)
    with serving(config) as serve:
        for s in trio.silos:  # every silo joins, then none advertises its keys
            with ManualSilo(trio, s, serve.address) as silo:
                silo.stub.Join(pb.JoinRequest(federation=FEDERATION, silo=s))
        assert serve.wait() == SERVE_ROUNDS_ABORTED
    line = serve.last_line()
    assert line.startswith("error: 1 of 1 rounds were aborted (0 completed); last: round 0: ")
    assert "Traceback" not in "".join(serve.lines)


def test_a_finished_federation_says_so_on_restart_and_exits_0(
    trio: Consortium, tmp_path: Path
) -> None:
    config = serve_toml(trio, tmp_path / "serve", join=60.0)
    with serving(config) as serve:

        def silo(s: str) -> str:
            with trio.sdk(s, serve.address) as client:
                (report,) = client.run(lambda ctx: exact(integer_update(ord(s), LENGTH)))
                return report.status.value

        assert in_threads(*[lambda s=s: silo(s) for s in trio.silos]) == ["completed"] * 3
        assert serve.wait() == SERVE_COMPLETED
    assert serve.last_line() == f"federation {FEDERATION!r} finished: 1 rounds completed"
    again = subprocess.run(
        [str(SECAGG), "serve", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == SERVE_COMPLETED
    assert again.stderr.strip().splitlines()[-1] == (
        f"federation {FEDERATION!r} has already finished: all 1 planned rounds have run (1 completed, 0 "
        "aborted); nothing to serve. Export the model with `secagg model export`, or start a new study under "
        "a new federation id and storage file."
    )
