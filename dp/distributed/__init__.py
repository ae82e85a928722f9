"""Silo-level distributed DP on top of secure aggregation (Skellam or distributed discrete Gaussian).

Each silo clips, rotates, scales and rounds its update to integers and adds its share of
integer noise *before* masking; the securely aggregated sum then carries the central noise
and nobody, the coordinator included, ever holds a noiseless sum.

Typical use::

    config = DistributedDPConfig(l2_norm_clip=1.0, noise_multiplier=1.0, rounds=50, n_silos=10)
    p = plan(config, dimension)
    ints = encode(update, p, rotation_seed=round_seed)            # in every silo
    estimate, wraps = decode(modular_sum, p, n_contributors=k, rotation_seed=round_seed)
    p.silo_level_epsilon(rounds=r)                                 # for the ledger

Notes:
    Kairouz, Liu and Steinke (ICML 2021) and Agarwal, Kairouz and Liu (NeurIPS 2021); the
    submodules' docstrings say where each choice comes from.
"""

from dp.distributed._bits import BitSource, RandomBytes
from dp.distributed.accounting import (
    RDP_ORDERS,
    UNIT_OF_PRIVACY,
    SiloLevelEpsilon,
    ddg_rdp,
    delta_with_sampling_error,
    gaussian_rdp,
    rdp_to_epsilon,
    skellam_rdp,
)
from dp.distributed.codec import decode, encode
from dp.distributed.plan import DistributedDPConfig, DistributedDPPlan, Mechanism, plan
from dp.distributed.rotation import inverse_randomized_hadamard, randomized_hadamard
from dp.distributed.samplers import (
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_poisson,
    sample_skellam,
    sampling_distance,
)

__all__ = [
    "RDP_ORDERS",
    "UNIT_OF_PRIVACY",
    "BitSource",
    "DistributedDPConfig",
    "DistributedDPPlan",
    "Mechanism",
    "RandomBytes",
    "SiloLevelEpsilon",
    "ddg_rdp",
    "decode",
    "delta_with_sampling_error",
    "encode",
    "gaussian_rdp",
    "inverse_randomized_hadamard",
    "plan",
    "randomized_hadamard",
    "rdp_to_epsilon",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_poisson",
    "sample_skellam",
    "sampling_distance",
    "skellam_rdp",
]
