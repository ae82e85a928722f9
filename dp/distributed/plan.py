"""Configuration and planning of silo-level distributed DP: scale, bit width, noise shares.

:class:`DistributedDPConfig` holds what the federation decides; :func:`plan` turns it,
for one vector dimension, into a :class:`DistributedDPPlan`: the scale ``gamma``, the
per-silo noise share, the rounded-norm bound, the bound on every coordinate of the modular
sum with the probability that it fails, and the silo-level epsilon over the planned rounds.

Notes:
    - Noise shares: the central noise (standard deviation ``noise_multiplier * gamma * C``
      in the integer domain) is split over ``min_honest = n_silos - dropouts_tolerated -
      collusion_bound`` silos, so the sum over the honest survivors alone carries it:
      dropped silos add nothing and colluders can subtract their own shares (Kairouz, Liu
      and Steinke 2021, section 5; Bonawitz et al. 2017 for the dropout model). With more
      survivors the noise is larger than needed, never smaller.
    - Rounding: conditional stochastic rounding keeps the integer vector's L2 norm within
      ``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)))`` where
      ``c = gamma C`` (Kairouz, Liu and Steinke 2021, Theorem 1 / Algorithm 1); the L1 norm
      of an integer vector is at most ``min(sqrt(d) D2, D2^2)``. These are the
      sensitivities the accountant uses, so a coarse scale shows up as a worse epsilon.
    - Bit width: every coordinate of the sum of ``n`` silos' encodings is bounded, except
      with probability ``wrap_probability`` (union bound over coordinates), by
      ``A + n + N`` where ``A`` bounds the rotated signal (Hoeffding for the Rademacher sum
      ``H D v / sqrt(d)`` with ``||v|| <= n gamma C``: ``A = n gamma C sqrt(2 ln(4d/p) / d)``;
      without rotation ``A = n gamma C``), ``n`` bounds the rounding errors, and ``N``
      bounds the noise (a Chernoff bound for Skellam from its moment generating function,
      the sub-Gaussian bound of Canonne, Kamath and Steinke 2020 for discrete Gaussians).
      The largest ``gamma`` with ``A + n + N <= 2^(bits-1-guard_bits) - 1`` is chosen, so
      the centred decoding is exact unless that rare event happens, and a coordinate that
      wraps by less than the guard band lands in it, where decoding counts it. This is stricter than the
      "k standard deviations" heuristic of the KLS21 and Skellam papers.
    - The rotation signs are public; the bound assumes honest silos choose their updates
      independently of the round's seed. A malicious silo can still force wrap-around (a
      utility attack, like any poisoning); decode counts suspicious coordinates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dp.distributed.accounting import (
    SiloLevelEpsilon,
    ddg_rdp,
    delta_with_sampling_error,
    rdp_to_epsilon,
    skellam_rdp,
)
from dp.distributed.rotation import padded_dimension
from dp.distributed.samplers import sampling_distance
from dp.errors import BitWidthTooSmall, InvalidPrivacyParameters

__all__ = ["DistributedDPConfig", "DistributedDPPlan", "Mechanism", "plan"]

_DIGEST_DOMAIN = "dp.distributed/plan/v1"

Mechanism = Literal["skellam", "ddg"]
_MECHANISMS = ("skellam", "ddg")
_MIN_BITS, _MAX_BITS = 8, 62
_BISECTION_STEPS = 200


def _finite_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyParameters(f"{name} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise InvalidPrivacyParameters(f"{name} must be positive and finite")


def _count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidPrivacyParameters(f"{name} must be an integer >= {minimum}")


@dataclass(frozen=True, kw_only=True)
class DistributedDPConfig:
    """Silo-level distributed DP settings of a federation (validated on construction).

    Give exactly one of ``noise_multiplier`` and ``target_epsilon``.

    Attributes:
        mechanism: ``"skellam"`` (default) or ``"ddg"`` (distributed discrete Gaussian).
        l2_norm_clip: clip norm ``C`` of each silo's update (public).
        rounds: planned number of rounds (every silo in every round).
        n_silos: silos in the federation (the most contributions a sum can hold).
        noise_multiplier: central noise standard deviation over ``C`` (before rounding).
        target_epsilon: alternatively, the silo-level epsilon to reach after ``rounds``.
        target_delta: the delta of every reported epsilon.
        bits: bit width of the modular sum (the secure-aggregation modulus is ``2^bits``).
        dropouts_tolerated: silos that may drop out without weakening the guarantee.
        collusion_bound: silos that may collude with the coordinator (``c``).
        rotation: apply the randomized Hadamard rotation before rounding.
        beta: conditional-rounding parameter in ``[0, 1)`` (``0`` turns conditioning off).
        wrap_probability: acceptable probability that the modular sum wraps in a round.
        guard_bits: top bits of the range kept empty so that a wrap lands in a band no
            honest sum reaches, where :func:`dp.distributed.decode` counts it.
    """

    mechanism: Mechanism = "skellam"
    l2_norm_clip: float
    rounds: int
    n_silos: int
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    target_delta: float = 1e-5
    bits: int = 20
    dropouts_tolerated: int = 0
    collusion_bound: int = 0
    rotation: bool = True
    beta: float = math.exp(-0.5)
    wrap_probability: float = 1e-9
    guard_bits: int = 1

    def __post_init__(self) -> None:
        if self.mechanism not in _MECHANISMS:
            raise InvalidPrivacyParameters(f"mechanism must be one of {_MECHANISMS}")
        _finite_positive("l2_norm_clip", self.l2_norm_clip)
        _count("rounds", self.rounds, 1)
        _count("n_silos", self.n_silos, 1)
        _count("dropouts_tolerated", self.dropouts_tolerated, 0)
        _count("collusion_bound", self.collusion_bound, 0)
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise InvalidPrivacyParameters("give exactly one of noise_multiplier, target_epsilon")
        if self.noise_multiplier is not None:
            _finite_positive("noise_multiplier", self.noise_multiplier)
        if self.target_epsilon is not None:
            _finite_positive("target_epsilon", self.target_epsilon)
        _finite_positive("target_delta", self.target_delta)
        if not self.target_delta < 1:
            raise InvalidPrivacyParameters("target_delta must be in (0, 1)")
        _count("bits", self.bits, _MIN_BITS)
        if self.bits > _MAX_BITS:
            raise InvalidPrivacyParameters(f"bits must be at most {_MAX_BITS}")
        if not isinstance(self.rotation, bool):
            raise InvalidPrivacyParameters("rotation must be a bool")
        if not (isinstance(self.beta, int | float) and 0 <= self.beta < 1):
            raise InvalidPrivacyParameters("beta must be in [0, 1)")
        _finite_positive("wrap_probability", self.wrap_probability)
        if not self.wrap_probability < 1:
            raise InvalidPrivacyParameters("wrap_probability must be in (0, 1)")
        _count("guard_bits", self.guard_bits, 0)
        if self.guard_bits > self.bits - 4:
            raise InvalidPrivacyParameters("guard_bits must leave at least 4 bits")
        if self.min_honest < 1:
            raise InvalidPrivacyParameters(
                "n_silos - dropouts_tolerated - collusion_bound must be at least 1"
            )

    @property
    def min_honest(self) -> int:
        """The fewest honest survivors whose noise shares must carry the central noise."""
        return self.n_silos - self.dropouts_tolerated - self.collusion_bound

    @property
    def min_contributors(self) -> int:
        """The fewest contributions a sum may hold and still keep the guarantee."""
        return self.n_silos - self.dropouts_tolerated


def rounded_norm_bound(scaled_clip: float, beta: float, dimension: int) -> float:
    """L2 norm bound after (conditional) stochastic rounding (KLS21, Theorem 1)."""
    deterministic = scaled_clip + math.sqrt(dimension)
    if beta == 0:
        return deterministic
    conditional = math.sqrt(
        scaled_clip**2
        + dimension / 4
        + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(dimension) / 2)
    )
    return min(deterministic, conditional)


def _skellam_tail(total_mu: float, log_target: float) -> float:
    """Smallest ``a`` with ``exp(-sup_t [t a - 2M (cosh t - 1)]) <= exp(-log_target)``.

    ``M = total_mu`` is the mean of each Poisson in ``Skellam = Pois(M) - Pois(M)``; the
    Chernoff exponent at the optimal ``t = asinh(a / 2M)`` is
    ``a asinh(a/2M) - 2M (sqrt(1 + (a/2M)^2) - 1)``, increasing in ``a``.
    """

    def exponent(a: float) -> float:
        u = a / (2 * total_mu)
        return a * math.asinh(u) - 2 * total_mu * (u * u / (math.sqrt(1 + u * u) + 1))

    hi = max(1.0, math.sqrt(2 * total_mu * 2 * log_target))
    while exponent(hi) < log_target:
        hi *= 2
    lo = 0.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if exponent(mid) >= log_target:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True, kw_only=True)
class DistributedDPPlan:
    """Everything a silo and the decoder need for one vector dimension.

    All integer-domain quantities are in units of the scaled, rounded vector.

    Attributes:
        config: the federation's settings.
        dimension: length of the float update.
        padded_dimension: length of the encoded integer vector.
        scale: ``gamma``, integer units per unit of the update.
        noise_multiplier: central noise standard deviation over ``C``.
        norm_bound: L2 bound ``D2`` of each rounded vector (conditional rounding enforces it).
        l1_bound: L1 bound ``D1`` of each rounded vector.
        central_variance: noise variance per coordinate of the sum of ``min_honest`` shares.
        share_parameter: Skellam: the mean ``mu`` of each Poisson of a silo's share;
            DDG: the ``sigma^2`` of a silo's discrete Gaussian.
        share_variance: variance per coordinate of one silo's noise share.
        sum_bound: bound on every coordinate of the sum of ``n_silos`` encodings (at most
            ``2^(bits-1-guard_bits) - 1``).
        wrap_probability_bound: probability that some coordinate exceeds ``sum_bound``.
        epsilon: silo-level epsilon after ``config.rounds`` rounds at ``config.target_delta``.
        epsilon_order: the RDP order that gave ``epsilon``.
        rdp_per_round: RDP of one round at each of :data:`RDP_ORDERS`.
    """

    config: DistributedDPConfig
    dimension: int
    padded_dimension: int
    scale: float
    noise_multiplier: float
    norm_bound: float
    l1_bound: float
    central_variance: float
    share_parameter: float
    share_variance: float
    sum_bound: float
    wrap_probability_bound: float
    epsilon: float
    epsilon_order: float
    rdp_per_round: tuple[float, ...] = field(repr=False)

    @property
    def bits(self) -> int:
        """Bit width of the modular sum."""
        return self.config.bits

    @property
    def modulus(self) -> int:
        """``2^bits``."""
        return 1 << self.config.bits

    def digest(self) -> bytes:
        """SHA-256 over the parameters that define this plan, in a canonical encoding.

        Two plans have the same digest exactly when they were made from the same settings for the same
        dimension, so they encode, noise and decode alike: mechanism, clip, (resolved) noise multiplier, bits,
        ``n_silos``, dropouts tolerated, collusion bound, rounds, delta, rotation, rounding and wrap
        parameters, and the dimension.

        Notes:
            Secure aggregation binds this digest into the session id (``secagg.RoundConfig.silo_dp_hash``), so
            silos that were shown different plans cannot complete a round together. Floats are encoded with
            ``float.hex`` (exact), keys sorted, one domain label and version: a change to any field, or to
            the encoding, changes the digest.
        """
        c = self.config
        fields = {
            "domain": _DIGEST_DOMAIN,
            "mechanism": c.mechanism,
            "l2_norm_clip": float(c.l2_norm_clip).hex(),
            "noise_multiplier": float(self.noise_multiplier).hex(),
            "bits": c.bits,
            "n_silos": c.n_silos,
            "dropouts_tolerated": c.dropouts_tolerated,
            "collusion_bound": c.collusion_bound,
            "rounds": c.rounds,
            "target_delta": float(c.target_delta).hex(),
            "rotation": c.rotation,
            "beta": float(c.beta).hex(),
            "wrap_probability": float(c.wrap_probability).hex(),
            "guard_bits": c.guard_bits,
            "dimension": self.dimension,
        }
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).digest()

    def sum_bound_for(self, n_contributors: int) -> float:
        """Per-coordinate bound on a sum of ``n_contributors`` encodings (same probability)."""
        return _sum_bound(
            self.config, self.padded_dimension, self.scale, self.share_parameter, n_contributors
        )

    def aggregate_noise_variance(self, n_contributors: int) -> float:
        """Noise variance per coordinate of the decoded float sum of ``n_contributors``.

        Stochastic rounding adds at most ``n_contributors / (4 scale^2)`` on top.
        """
        return n_contributors * self.share_variance / self.scale**2

    @property
    def sampling_distance_per_round(self) -> float:
        """Total variation of one round's noise (all silos, all coordinates) from the exact mechanism.

        ``n_silos * padded_dimension`` draws, each within
        :func:`dp.distributed.samplers.sampling_distance` of its target (zero when the samplers
        are exact for this share parameter); total variation is subadditive over independent draws.
        """
        per_draw = sampling_distance(self.config.mechanism, self.share_parameter)
        return self.config.n_silos * self.padded_dimension * per_draw

    def _with_sampling_error(self, epsilon: float, delta: float, rounds: int) -> float:
        return delta_with_sampling_error(
            delta=delta, epsilon=epsilon, distance=rounds * self.sampling_distance_per_round
        )

    def silo_level_epsilon(self, *, rounds: int, delta: float | None = None) -> SiloLevelEpsilon:
        """The silo-level guarantee after ``rounds`` rounds (RDP composed over rounds).

        Args:
            rounds: rounds taken part in so far (may exceed the planned number).
            delta: defaults to ``config.target_delta``.

        Notes:
            The returned delta adds the samplers' statistical distance over all rounds
            (:func:`dp.distributed.accounting.delta_with_sampling_error`); at ``2^-100`` per
            draw it is below ``10^-20`` for any practical federation, so it rarely changes
            the printed value.
        """
        _count("rounds", rounds, 1)
        d = self.config.target_delta if delta is None else delta
        eps, order = rdp_to_epsilon(rounds * np.asarray(self.rdp_per_round), delta=d)
        return SiloLevelEpsilon(
            epsilon=eps,
            delta=self._with_sampling_error(eps, d, rounds),
            rounds=rounds,
            order=order,
            mechanism=self.config.mechanism,
        )

    def silo_level_epsilon_after(
        self, *, spent_rdp: Sequence[float], releases: int, delta: float | None = None
    ) -> SiloLevelEpsilon:
        """The silo-level guarantee after one more release under this plan, on top of earlier releases.

        Args:
            spent_rdp: the RDP the earlier releases composed to, one value per order of
                :data:`~dp.distributed.accounting.RDP_ORDERS` (each release under its own plan).
            releases: how many earlier releases ``spent_rdp`` holds.
            delta: defaults to ``config.target_delta``.

        Notes:
            Composition adds RDP whatever plan each release was made under (Mironov 2017), so a silo that
            keeps the running sum of its releases' curves knows its guarantee even when the federation's plan
            changed between rounds; with one plan throughout this equals
            ``silo_level_epsilon(rounds=releases + 1)``.
        """
        _count("releases", releases, 0)
        spent = np.asarray(spent_rdp, dtype=np.float64)
        if spent.shape != (len(self.rdp_per_round),) or not np.all(np.isfinite(spent)):
            raise InvalidPrivacyParameters("spent_rdp must hold one finite value per RDP order")
        if np.any(spent < 0) or (releases == 0 and np.any(spent != 0)):
            raise InvalidPrivacyParameters(
                "spent_rdp must be non-negative, and zero without releases"
            )
        d = self.config.target_delta if delta is None else delta
        eps, order = rdp_to_epsilon(spent + np.asarray(self.rdp_per_round), delta=d)
        # Earlier releases' sampling error is charged at this plan's rate (one table bound
        # for every draw, dimensions of one federation).
        return SiloLevelEpsilon(
            epsilon=eps,
            delta=self._with_sampling_error(eps, d, releases + 1),
            rounds=releases + 1,
            order=order,
            mechanism=self.config.mechanism,
        )


def _share(config: DistributedDPConfig, scale: float, z: float) -> tuple[float, float, float]:
    """``(central_variance, share_parameter, share_variance)`` for a scale and multiplier."""
    central = (z * scale * config.l2_norm_clip) ** 2
    share_variance = central / config.min_honest
    parameter = share_variance / 2 if config.mechanism == "skellam" else share_variance
    return central, parameter, share_variance


def _sum_bound(
    config: DistributedDPConfig, dim: int, scale: float, parameter: float, n: int
) -> float:
    log_target = math.log(4 * dim / config.wrap_probability)
    signal = n * scale * config.l2_norm_clip
    if config.rotation:
        signal *= min(1.0, math.sqrt(2 * log_target / dim))
    if config.mechanism == "skellam":
        noise = _skellam_tail(n * parameter, log_target)
    else:
        noise = math.sqrt(2 * n * parameter * log_target)
    return signal + n + noise


def _rdp(
    config: DistributedDPConfig,
    dim: int,
    norm: float,
    l1: float,
    parameter: float,
    share_variance: float,
) -> NDArray[np.float64]:
    if config.mechanism == "skellam":
        return skellam_rdp(
            l2_sensitivity=norm, l1_sensitivity=l1, variance=config.min_honest * share_variance
        )
    return ddg_rdp(
        l2_sensitivity=norm,
        l1_sensitivity=l1,
        local_variance=parameter,
        n_contributors=config.min_honest,
        dimension=dim,
    )


def _choose_scale(config: DistributedDPConfig, dim: int, z: float) -> float:
    # The guard band above the limit stays empty unless something wrapped (decode counts it).
    limit = float((1 << (config.bits - 1 - config.guard_bits)) - 1)

    def fits(scale: float) -> bool:
        parameter = _share(config, scale, z)[1]
        return _sum_bound(config, dim, scale, parameter, config.n_silos) <= limit

    if config.n_silos + 1 > limit or not fits(limit * 1e-12 / config.l2_norm_clip):
        raise BitWidthTooSmall(
            f"{config.bits} bits cannot hold a sum of {config.n_silos} silos' encodings"
        )
    lo = limit * 1e-12 / config.l2_norm_clip
    hi = limit / config.l2_norm_clip
    while fits(hi):
        hi *= 2
    for _ in range(_BISECTION_STEPS):
        mid = math.sqrt(lo * hi)
        if fits(mid):
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    return lo


def _build(config: DistributedDPConfig, dimension: int, z: float) -> DistributedDPPlan:
    dim = padded_dimension(dimension) if config.rotation else dimension
    scale = _choose_scale(config, dim, z)
    central, parameter, share_variance = _share(config, scale, z)
    norm = rounded_norm_bound(scale * config.l2_norm_clip, config.beta, dim)
    l1 = min(math.sqrt(dim) * norm, norm**2)
    rdp = _rdp(config, dim, norm, l1, parameter, share_variance)
    eps, order = rdp_to_epsilon(config.rounds * rdp, delta=config.target_delta)
    return DistributedDPPlan(
        config=config,
        dimension=dimension,
        padded_dimension=dim,
        scale=scale,
        noise_multiplier=z,
        norm_bound=norm,
        l1_bound=l1,
        central_variance=central,
        share_parameter=parameter,
        share_variance=share_variance,
        sum_bound=_sum_bound(config, dim, scale, parameter, config.n_silos),
        wrap_probability_bound=config.wrap_probability,
        epsilon=eps,
        epsilon_order=order,
        rdp_per_round=tuple(float(v) for v in rdp),
    )


def plan(config: DistributedDPConfig, dimension: int) -> DistributedDPPlan:
    """Choose the scale, noise shares and bounds for vectors of ``dimension`` floats.

    With ``target_epsilon``, the noise multiplier is the smallest (to 0.1 %) whose
    silo-level epsilon after ``config.rounds`` rounds is at most the target.

    Args:
        config: the federation's settings.
        dimension: length of the float update.

    Returns:
        The plan.

    Raises:
        BitWidthTooSmall: ``config.bits`` cannot hold the sum of ``n_silos`` encodings.
        InvalidPrivacyParameters: the target epsilon cannot be reached at this bit width.

    Notes:
        See the module docstring for the scale, bit-width and noise-share choices.
    """
    _count("dimension", dimension, 1)
    if config.noise_multiplier is not None:
        return _build(config, dimension, config.noise_multiplier)
    target = config.target_epsilon
    if target is None:  # pragma: no cover - DistributedDPConfig guarantees one of the two
        raise InvalidPrivacyParameters("give noise_multiplier or target_epsilon")
    lo, hi = 1e-2, 1e4
    best = _build(config, dimension, hi)
    if best.epsilon > target:
        raise InvalidPrivacyParameters(
            f"epsilon {target} is out of reach with {config.bits} bits "
            f"(best: {best.epsilon:.3g}); use more bits"
        )
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        candidate = _build(config, dimension, mid)
        if candidate.epsilon <= target:
            hi, best = mid, candidate
        else:
            lo = mid
    return best
