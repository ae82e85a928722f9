"""Model factories a ``[model] factory`` names in the tests (entry points the coordinator imports and calls)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def small_cnn() -> nn.Module:
    """A seeded small CNN: PyTorch's own initialisation, reproducible."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def flat_vector() -> npt.NDArray[np.float64]:
    return np.linspace(-1.0, 1.0, 5)


def not_a_model() -> str:
    return "weights"


def broken() -> nn.Module:
    raise RuntimeError("checkpoint missing\nsecond line")
