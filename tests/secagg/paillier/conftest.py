"""Shared fixtures for Paillier-mode tests: seeded randomness and small (512-bit, insecure) keys."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier import ThresholdKeyMaterial, deal_threshold_key

TEST_KEY_BITS = 512


def seeded_rng(seed: bytes | str) -> RandomSource:
    """Deterministic byte stream (SHAKE-256 in counter mode) standing in for ``os.urandom`` in tests."""
    seed_bytes = seed.encode() if isinstance(seed, str) else seed
    counter = itertools.count()

    def draw(n: int) -> bytes:
        return hashlib.shake_256(seed_bytes + next(counter).to_bytes(8, "big")).digest(n)

    return draw


@pytest.fixture(scope="session")
def rng_factory() -> Callable[[bytes | str], RandomSource]:
    return seeded_rng


@pytest.fixture(scope="session")
def keys_2_of_3() -> ThresholdKeyMaterial:
    return deal_threshold_key(
        threshold=2,
        parties=3,
        key_bits=TEST_KEY_BITS,
        rng=seeded_rng("2of3"),
        insecure_test_key_size=True,
    )


@pytest.fixture(scope="session")
def keys_3_of_5() -> ThresholdKeyMaterial:
    return deal_threshold_key(
        threshold=3,
        parties=5,
        key_bits=TEST_KEY_BITS,
        rng=seeded_rng("3of5"),
        insecure_test_key_size=True,
    )


@pytest.fixture(scope="session")
def roster_keys() -> dict[str, Ed25519PrivateKey]:
    return {
        f"silo-{i}": Ed25519PrivateKey.from_private_bytes(seeded_rng(f"roster{i}")(32))
        for i in range(1, 6)
    }


@pytest.fixture(scope="session")
def roster(roster_keys: dict[str, Ed25519PrivateKey]) -> dict[str, bytes]:
    return {silo: key.public_key().public_bytes_raw() for silo, key in roster_keys.items()}
