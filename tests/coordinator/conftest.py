"""Fixtures for coordinator tests: a real throwaway consortium (CA, certificates, roster, keys) and its configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordinator.config import write_demo_configs
from coordinator.pki import ConsortiumPaths, create_consortium

FEDERATION = "testfed"
SILOS = ("silo-a", "silo-b", "silo-c")


def copy_consortium(template: ConsortiumPaths, root: Path) -> ConsortiumPaths:
    """``template``'s files copied to ``root`` with their modes (keys stay 0600, directories 0700)."""
    shutil.copytree(template.root, root)
    return ConsortiumPaths.at(root, federation=template.federation, silos=list(template.silos))


@pytest.fixture(scope="session")
def _consortium_template(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumPaths:
    return create_consortium(
        tmp_path_factory.mktemp("template") / "consortium", federation=FEDERATION, silos=SILOS
    )


@pytest.fixture(scope="session")
def _rogue_template(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumPaths:
    return create_consortium(
        tmp_path_factory.mktemp("rogue") / "rogue", federation=FEDERATION, silos=SILOS
    )


@pytest.fixture
def consortium(_consortium_template: ConsortiumPaths, tmp_path: Path) -> ConsortiumPaths:
    """A development consortium of three silos (real ECDSA/Ed25519 keys), in this test's own directory.

    Every key file is PBKDF2-encrypted at 600,000 iterations, so minting a consortium costs about a second:
    it is minted once per test process and each test gets its own copy, free to change or break.
    """
    return copy_consortium(_consortium_template, tmp_path / "consortium")


@pytest.fixture
def rogue_consortium(_rogue_template: ConsortiumPaths, tmp_path: Path) -> ConsortiumPaths:
    """A second consortium with the same federation and silo names but its own CA: an impostor's PKI."""
    return copy_consortium(_rogue_template, tmp_path / "rogue")


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
