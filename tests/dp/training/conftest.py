"""Shared fixtures for DP-SGD tests: single-threaded torch and deterministic randomness."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    # Tiny models: thread hand-offs cost more than they save on a shared 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def seeded_bytes() -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom, so statistical tests cannot flake."""
    return random.Random(20250101).randbytes
