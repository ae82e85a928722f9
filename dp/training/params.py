"""Flat parameter vectors: the form in which model weights and updates cross the silo boundary."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["get_flat_params", "set_flat_params"]


def get_flat_params(model: nn.Module) -> np.ndarray:
    """All parameters of ``model`` in ``model.parameters()`` order, as one float32 copy."""
    with torch.no_grad():
        parts = [
            p.detach().reshape(-1).to(dtype=torch.float32, device="cpu") for p in model.parameters()
        ]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(parts).numpy().copy()


def set_flat_params(model: nn.Module, vector: np.ndarray) -> None:
    """Overwrite every parameter of ``model`` from ``vector`` (inverse of ``get_flat_params``).

    Raises:
        ValueError: wrong length, not one-dimensional, or not finite.
    """
    flat = np.asarray(vector)
    total = sum(p.numel() for p in model.parameters())
    if flat.ndim != 1 or flat.size != total:
        raise ValueError(f"expected a flat vector of {total} values, got shape {flat.shape}")
    if not np.all(np.isfinite(flat)):
        raise ValueError("parameter vector contains NaN or infinity")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            chunk = torch.from_numpy(np.ascontiguousarray(flat[offset : offset + n]))
            p.copy_(chunk.reshape(p.shape).to(dtype=p.dtype, device=p.device))
            offset += n
