"""Blockwise FedAvg: the new global model from the start model and the decoded aggregate."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from coordinator.common import FloatVector
from secagg import Quantizer

__all__ = ["DECODE_BLOCK", "fedavg"]

DECODE_BLOCK = 1 << 16
"""Coordinates decoded at a time by :func:`fedavg` (its float64 temporaries are 512 KiB each)."""


def fedavg(
    quantizer: Quantizer,
    start: FloatVector,
    total: npt.NDArray[np.uint32],
    count: int,
    *,
    block: int = DECODE_BLOCK,
) -> FloatVector:
    """FedAvg: ``start + decode(total) / count`` as float32, computed ``block`` coordinates at a time.

    Equal, bit for bit, to ``(start.astype(float64) + quantizer.decode_sum(total, count=count) / count)
    .astype(float32)``: every step is element-wise. Decoding the whole vector at once would hold five float64
    and int64 temporaries of twice the vector's size at the same time (the coordinator's peak memory).
    """
    if block < 1:
        raise ValueError("block must be positive")
    new_model: FloatVector = np.empty(start.shape[0], dtype=np.float32)
    for lo in range(0, start.shape[0], block):
        hi = lo + block
        mean = quantizer.decode_sum(total[lo:hi], count=count) / count
        new_model[lo:hi] = start[lo:hi].astype(np.float64) + mean
    return new_model
