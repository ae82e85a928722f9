"""The ``secagg`` command is reachable both ways the project starts it: the console script and ``python -m``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "secagg"


@pytest.mark.parametrize(
    "argv",
    [[sys.executable, "-m", "coordinator.cli"], [str(SCRIPT)]],
    ids=["python -m coordinator.cli (how the demo starts its silos)", "console script"],
)
def test_the_command_starts(argv: list[str]) -> None:
    result = subprocess.run(
        [*argv, "silo", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_the_paillier_ceremony_command_refuses_a_threshold_the_colluders_could_defeat(
    tmp_path: Path,
) -> None:
    consortium = tmp_path / "pki"
    made = subprocess.run(
        [str(SCRIPT), "pki", "init", str(consortium), "--silos", "a,b,c"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    refused = subprocess.run(
        [str(SCRIPT), "pki", "paillier", str(consortium), "--threshold", "2", "--collusion", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error:") and "collu" in line
    assert not (consortium / "paillier.pub.json").exists()  # nothing written
