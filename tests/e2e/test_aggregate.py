"""The aggregate over real mTLS gRPC is the exact sum, and FedAvg through the coordinator actually learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.common import RoundStatus, model_hash
from coordinator.sdk.masking import RoundContext, RoundReport
from tests.e2e.harness import (
    SCALE,
    Consortium,
    exact,
    expected_model,
    in_threads,
    integer_update,
    running_coordinator,
    settings,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_threads_two_rounds_aggregate_is_the_exact_sum(
    consortium: Consortium, tmp_path: Path
) -> None:
    length, silos = 1000, consortium.silos
    units = {
        (s, r): integer_update(10 * r + i, length) for r in range(2) for i, s in enumerate(silos)
    }
    with running_coordinator(consortium, tmp_path / "c.db", settings(n=4, rounds=2)) as coord:

        def silo(s: str) -> object:
            def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                assert ctx.weights.shape == (length,)
                return exact(units[s, ctx.round])

            with consortium.sdk(s, coord.address) as client:
                return list(client.run(train))

        reports = in_threads(*[lambda s=s: silo(s) for s in silos])
        records = coord.rounds()
        models = [coord.model(r) for r in range(3)]

    assert [r.status for r in records] == [RoundStatus.COMPLETED] * 2
    for r in range(2):
        assert records[r].survivors == tuple(silos) and records[r].dropped == ()
        round_units = [units[s, r] for s in silos]
        assert np.array_equal(models[r + 1], expected_model(models[r], round_units))
        assert records[r].new_model_hash == model_hash(models[r + 1])
    # Round 0 starts from zeros and n=4 is a power of two, so the float32 model holds the integer sum exactly.
    total_round0 = np.sum([units[s, 0] for s in silos], axis=0)
    assert np.array_equal(models[1].astype(np.float64) * SCALE * len(silos), total_round0)
    for silo_reports in reports:
        assert isinstance(silo_reports, list)
        assert [rep.status for rep in silo_reports] == [RoundStatus.COMPLETED] * 2
        assert [rep.new_model_hash for rep in silo_reports] == [
            records[0].new_model_hash,
            records[1].new_model_hash,
        ]


def test_stochastic_rounding_stays_within_the_quantization_bound(
    trio: Consortium, tmp_path: Path
) -> None:
    """Arbitrary float updates: each coordinate of the mean is off by less than one quantization step."""
    length = 2000
    updates = {
        s: np.random.default_rng(i).normal(0, 0.05, length) for i, s in enumerate(trio.silos)
    }
    start = np.random.default_rng(99).normal(0, 1, length).astype(np.float32)
    config = settings(n=3, rounds=1, length=length, threshold=2, min_cohort=3, clip=10.0, bits=16)
    with running_coordinator(trio, tmp_path / "c.db", config, initial_model=start) as coord:

        def silo(s: str) -> object:
            with trio.sdk(s, coord.address) as client:
                return list(client.run(lambda ctx: updates[s]))

        in_threads(*[lambda s=s: silo(s) for s in trio.silos])
        new = coord.model(1)
    scale = ((1 << 15) - 1) / 10.0
    mean = np.mean(np.stack(list(updates.values())), axis=0)
    error = np.abs(new.astype(np.float64) - (start.astype(np.float64) + mean))
    # < 1/scale from rounding (each silo's error is < one step, and the mean of three such is too),
    # plus float32 rounding of the stored model
    assert error.max() < 1 / scale + np.spacing(np.abs(new).max())
    assert error.max() > 0  # the updates were not representable: rounding really happened


def test_silos_as_separate_processes(trio: Consortium, tmp_path: Path) -> None:
    """Three silo processes (the SDK in a script) and one in-process coordinator: exact sum, two rounds."""
    length = 1500
    config = settings(n=3, rounds=2, length=length, threshold=2, min_cohort=3)
    with running_coordinator(trio, tmp_path / "c.db", config) as coord:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.e2e.silo_main",
                    "--pki",
                    str(trio.paths.root),
                    "--silo",
                    s,
                    "--address",
                    coord.address,
                    "--seed",
                    str(100 * i),
                    "--length",
                    str(length),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, s in enumerate(trio.silos)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
        records = coord.rounds()
        models = [coord.model(r) for r in range(3)]
    assert [r.status for r in records] == [RoundStatus.COMPLETED] * 2
    for r in range(2):
        round_units = [integer_update(100 * i + r, length) for i in range(3)]
        assert np.array_equal(models[r + 1], expected_model(models[r], round_units))
    for out, _ in outputs:
        reports = [json.loads(line) for line in out.splitlines()]
        assert [rep["status"] for rep in reports] == ["completed", "completed"]
        assert [rep["new_model_hash"] for rep in reports] == [
            rec.new_model_hash.hex() for rec in records
        ]


def _logistic_data() -> tuple[npt.NDArray[np.float64], ...]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.float64), test_size=0.25, random_state=0, stratify=y
    )
    mu, sigma = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_test = (x_train - mu) / sigma, (x_test - mu) / sigma
    bias = np.ones((x_train.shape[0], 1)), np.ones((x_test.shape[0], 1))
    return np.hstack([x_train, bias[0]]), np.hstack([x_test, bias[1]]), y_train, y_test


def _gradient_descent(
    w: npt.NDArray[np.float64], x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], steps: int
) -> npt.NDArray[np.float64]:
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        w = w - 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * w)
    return w


def _accuracy(
    w: npt.NDArray[np.float64], x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
) -> float:
    return float(np.mean(((x @ w) > 0) == (y > 0.5)))


def test_fedavg_logistic_regression_reaches_central_accuracy(
    trio: Consortium, tmp_path: Path
) -> None:
    """Breast-cancer data split non-IID (sorted by label) over three silos; numpy training in the silos."""
    x_train, x_test, y_train, y_test = _logistic_data()
    order = np.argsort(
        y_train, kind="stable"
    )  # non-IID: silo a is mostly malignant, c mostly benign
    shards = np.array_split(order, 3)
    dim, rounds = x_train.shape[1], 8
    central = _gradient_descent(np.zeros(dim), x_train, y_train, steps=rounds * 5)
    config = settings(n=3, rounds=rounds, length=dim, threshold=2, min_cohort=3, clip=20.0, bits=20)
    with running_coordinator(trio, tmp_path / "c.db", config) as coord:

        def silo(i: int, s: str) -> object:
            xs, ys = x_train[shards[i]], y_train[shards[i]]

            def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                w = ctx.weights.astype(np.float64)
                return _gradient_descent(w, xs, ys, steps=5) - w

            with trio.sdk(s, coord.address) as client:
                return list(client.run(train))

        in_threads(*[lambda i=i, s=s: silo(i, s) for i, s in enumerate(trio.silos)])
        records = coord.rounds()
        federated = coord.model(rounds).astype(np.float64)
    assert [r.status for r in records] == [RoundStatus.COMPLETED] * rounds
    local_only = [
        _accuracy(
            _gradient_descent(np.zeros(dim), x_train[s], y_train[s], steps=rounds * 5),
            x_test,
            y_test,
        )
        for s in shards
    ]
    central_acc, federated_acc = (
        _accuracy(central, x_test, y_test),
        _accuracy(federated, x_test, y_test),
    )
    assert central_acc >= 0.94
    assert federated_acc >= 0.94
    assert federated_acc >= central_acc - 0.02
    assert (
        federated_acc >= min(local_only) + 0.05
    )  # the federation helps the silo with the skewed shard


def test_sdk_works_under_the_smallest_accepted_message_limit(
    trio: Consortium, tmp_path: Path
) -> None:
    length = 20_000  # 80 KB of float32: more than one 64 KiB message
    units = {s: integer_update(70 + i, length) for i, s in enumerate(trio.silos)}
    config = settings(n=3, length=length, threshold=2, min_cohort=3)
    with running_coordinator(trio, tmp_path / "c.db", config, max_message_bytes=64 * 1024) as coord:

        def silo(s: str) -> list[RoundReport]:
            with trio.sdk(s, coord.address) as client:
                return list(client.run(lambda ctx: exact(units[s]), max_rounds=1))

        reports = in_threads(*[lambda s=s: silo(s) for s in trio.silos])
        new_model = coord.model(1)
    assert all(r[0].status is RoundStatus.COMPLETED for r in reports)
    assert np.array_equal(
        new_model, expected_model(np.zeros(length, np.float32), list(units.values()))
    )
