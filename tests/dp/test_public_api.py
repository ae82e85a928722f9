"""The public surface of ``dp``: sorted ``__all__``, everything exported exists, no torch leak."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["dp", "dp.accounting", "dp.errors", "dp.training"])
def test_all_is_sorted_isort_style_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)

    # isort style: CONSTANTS, then Classes, then functions.
    def key(item: str) -> tuple[int, str]:
        kind = 0 if item.isupper() else 1 if item[0].isupper() else 2
        return (kind, item)

    assert exported == sorted(exported, key=key)
    assert len(set(exported)) == len(exported)
    for item in exported:
        assert hasattr(module, item), item


def test_importing_dp_and_accounting_does_not_import_torch() -> None:
    code = (
        "import sys, dp, dp.accounting, dp.errors;"
        "bad = [m for m in ('torch', 'opacus') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
