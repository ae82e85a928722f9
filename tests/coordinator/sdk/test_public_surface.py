"""The SDK's public surface: sorted ``__all__`` lists, and a silo that never loads the coordinator's server side."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

SERVER_SIDE = ("coordinator.server", "coordinator.rounds", "coordinator.store")


@pytest.mark.parametrize(
    "module",
    [
        "coordinator.sdk",
        "coordinator.sdk.loop",
        "coordinator.sdk.masking",
        "coordinator.sdk.paillier",
        "coordinator.sdk.silo_dp",
        "coordinator.sdk.transport",
    ],
)
def test_all_is_sorted_and_every_name_exists(module: str) -> None:
    loaded = importlib.import_module(module)
    assert list(loaded.__all__) == sorted(loaded.__all__)
    assert all(hasattr(loaded, name) for name in loaded.__all__)


@pytest.mark.parametrize("module", ["coordinator.sdk", "coordinator.sdk.paillier"])
def test_a_silo_does_not_load_the_server_side(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({SERVER_SIDE!r}))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
