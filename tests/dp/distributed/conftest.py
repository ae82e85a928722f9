"""Shared fixtures: a reproducible byte source for statistical tests.

Statistical tests use a seeded source so a pass or fail is reproducible; the samplers
themselves are unchanged (production uses ``os.urandom``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest


@pytest.fixture
def seeded() -> Callable[[int], Callable[[int], bytes]]:
    def make(seed: int) -> Callable[[int], bytes]:
        return random.Random(seed).randbytes

    return make
