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
