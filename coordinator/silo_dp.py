"""Silo-level distributed DP inside the masking protocol: the one place both roles build the plan and the codec.

The coordinator announces the ``[silo_dp]`` parameters in every ``RoundInfo``; each silo rebuilds the same
:class:`dp.distributed.DistributedDPPlan` from them (planning is deterministic), encodes its update with its own
noise share into ``Z / 2^bits`` and masks it in the 32-bit ring; the coordinator decodes the unmasked sum.

Notes:
    - Ring embedding: ``2^bits`` divides ``2^32``, so the masked sum taken mod ``2^32`` and then reduced mod
      ``2^bits`` is the sum mod ``2^bits`` the plan was sized for (Kairouz, Liu, Steinke 2021, section 4).
    - Rotation seed: public, derived from the round's federation, number and start-model hash, so every silo
      and the coordinator agree without an extra message and the coordinator cannot pick it after seeing
      updates (the updates are computed from that very model). The plan's wrap bound assumes updates do not
      depend on the seed beyond that; a malicious silo can force wraps (a utility attack), which are counted.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from dp.distributed import (
    DistributedDPPlan,
    decode,
    encode,
)
from secagg import RoundConfig

__all__ = ["decode_sum", "encode_update", "rotation_seed"]

_SEED_DOMAIN = b"secagg/silo-dp/rotation-seed/v1\n"


def rotation_seed(config: RoundConfig) -> bytes:
    """The round's public rotation seed (see module Notes)."""
    digest = hashlib.sha256(_SEED_DOMAIN)
    digest.update(config.federation.encode("utf-8") + b"\n")
    digest.update(config.round.to_bytes(8, "big"))
    digest.update(config.model_hash)
    return digest.digest()


def encode_update(
    update: npt.NDArray[np.float64], p: DistributedDPPlan, config: RoundConfig
) -> npt.NDArray[np.uint32]:
    """A silo's clipped, rotated, rounded and noised update in ``Z / 2^bits``, ready for masking."""
    ints = encode(update, p, rotation_seed=rotation_seed(config) if p.config.rotation else None)
    reduced: npt.NDArray[np.uint32] = (ints & (p.modulus - 1)).astype(np.uint32)
    return reduced


def decode_sum(
    total: npt.NDArray[np.uint32], p: DistributedDPPlan, config: RoundConfig, contributors: int
) -> tuple[npt.NDArray[np.float64], int]:
    """The float sum estimate of ``contributors`` silos' updates and the number of wrapped coordinates.

    Raises:
        dp.errors.TooFewContributors: fewer contributions than the noise needs; nothing is decoded.
    """
    seed = rotation_seed(config) if p.config.rotation else None
    estimate, wraps = decode(
        total.astype(np.uint64) & np.uint64(p.modulus - 1),
        p,
        n_contributors=contributors,
        rotation_seed=seed,
    )
    return estimate.astype(np.float64), wraps
