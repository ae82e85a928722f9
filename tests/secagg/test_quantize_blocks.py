"""The quantizer's blocked encoding equals the whole-vector definition, bit for bit, from the same stream.

``Quantizer.encode`` works through a vector in cache-sized blocks (a silo encodes millions of parameters a
round); these tests recompute the definition in one piece, with the same seeded randomness, and compare, at
lengths that end on, just past and far from any power-of-two block boundary.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import Quantizer
from secagg.hazmat.quantize import clip_l2

LENGTHS = (0, 1, 7, 32_767, 32_768, 32_769, 65_536, 100_003)


def reference_encode(
    quantizer: Quantizer, x: npt.NDArray[np.float64], seed: bytes
) -> npt.NDArray[np.uint32]:
    """The definition in one piece: clip, scale, floor + Bernoulli(fraction) from 53-bit uniforms, mod 2^32."""
    v = clip_l2(x, quantizer.clip) * quantizer.scale
    stream = (
        Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(8 * len(v)))
    )
    uniform = (np.frombuffer(stream, dtype="<u8") >> np.uint64(11)).astype(np.float64) / 2.0**53
    floor = np.floor(v)
    q = np.clip(floor + (uniform < v - floor), -quantizer.levels, quantizer.levels)
    return q.astype(np.int64).astype(np.uint32)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("magnitude", [1e-7, 1e-3, 10.0])  # the last is clipped (norm above clip)
def test_blocked_encode_equals_the_whole_vector_definition(length: int, magnitude: float) -> None:
    rng = np.random.default_rng(length)
    x = rng.standard_normal(length) * magnitude
    seed = rng.bytes(32)
    quantizer = Quantizer(clip=1.0, bits=16, max_silos=10)
    got = quantizer.encode(x, lambda k: seed[:k])
    assert got.dtype == np.uint32
    assert np.array_equal(got, reference_encode(quantizer, x, seed))


def test_encode_of_float32_input_and_of_values_at_the_clip_bound() -> None:
    quantizer = Quantizer(clip=2.0, bits=12, max_silos=4)
    seed = bytes(range(32))
    x = np.zeros(40_000, dtype=np.float32)
    x[0], x[-1] = 2.0, -0.0  # the whole norm on one coordinate: exactly +clip, i.e. +levels
    got = quantizer.encode(x, lambda k: seed[:k])
    assert got[0] == quantizer.levels
    assert np.array_equal(got, reference_encode(quantizer, x.astype(np.float64), seed))


def test_encode_refuses_non_finite_values_anywhere() -> None:
    quantizer = Quantizer(clip=1.0, bits=8, max_silos=2)
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(70_000)
        x[-1] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            quantizer.encode(x)
