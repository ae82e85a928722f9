"""Task entry points a ``[task] entry`` names in the tests: a small CNN on synthetic images, and models DP-SGD
cannot train. Written the way the README shows a user's own module."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.training import Task

IMAGE = 8  # 8 x 8 single-channel images


def make_cnn() -> nn.Module:
    """The federation's model; the coordinator's ``[model] factory`` builds it too (seeded, so both agree)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3),  # 8x8 -> 6x6
        nn.GroupNorm(2, 4),  # per-sample normalisation: what DP-SGD can train (not BatchNorm)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )


def _images(count: int, seed: int) -> TensorDataset:
    """Synthetic images: class 1 is brighter in the top half (a public, learnable toy problem)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = torch.randn(count, 1, IMAGE, IMAGE, generator=generator) * 0.5
    images[:, :, : IMAGE // 2, :] += labels.view(-1, 1, 1, 1).float()
    return TensorDataset(images, labels)


def make_cnn_task() -> Task:
    return Task(
        model=make_cnn(),
        dataset=_images(120, seed=1),
        epsilon=5.0,
        delta=1e-5,
        batch_size=30,
        lr=0.5,
        max_grad_norm=1.0,
    )


def make_batchnorm_task() -> Task:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)
    )
    return Task(model=model, dataset=_images(120, seed=1), epsilon=5.0, delta=1e-5, batch_size=30)


def make_tiny_dataset_task() -> Task:
    return Task(
        model=make_cnn(), dataset=_images(20, seed=1), epsilon=5.0, delta=1e-5, batch_size=32
    )


def not_a_task() -> nn.Module:
    return make_cnn()
