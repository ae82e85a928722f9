"""Shared fixtures for Paillier-mode tests: seeded randomness, small (insecure) keys and seeded encryption."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier import (
    ObfuscatorPool,
    ThresholdKeyMaterial,
    deal_threshold_key,
    encrypt_plaintexts,
)

TEST_KEY_BITS = 512
# Two known 256-bit safe primes: keys on them can be checked against phe's private key and the known m.
KAT_P = 0xC278528E980FE4DFDB9D33FA7B5AAC0873E225C33352B3B18279A4C8E9DDEC9B
KAT_Q = 0xC59A4B056D2AD42590F549C92165E4FC8D501C2F6FAD5F969B28D977F4258173


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


def deal(
    threshold: int,
    parties: int,
    seed: str,
    *,
    key_bits: int = TEST_KEY_BITS,
    primes: tuple[int, int] | None = None,
) -> ThresholdKeyMaterial:
    """A seeded t-of-l key of an insecure test size."""
    return deal_threshold_key(
        threshold=threshold,
        parties=parties,
        key_bits=key_bits,
        rng=seeded_rng(seed),
        insecure_test_key_size=True,
        primes=primes,
    )


def encrypt(keys: ThresholdKeyMaterial, plaintexts: list[int], seed: str = "enc") -> list[int]:
    """Encrypt with a seeded obfuscator pool."""
    pool = ObfuscatorPool(keys.public_key, rng=seeded_rng(seed))
    pool.fill(len(plaintexts))
    return encrypt_plaintexts(keys.public_key, plaintexts, pool)


@pytest.fixture(scope="session")
def keys_2_of_3() -> ThresholdKeyMaterial:
    return deal(2, 3, "2of3")


@pytest.fixture(scope="session")
def keys_3_of_5() -> ThresholdKeyMaterial:
    return deal(3, 5, "3of5")


@pytest.fixture(scope="session")
def keys_3_of_5_kat() -> ThresholdKeyMaterial:
    """3-of-5 on the known primes: decryptions can be checked with ``phe`` and the dealt ``d`` with ``m``."""
    return deal(3, 5, "fast-kat", primes=(KAT_P, KAT_Q))


@pytest.fixture(scope="session")
def keys_2_of_3_tiny() -> ThresholdKeyMaterial:
    """2-of-3 with a 256-bit N: thousands of ciphertexts in a fraction of a second."""
    return deal(2, 3, "fast-small", key_bits=256)


@pytest.fixture(scope="session")
def roster_keys() -> dict[str, Ed25519PrivateKey]:
    return {
        f"silo-{i}": Ed25519PrivateKey.from_private_bytes(seeded_rng(f"roster{i}")(32))
        for i in range(1, 6)
    }


@pytest.fixture(scope="session")
def roster(roster_keys: dict[str, Ed25519PrivateKey]) -> dict[str, bytes]:
    return {silo: key.public_key().public_bytes_raw() for silo, key in roster_keys.items()}
