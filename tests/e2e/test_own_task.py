"""Bring your own task: ``[task] entry`` names a function returning a small CNN, its images and its settings;
``secagg silo --config silo.toml`` trains it with DP-SGD in every silo process and the federation completes
(coordinator on the real ``secagg serve`` path with the same CNN from ``[model] factory``, mTLS on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.common import RoundStatus
from coordinator.config import ServeConfig, write_demo_configs
from coordinator.server.app import start_coordinator
from dp.training import get_flat_params
from tests.coordinator.sdk.tasks import make_cnn
from tests.e2e.harness import FEDERATION, Consortium, deadlines_with

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECAGG = Path(sys.executable).parent / "secagg"
TASKS = "tests.coordinator.sdk.tasks"
# the task entry must be importable from the silo's PYTHONPATH (README), here the repository's tests package
ENV = os.environ | {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configs(consortium: Consortium, out: Path, task: str) -> tuple[Path, list[Path]]:
    return write_demo_configs(
        consortium.paths,
        out,
        rounds=1,
        clip=10.0,
        bits=20,
        min_cohort=3,
        model_factory=f"{TASKS}:make_cnn",
        task_entry=f"{TASKS}:{task}",
        listen=f"127.0.0.1:{free_port()}",
        deadlines=deadlines_with(),
    )


def silo_command(config: Path, *extra: str) -> list[str]:
    return [str(SECAGG), "silo", "--config", str(config), *extra]


def test_secagg_silo_trains_a_cnn_task_entry_point_with_dp_sgd(
    trio: Consortium, tmp_path: Path
) -> None:
    serve, silos = configs(trio, tmp_path / "fed", "make_cnn_task")
    coordinator = start_coordinator(ServeConfig.load(serve))
    try:
        procs = [
            subprocess.Popen(
                silo_command(path),
                cwd=REPO,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in silos
        ]
        outputs = [proc.communicate(timeout=240) for proc in procs]
        assert coordinator.service.wait_finished(30)
        records = coordinator.store.rounds(FEDERATION)
        start = coordinator.store.model(FEDERATION, 0)[0]
        trained = coordinator.store.model(FEDERATION, 1)[0]
    finally:
        coordinator.stop()
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        (line,) = stdout.strip().splitlines()
        assert line.startswith("round 0: completed  epsilon spent ")
        assert line.endswith("of 5 (delta 1e-05)")
    assert [r.status for r in records] == [RoundStatus.COMPLETED]
    assert np.array_equal(start, get_flat_params(make_cnn()))  # the factory's own initialisation
    assert trained.shape == start.shape and not np.array_equal(trained, start)
    # the DP-SGD budget was spent in each silo, and recorded in its own state directory
    for silo in trio.silos:
        assert (tmp_path / "fed" / "state" / silo / "accountant.json").exists()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            "make_batchnorm_task",
            f"error: [task] entry {TASKS}:make_batchnorm_task raised IncompatibleModel: layer 1 (BatchNorm2d) "
            "uses BatchNorm, which DP-SGD cannot train (it mixes the records of a "
            "batch): replace it with nn.GroupNorm(num_groups, 4), e.g. num_groups = 1; the automatic fix is not "
            "applied because it can be degenerate",
        ),
        (
            "not_a_task",
            f"error: [task] entry {TASKS}:not_a_task must return a dp.training.Task, got Sequential",
        ),
    ],
)
def test_a_task_dp_sgd_cannot_train_is_refused_in_one_line_before_connecting(
    trio: Consortium, tmp_path: Path, task: str, message: str
) -> None:
    _, silos = configs(
        trio, tmp_path / "fed", task
    )  # no coordinator runs: the task is checked first
    done = subprocess.run(
        silo_command(silos[0]),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == message
