"""Quantization: L2 clipping, unbiased stochastic rounding to signed integers, and centred decoding of sums.

Notes:
    - Clip to the public L2 bound ``clip`` first, so every coordinate lies in [-clip, clip] and the sensitivity
      of one silo's contribution is bounded (Abadi et al. 2016; Kairouz, Liu, Steinke 2021, section 4).
    - Unbiased stochastic rounding: ``floor(v) + Bernoulli(v - floor(v))`` has expectation ``v``, so the
      decoded average is unbiased (Gupta et al. 2015; Suresh et al. 2017). The Bernoulli draws come from an
      AES-CTR keystream seeded by 32 bytes of ``rng`` (``os.urandom`` by default): rounding randomness is a
      privacy matter when it interacts with DP noise, so it is cryptographic.
    - Each silo's value uses ``bits`` signed bits; the sum of ``n`` such values needs ``ceil(log2 n)`` more,
      and one more bit of headroom keeps the centred decoding unambiguous. Parameters whose total exceeds
      the 32-bit ring are refused instead of silently wrapping.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import RandomSource

__all__ = ["RING_BITS", "Quantizer", "clip_l2"]

RING_BITS = 32
_RING = 1 << RING_BITS

FloatArray = npt.NDArray[np.float64] | npt.NDArray[np.float32]


def clip_l2(x: npt.ArrayLike, clip: float) -> npt.NDArray[np.float64]:
    """Scale ``x`` down so its L2 norm is at most ``clip`` (no-op when it already is)."""
    v = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("update contains NaN or infinity")
    norm = float(np.linalg.norm(v))
    return v * (clip / norm) if norm > clip else v.copy()


@dataclass(frozen=True, kw_only=True)
class Quantizer:
    """Public quantization parameters shared by every silo of a federation.

    Attributes:
        clip: L2 bound applied to each silo's update before quantization.
        bits: signed bits per coordinate per silo (2..31).
        max_silos: the largest number of silos whose values are ever summed.
    """

    clip: float
    bits: int
    max_silos: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise InvalidParameters("clip must be a positive finite number")
        if not 2 <= self.bits <= 31:
            raise InvalidParameters("bits must be between 2 and 31")
        if self.max_silos < 1:
            raise InvalidParameters("max_silos must be at least 1")
        if self.total_bits > RING_BITS:
            raise InvalidParameters(
                f"{self.bits} bits for {self.max_silos} silos need {self.total_bits} bits with headroom; "
                f"the ring has {RING_BITS}: lower bits or max_silos"
            )

    @property
    def total_bits(self) -> int:
        """bits + ceil(log2 n) + 1 headroom bit."""
        return self.bits + math.ceil(math.log2(self.max_silos)) + 1

    @property
    def levels(self) -> int:
        """Largest magnitude of a quantized coordinate."""
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Integer units per unit of the clipped update."""
        return self.levels / self.clip

    def encode(self, x: npt.ArrayLike, rng: RandomSource = os.urandom) -> npt.NDArray[np.uint32]:
        """Clip, stochastically round, and map into the ring Z_{2^32} (two's complement).

        Exactly ``floor(v) + [u < v - floor(v)]`` for ``v = clip_l2(x) * scale`` and the 53-bit uniforms ``u``
        of one AES-CTR stream seeded by 32 bytes of ``rng`` (the top 53 bits of each little-endian 64-bit
        word of its output on zeros), clipped to ``+-levels`` and
        reduced mod ``2^32``: the same values, from the same stream, as a whole-vector computation. It runs
        in blocks of :data:`_BLOCK` coordinates so that its temporaries stay in the CPU cache instead of being
        a dozen freshly allocated vectors (a silo encodes millions of parameters every round), and it tests
        ``k / 2^53 < f`` as ``k < f * 2^53``, which is exact: both sides only change exponent.
        """
        v = np.asarray(x, dtype=np.float64)
        norm = float(np.linalg.norm(v))
        if not math.isfinite(
            norm
        ):  # NaN or infinity (refused), or a finite vector whose norm overflows
            v, ratio = clip_l2(v, self.clip), 1.0
        else:
            ratio = self.clip / norm if norm > self.clip else 1.0
        encoded: npt.NDArray[np.uint32] = np.empty(v.shape[0], dtype=np.uint32)
        stream = _keystream(rng)
        zeros = bytes(8 * min(_BLOCK, v.shape[0]))
        for start in range(0, v.shape[0], _BLOCK):
            block = v[start : start + _BLOCK]
            scaled = (
                block * ratio if ratio != 1.0 else block.copy()
            )  # clip_l2's product, then scale's
            np.multiply(scaled, self.scale, out=scaled)
            floor = np.floor(scaled)
            np.subtract(scaled, floor, out=scaled)  # the fraction in [0, 1)
            np.multiply(scaled, float(1 << 53), out=scaled)
            words = np.frombuffer(stream.update(zeros[: 8 * block.shape[0]]), dtype="<u8")
            floor += (words >> np.uint64(11)) < scaled
            np.clip(
                floor, -self.levels, self.levels, out=floor
            )  # float error at exactly +-clip only
            # |q| <= levels < 2^30 fits int32, whose bits are the two's complement residue mod 2^32
            encoded[start : start + block.shape[0]] = floor.astype(np.int32).view(np.uint32)
        return encoded

    def decode_sum(self, total: npt.NDArray[np.uint32], *, count: int) -> npt.NDArray[np.float64]:
        """Centred decoding of the ring sum of ``count`` encoded vectors back to floats.

        Raises:
            InvalidParameters: ``count`` exceeds ``max_silos`` (the sum could have wrapped).
        """
        if not 1 <= count <= self.max_silos:
            raise InvalidParameters(
                f"cannot decode a sum of {count} vectors (max {self.max_silos})"
            )
        signed = total.astype(np.int64)
        signed[signed >= _RING // 2] -= _RING
        return signed.astype(np.float64) / self.scale


_BLOCK = 1 << 15
"""Coordinates :meth:`Quantizer.encode` processes at a time (256 KiB of float64: within a CPU's L2 cache)."""


def _keystream(rng: RandomSource) -> Any:
    """An AES-256-CTR encryptor keyed by 32 bytes of ``rng``: its output on zeros is the rounding stream."""
    return Cipher(algorithms.AES(rng(32)), modes.CTR(bytes(16))).encryptor()
