"""Randomized Hadamard rotation with signs from a public per-round seed.

Notes:
    The rotation ``y = H D x / sqrt(d)`` (``H`` the Walsh-Hadamard matrix, ``D`` a diagonal
    of random signs) spreads a vector's mass evenly over coordinates, so the per-coordinate
    range needed for the modular sum shrinks from ``n C`` to about
    ``n C sqrt(2 ln(d / p) / d)`` (Kairouz, Liu and Steinke, ICML 2021, "The Distributed
    Discrete Gaussian Mechanism", section 4; Suresh et al., ICML 2017). It is orthogonal,
    so it preserves L2 norms and therefore sensitivity. All silos use the same signs in a
    round (otherwise the rotated vectors would not add up), so the seed is public: the
    signs come from AES-128-CTR keyed by HKDF-SHA256 over the seed (a keyed PRF from
    ``cryptography``), never from numpy's RNG. A public seed gives no privacy; it only
    needs to be unpredictable to a silo choosing its update, which bounds wrap-around.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

__all__ = [
    "inverse_randomized_hadamard",
    "padded_dimension",
    "randomized_hadamard",
    "rotate_scaled",
    "rotation_signs",
]

_ROTATION_INFO = b"secagg/dp/distributed/rotation-signs/v1"
MIN_SEED_BYTES = 16


def padded_dimension(dimension: int) -> int:
    """The smallest power of two ``>= dimension``."""
    if dimension < 1:
        raise ValueError("dimension must be positive")
    return 1 << (dimension - 1).bit_length()


def rotation_signs(seed: bytes, dimension: int) -> NDArray[np.float64]:
    """The ``+-1`` diagonal ``D`` for a padded ``dimension``, derived from a public seed.

    Args:
        seed: the round's public rotation seed (at least 16 bytes).
        dimension: a power of two.

    Returns:
        A float64 array of ``+1.0``/``-1.0``.
    """
    return 1.0 - 2.0 * _sign_bits(seed, dimension).astype(np.float64)


def _sign_bits(seed: bytes, dimension: int) -> NDArray[np.bool_]:
    """``True`` where ``D`` is ``-1``."""
    if not isinstance(seed, bytes) or len(seed) < MIN_SEED_BYTES:
        raise ValueError(f"the rotation seed must be at least {MIN_SEED_BYTES} bytes")
    if dimension < 1 or dimension & (dimension - 1):
        raise ValueError("dimension must be a power of two")
    # Bind the dimension into the key so one seed never yields related sign vectors.
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=16,
        salt=None,
        info=_ROTATION_INFO + dimension.to_bytes(8, "big"),
    ).derive(seed)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    stream = encryptor.update(bytes((dimension + 7) // 8)) + encryptor.finalize()
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:dimension].view(np.bool_)


def rotate_scaled(
    values: NDArray[np.float64], padded: int, seed: bytes, factor: float
) -> NDArray[np.float64]:
    """``factor * H D x / sqrt(padded)`` of ``x`` zero-padded to ``padded`` (a power of two).

    The same as :func:`randomized_hadamard` on the padded vector times ``factor``, with the
    padding, the signs and the scaling folded into as few passes over memory as possible
    (the encoder's hot path).
    """
    d = values.shape[0]
    negative = _sign_bits(seed, padded)[:d]
    out = np.zeros(padded, dtype=np.float64)
    # D x by flipping IEEE-754 sign bits (exact negation), one pass and no float signs.
    flips = negative.view(np.uint8).astype(np.uint64) << np.uint64(63)
    source = np.ascontiguousarray(values, dtype=np.float64)
    np.bitwise_xor(source.view(np.uint64), flips, out=out[:d].view(np.uint64))
    return _fwht(out, factor=factor / np.sqrt(padded), copy=False)


_RADIX = 16  # Sylvester blocks applied with one matrix product each (BLAS, 5 passes at 2^20)


@lru_cache(maxsize=8)
def _sylvester(m: int) -> NDArray[np.float64]:
    """The ``m x m`` Sylvester-Hadamard matrix (``H_2`` tensor powers), ``m`` a power of two."""
    h = np.ones((1, 1))
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    return h


def _fwht(
    values: NDArray[np.float64], *, factor: float = 1.0, copy: bool = True
) -> NDArray[np.float64]:
    """Unnormalized fast Walsh-Hadamard transform (length a power of two), O(d log d).

    ``H_d = H_16 (x) H_16 (x) ... (x) H_r`` (Kronecker powers of ``H_2`` in any grouping),
    so the transform is one ``16 x 16`` matrix product per axis of the vector seen as a
    ``16 x 16 x ... x r`` tensor: five BLAS passes over memory at ``d = 2^20`` instead of
    twenty radix-2 butterflies. ``factor`` scales the result inside the first product
    (``factor * H x`` at no extra pass); ``copy=False`` lets the transform consume ``values``.
    """
    out = np.array(values, dtype=np.float64, copy=copy)
    n = out.shape[0]
    h = _sylvester(_RADIX)
    stride = 1
    first = True
    while stride * _RADIX <= n:
        blocks = n // (stride * _RADIX)
        block = h * factor if first else h
        first = False
        if stride == 1:
            out = (out.reshape(blocks, _RADIX) @ block).reshape(-1)
        else:
            out = np.matmul(block, out.reshape(blocks, _RADIX, stride)).reshape(-1)
        stride *= _RADIX
    if stride < n:
        rest = n // stride
        block = _sylvester(rest) * factor if first else _sylvester(rest)
        out = (block @ out.reshape(rest, stride)).reshape(-1)
    elif first:  # n == 1: H = [1]
        out = out * factor
    return out


def randomized_hadamard(values: NDArray[np.float64], seed: bytes) -> NDArray[np.float64]:
    """``H D x / sqrt(d)`` for a float vector whose length is a power of two."""
    d = values.shape[0]
    rotated: NDArray[np.float64] = _fwht(values * rotation_signs(seed, d)) / np.sqrt(d)
    return rotated


def inverse_randomized_hadamard(values: NDArray[np.float64], seed: bytes) -> NDArray[np.float64]:
    """``D H y / sqrt(d)``: the inverse (and transpose) of :func:`randomized_hadamard`."""
    d = values.shape[0]
    restored: NDArray[np.float64] = _fwht(values) / np.sqrt(d) * rotation_signs(seed, d)
    return restored
