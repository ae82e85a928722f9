"""torch generators whose whole state comes from the operating system's CSPRNG.

Notes:
    ``torch.Generator.manual_seed`` keeps only the low 32 bits of its seed
    (``at::mt19937::init_with_uint32``), so the usual ``manual_seed(os.urandom-derived int)``
    gives a 2^32 search space. Instead we write all 624 words of the MT19937 state from
    ``random_bytes`` (``os.urandom`` by default) through ``Generator.set_state``, and check
    the layout (torch 2.13's ``CPUGeneratorImplState``: seed u64, left i32, seeded i32, next
    u64, state 624 x u64, normal cache) by reading the state back; if torch ever changes it,
    we fail closed instead of silently seeding weakly. What this does and does not give is
    in ``dp.accounting.randomness.RANDOMNESS_STATEMENT``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from dp.errors import PrivacyError

__all__ = ["cryptographic_generator"]

_MT_WORDS = 624
_STATE_BYTES = 5056
_STATE_OFFSET = 24  # after the_initial_seed (u64), left (i32), seeded (i32), next (u64)


def cryptographic_generator(random_bytes: Callable[[int], bytes] = os.urandom) -> torch.Generator:
    """A CPU ``torch.Generator`` whose 19,968-bit MT19937 state is drawn from ``random_bytes``.

    Args:
        random_bytes: source of randomness; ``os.urandom`` in production, injectable so
            tests can be deterministic.

    Raises:
        PrivacyError: torch's generator state layout is not the one this code knows.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(0)  # left=1, seeded=1, next=0: the next draw re-twists the state
    state = generator.get_state().numpy().copy()
    header = np.frombuffer(state[:_STATE_OFFSET].tobytes(), dtype="<u8", count=1)
    if state.size != _STATE_BYTES or int(header[0]) != 0:
        raise PrivacyError("unexpected torch generator state layout; refusing to seed weakly")
    words = np.frombuffer(random_bytes(4 * _MT_WORDS), dtype="<u4").astype("<u8")
    if words.size != _MT_WORDS or not words.any():
        raise PrivacyError("random_bytes returned too few (or all-zero) bytes")
    end = _STATE_OFFSET + 8 * _MT_WORDS
    state[_STATE_OFFSET:end] = np.frombuffer(words.tobytes(), dtype=np.uint8)
    generator.set_state(torch.from_numpy(state))
    if not np.array_equal(
        generator.get_state().numpy()[_STATE_OFFSET:end], state[_STATE_OFFSET:end]
    ):
        raise PrivacyError("torch did not accept the generator state; refusing to seed weakly")
    return generator
