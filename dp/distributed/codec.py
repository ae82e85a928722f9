"""Silo-side encoding (clip, rotate, scale, round, add noise) and aggregate decoding.

Notes:
    The pipeline is Kairouz, Liu and Steinke (ICML 2021), Algorithms 1 and 2, with the
    Skellam noise of Agarwal, Kairouz and Liu (NeurIPS 2021) as the default. The encoder
    runs inside the silo before masking, so the secure-aggregation layer only ever sees
    noisy integers and the coordinator never holds a noiseless sum.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dp.distributed._bits import BitSource, RandomBytes
from dp.distributed.plan import DistributedDPPlan
from dp.distributed.rotation import inverse_randomized_hadamard, rotate_scaled
from dp.distributed.samplers import sample_discrete_gaussian, sample_skellam
from dp.errors import RoundingFailed, TooFewContributors

__all__ = ["decode", "encode"]

_MAX_ROUNDING_ATTEMPTS = 1000


def _check_seed(plan: DistributedDPPlan, rotation_seed: bytes | None) -> bytes | None:
    if plan.config.rotation and rotation_seed is None:
        raise ValueError("this plan rotates: pass the round's public rotation_seed")
    return rotation_seed if plan.config.rotation else None


def _conditional_round(
    scaled: NDArray[np.float64], norm_bound: float, conditional: bool, source: BitSource
) -> NDArray[np.int64]:
    """Unbiased stochastic rounding, retried until the L2 norm is within ``norm_bound``."""
    floor = np.floor(scaled)
    # Round up with probability frac, compared on 32-bit uniforms (to 2^-32: utility only;
    # the privacy argument rests on the norm check below, not on the rounding distribution).
    frac32 = (scaled - floor) * 2.0**32
    squared_bound = norm_bound * norm_bound
    for _ in range(_MAX_ROUNDING_ATTEMPTS):
        u = source.words((scaled.shape[0] + 1) // 2).view(np.uint32)[: scaled.shape[0]]
        rounded_f = floor + (u < frac32)  # integers, exact in float64 below 2^53
        if conditional:
            approx = float(np.dot(rounded_f, rounded_f))
            if approx >= squared_bound * (1 - 1e-9):
                if approx > squared_bound * (1 + 1e-9):
                    continue
                # Near the edge: decide in exact integers.
                exact = sum(int(v) * int(v) for v in rounded_f.astype(np.int64))
                if exact > Fraction(norm_bound) ** 2:
                    continue
        return rounded_f.astype(np.int64)
    raise RoundingFailed("conditional rounding did not meet its norm bound")


def encode(
    x: ArrayLike,
    plan: DistributedDPPlan,
    *,
    rotation_seed: bytes | None = None,
    rng: RandomBytes | None = None,
) -> NDArray[np.int64]:
    """Turn one silo's float update into a noisy integer vector, ready for masking.

    Steps: clip to L2 norm ``C``; if the plan rotates, pad to a power of two and apply the
    randomized Hadamard rotation with the round's public seed; scale by ``gamma``; round
    stochastically, retrying until the rounded norm is within the plan's bound; add this
    silo's noise share (Skellam or discrete Gaussian) from ``rng``: from a table within
    statistical distance ``2^-100`` per draw (counted in the plan's delta) when the share
    parameter allows, exact otherwise (:mod:`dp.distributed.samplers`).

    Args:
        x: the update, a 1-D float vector of ``plan.dimension`` finite values.
        plan: from :func:`dp.distributed.plan`.
        rotation_seed: the round's public seed (same bytes for every silo), required when
            the plan rotates.
        rng: byte source for rounding and noise; by default an AES-256-CTR stream under a
            fresh ``os.urandom`` key (:class:`dp.distributed.BitSource`).

    Returns:
        An int64 vector of ``plan.padded_dimension`` values (not yet reduced mod ``2^bits``).

    Raises:
        ValueError: wrong shape or non-finite values, or a missing seed.
        RoundingFailed: conditional rounding kept exceeding its bound (should never happen).

    Notes:
        Kairouz, Liu and Steinke (2021), Algorithm 1 (module docstring). The noise share is
        sized in :mod:`dp.distributed.plan` for the minimum number of honest survivors.
    """
    values = np.asarray(x, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] != plan.dimension:
        raise ValueError(f"expected a vector of {plan.dimension} values")
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.linalg.norm(values))
    if not math.isfinite(norm):  # a non-finite value, or finite ones whose squares overflow
        if not np.all(np.isfinite(values)):
            raise ValueError("the update contains non-finite values")
        peak = float(np.max(np.abs(values)))
        norm = peak * float(np.linalg.norm(values / peak))
    seed = _check_seed(plan, rotation_seed)
    source = BitSource(rng)
    clip = plan.config.l2_norm_clip
    # Clip and scale in one multiplication (folded into the rotation when there is one).
    factor = plan.scale * (clip / norm if norm > clip else 1.0)
    if seed is not None:
        scaled = rotate_scaled(values, plan.padded_dimension, seed, factor)
    else:
        scaled = values * factor
    rounded = _conditional_round(scaled, plan.norm_bound, plan.config.beta > 0, source)
    if plan.config.mechanism == "skellam":
        noise = sample_skellam(plan.share_parameter, rounded.shape[0], rng=source)
    else:
        noise = sample_discrete_gaussian(plan.share_parameter, rounded.shape[0], rng=source)
    rounded += noise
    return rounded


def _plausible_norm(centred: NDArray[np.int64], plan: DistributedDPPlan, n: int) -> bool:
    """Is the sum's L2 norm consistent with ``n`` bounded signals plus ``n`` noise shares?

    The noise energy of ``d`` coordinates with variance ``V`` lies in
    ``V (d -+ 2 sqrt(d x)) (+ 2 x V)`` except with probability ``2 e^-x`` (Laurent and
    Massart 2000, Lemma 1, for Gaussian-like noise), with ``x = ln(2 / p)``; the signals and
    rounding add at most ``n D2`` to the norm by the triangle inequality.
    """
    d = plan.padded_dimension
    variance = n * plan.share_variance
    x = math.log(2 / plan.wrap_probability_bound)
    low = variance * (d - 2 * math.sqrt(d * x))
    high = variance * (d + 2 * math.sqrt(d * x) + 2 * x)
    signal = n * plan.norm_bound
    values = centred.astype(np.float64)
    norm = math.sqrt(float(np.dot(values, values)))
    if norm > math.sqrt(high) + signal:
        return False
    return not (low > 0 and norm < math.sqrt(low) - signal)


def decode(
    sum_ints: ArrayLike,
    plan: DistributedDPPlan,
    *,
    n_contributors: int,
    rotation_seed: bytes | None = None,
) -> tuple[NDArray[np.float32], int]:
    """Turn the modular sum of ``n_contributors`` encodings into the float sum estimate.

    Args:
        sum_ints: the securely aggregated sum, integers in ``[0, 2^bits)`` (any integer is
            reduced mod ``2^bits`` first), ``plan.padded_dimension`` of them.
        plan: the plan every silo encoded with.
        n_contributors: how many silos' encodings the sum holds.
        rotation_seed: the round's public seed, required when the plan rotates.

    Returns:
        ``(estimate, wraps_detected)``: the float32 estimate of the sum of the clipped
        updates (length ``plan.dimension``), and the number of coordinates whose centred
        value lies outside the plan's bound for ``n_contributors`` (each is almost surely
        a wrap-around; the bound fails with probability at most
        ``plan.wrap_probability_bound`` per round). If no coordinate is out of bounds but
        the vector's norm is implausible for the signal plus the noise, every coordinate
        is counted (``plan.padded_dimension``): a wrap happened and cannot be located.
        Record a non-zero count in the ledger.

    Raises:
        TooFewContributors: fewer contributions than ``n_silos - dropouts_tolerated``: the
            noise would be below what the guarantee assumes, so nothing is decoded.
        ValueError: wrong shape or dtype, or a missing seed.

    Notes:
        Centred decoding maps ``[0, 2^bits)`` to ``[-2^(bits-1), 2^(bits-1))``; the plan's
        scale makes a true coordinate leave that range only with negligible probability. A
        wrap by a multiple of the modulus that lands back inside the bound cannot be seen;
        the count is a detector, not a proof of absence.
    """
    config = plan.config
    if isinstance(n_contributors, bool) or not isinstance(n_contributors, int):
        raise ValueError("n_contributors must be an int")
    if n_contributors > config.n_silos:
        raise ValueError("n_contributors exceeds n_silos")
    if n_contributors < config.min_contributors:
        raise TooFewContributors(
            f"{n_contributors} contributions, but the noise needs at least "
            f"{config.min_contributors}"
        )
    array = np.asarray(sum_ints)
    if array.ndim != 1 or array.shape[0] != plan.padded_dimension:
        raise ValueError(f"expected {plan.padded_dimension} summed integers")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError("the sum must be an integer array")
    seed = _check_seed(plan, rotation_seed)
    mask = np.uint64(plan.modulus - 1)
    reduced = (
        array.astype(np.int64).view(np.uint64)
        if array.dtype.kind == "i"
        else array.astype(np.uint64)
    ) & mask
    centred = reduced.astype(np.int64)
    centred[centred >= plan.modulus // 2] -= plan.modulus
    bound = plan.sum_bound_for(n_contributors)
    wraps = int(np.count_nonzero(np.abs(centred) > math.floor(bound)))
    if wraps == 0 and not _plausible_norm(centred, plan, n_contributors):
        # A wrap that lands inside the range cannot be located: flag every coordinate.
        wraps = plan.padded_dimension
    estimate = centred.astype(np.float64) / plan.scale
    if seed is not None:
        estimate = inverse_randomized_hadamard(estimate, seed)
    return estimate[: plan.dimension].astype(np.float32), wraps
