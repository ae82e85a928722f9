"""The model out: every SDK report carries the new global model, ``Silo.final_model()`` returns the last one,
``secagg model export`` writes it, and ``dp.training.set_flat_params`` loads it back into the torch module the
coordinator's ``[model] factory`` made (real ``secagg serve`` path, mTLS on loopback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.common import RoundStatus, model_hash
from coordinator.config import ServeConfig, write_demo_configs
from coordinator.sdk import RoundReport
from coordinator.server.app import start_coordinator
from dp.training import get_flat_params, set_flat_params
from tests.coordinator.server.factories import small_cnn
from tests.e2e.harness import (
    EXACT_BITS,
    EXACT_CLIP,
    FEDERATION,
    Consortium,
    deadlines_with,
    exact,
    expected_model,
    in_threads,
    integer_update,
)

pytestmark = pytest.mark.e2e

SECAGG = Path(sys.executable).parent / "secagg"
ROUNDS = 2


def export(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECAGG), "model", "export", "--config", str(config), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_export_equals_the_last_global_model_every_report_and_final_model(
    trio: Consortium, tmp_path: Path
) -> None:
    config, _ = write_demo_configs(
        trio.paths,
        tmp_path / "serve",
        rounds=ROUNDS,
        clip=EXACT_CLIP,
        bits=EXACT_BITS,
        min_cohort=3,
        model_factory="tests.coordinator.server.factories:small_cnn",
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:1",
        deadlines=deadlines_with(),
    )
    start = get_flat_params(small_cnn())
    length = start.size

    def units(silo: str, round_: int) -> np.ndarray:
        return integer_update(10 * round_ + ord(silo), length)

    coordinator = start_coordinator(ServeConfig.load(config))
    address = f"127.0.0.1:{coordinator.port}"
    try:

        def silo(s: str) -> tuple[list[RoundReport], np.ndarray]:
            with trio.sdk(s, address) as client:
                reports = list(client.run(lambda ctx: exact(units(s, ctx.round))))
                return reports, client.final_model()

        results = in_threads(*[lambda s=s: silo(s) for s in trio.silos])
        store_models = [coordinator.store.model(FEDERATION, r)[0] for r in range(ROUNDS + 1)]
        with trio.sdk("a", address) as fresh:  # a client that ran no round asks the coordinator
            asked = fresh.final_model()
    finally:
        coordinator.stop()
    assert np.array_equal(store_models[0], start)  # round 0 started from PyTorch's initialisation
    model = start
    for r in range(ROUNDS):
        model = expected_model(model, [units(s, r) for s in trio.silos])
        assert np.array_equal(store_models[r + 1], model)
    for reports, final in results:
        assert [r.status for r in reports] == [RoundStatus.COMPLETED] * ROUNDS
        for r, report in enumerate(reports):
            assert report.new_model is not None
            assert np.array_equal(report.new_model, store_models[r + 1])
            assert model_hash(report.new_model) == report.new_model_hash
        assert np.array_equal(final, store_models[-1])
    assert np.array_equal(asked, store_models[-1])

    out = tmp_path / "model.npy"
    done = export(config, out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"global model of round {ROUNDS - 1} ({length} parameters, sha256 "
        f"{model_hash(store_models[-1]).hex()}) written to {out}"
    )
    exported = np.load(out, allow_pickle=False)
    assert exported.dtype == np.float32 and np.array_equal(exported, store_models[-1])
    module = small_cnn()
    set_flat_params(
        module, exported
    )  # the helper that loads a flat vector back into the torch module
    assert np.array_equal(get_flat_params(module), store_models[-1])

    first = tmp_path / "round0.npy"
    assert export(config, first, "--round", "0").returncode == 0
    assert np.array_equal(np.load(first), store_models[1])

    again = export(config, out)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {out} already exists: refusing to overwrite it"
    beyond = export(config, tmp_path / "x.npy", "--round", "7")
    assert beyond.returncode == 1
    assert beyond.stderr.strip() == (
        f"error: round 7 of federation {FEDERATION!r} has not run (rounds 0 to {ROUNDS - 1} have)"
    )
    assert not (tmp_path / "x.npy").exists()


def test_export_before_any_round_completed_says_so(trio: Consortium, tmp_path: Path) -> None:
    config, _ = write_demo_configs(
        trio.paths,
        tmp_path / "serve",
        rounds=1,
        model_size=8,
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:1",
    )
    missing = export(config, tmp_path / "m.npy")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("error: no store at ")
    coordinator = start_coordinator(ServeConfig.load(config))  # nobody joins: no round opens
    coordinator.stop()
    empty = export(config, tmp_path / "m.npy")
    assert empty.returncode == 1
    assert empty.stderr.strip() == (
        f"error: no round of federation {FEDERATION!r} has completed yet (0 opened): there is no "
        "trained model to export"
    )
