"""Fixtures for adversarial tests over the wire: a throwaway three-silo development consortium."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Consortium


@pytest.fixture(scope="session")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Three silos a..c (n=3, t=2, min_cohort=3)."""
    return Consortium.create(tmp_path_factory.mktemp("pki3") / "pki", silos=["a", "b", "c"])
