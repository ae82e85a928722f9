"""Fixtures for end-to-end tests: throwaway development consortiums (real CA, certificates and roster keys).

Consortiums are session-scoped (key generation is the slow part); every test gets its own SQLite file.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import Consortium


@pytest.fixture(scope="session")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Four silos a..d: n=4, t=3, min_cohort=3 survives exactly one dropout."""
    return Consortium.create(tmp_path_factory.mktemp("pki4") / "pki", silos=["a", "b", "c", "d"])


@pytest.fixture(scope="session")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Three silos a..c (the demo's size)."""
    return Consortium.create(tmp_path_factory.mktemp("pki3") / "pki", silos=["a", "b", "c"])


@pytest.fixture(scope="session")
def ten(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Ten silos s0..s9, for the streaming-memory check."""
    return Consortium.create(
        tmp_path_factory.mktemp("pki10") / "pki", silos=[f"s{i}" for i in range(10)]
    )
