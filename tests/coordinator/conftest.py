"""Fixtures for coordinator tests: a real throwaway consortium (CA, certificates, roster, keys) and its configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import write_demo_configs
from coordinator.pki import ConsortiumPaths, create_consortium

FEDERATION = "testfed"
SILOS = ("silo-a", "silo-b", "silo-c")


@pytest.fixture
def consortium(tmp_path: Path) -> ConsortiumPaths:
    """A fresh development consortium of three silos (real ECDSA/Ed25519 keys, ~0.1 s to build)."""
    return create_consortium(tmp_path / "consortium", federation=FEDERATION, silos=SILOS)


@pytest.fixture
def rogue_consortium(tmp_path: Path) -> ConsortiumPaths:
    """A second consortium with the same federation and silo names but its own CA: an impostor's PKI."""
    return create_consortium(tmp_path / "rogue", federation=FEDERATION, silos=SILOS)


@pytest.fixture
def demo_configs(consortium: ConsortiumPaths, tmp_path: Path) -> tuple[Path, list[Path]]:
    """``serve.toml`` and one ``silo-<id>.toml`` per silo for :func:`consortium`."""
    return write_demo_configs(
        consortium,
        tmp_path / "configs",
        rounds=3,
        model_size=10,
        listen="127.0.0.1:0",
        coordinator="127.0.0.1:50051",
    )
