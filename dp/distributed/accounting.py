"""Renyi-DP accounting for the Skellam and distributed discrete Gaussian mechanisms.

Pure math on floats: RDP of one round of each mechanism, composition over rounds, and the
conversion to ``(epsilon, delta)``. The continuous Gaussian curve is here only as the
reference the integer mechanisms are compared with.

Notes:
    - Unit of privacy: one silo's entire contribution to one round, under zero-out
      adjacency (the silo's whole clipped update replaced by zeros; the silo still adds its
      noise share), composed over the rounds it takes part in. Every silo takes part in
      every round (no subsampling): cross-silo federations do not sample silos, so no
      amplification is claimed.
    - Skellam: Agarwal, Kairouz and Liu (NeurIPS 2021, "The Skellam Mechanism for
      Differentially Private Federated Learning"), Theorem 3.5 / Corollary 3.6: adding
      symmetric Skellam noise of variance ``V`` per coordinate to an integer vector with L2
      sensitivity ``D2`` and L1 sensitivity ``D1`` is ``(alpha, eps)``-RDP for integer
      ``alpha > 1`` with
      ``eps = alpha D2^2 / (2 V) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 V^2), 3 D1 / (2 V))``.
    - Distributed discrete Gaussian: Kairouz, Liu and Steinke (ICML 2021, "The Distributed
      Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation"),
      Theorem 1 with the RDP form of their Proposition 14: the sum of ``n`` independent
      ``N_Z(0, sigma^2)`` in ``d`` coordinates, with
      ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))``, is RDP with
      ``eps(alpha) = min(alpha/2 l2^2 + tau d, alpha/2 (l2^2 + 2 l1 tau + tau^2 d),
      alpha/2 (l2 + sqrt(d) tau)^2)`` where ``l2 = D2 / sqrt(n sigma^2)`` and
      ``l1 = D1 / sqrt(n sigma^2)``.
    - Composition adds RDP (Mironov 2017). Conversion to ``(epsilon, delta)`` uses
      Balle et al. (AISTATS 2020, "Hypothesis testing interpretations and Renyi DP"),
      Theorem 21, the same conversion as Opacus' RDP accountant:
      ``eps = rdp - (ln delta + ln alpha) / (alpha - 1) + ln((alpha - 1) / alpha)``.
    - Noise drawn from tables within a proven statistical distance of the target (see
      :mod:`dp.distributed.samplers`) adds ``(1 + e^eps)`` times the total distance to
      delta (:func:`delta_with_sampling_error`).
    - Orders are integers (2..256 and a few larger): Corollary 3.6 is stated for integer
      orders, and using one grid for both mechanisms and the Gaussian reference keeps the
      comparison fair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dp.errors import InvalidPrivacyParameters

__all__ = [
    "RDP_ORDERS",
    "UNIT_OF_PRIVACY",
    "SiloLevelEpsilon",
    "ddg_rdp",
    "delta_with_sampling_error",
    "gaussian_rdp",
    "rdp_to_epsilon",
    "skellam_rdp",
]

RDP_ORDERS: tuple[int, ...] = (*range(2, 257), 320, 384, 512, 768, 1024)
UNIT_OF_PRIVACY = (
    "one silo's entire contribution per round (zero-out adjacency: the silo's whole clipped "
    "update replaced by zeros), composed over rounds"
)


def _orders(orders: tuple[int, ...]) -> NDArray[np.float64]:
    array = np.asarray(orders, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or np.any(array <= 1):
        raise InvalidPrivacyParameters("RDP orders must be a non-empty list of values > 1")
    return array


def skellam_rdp(
    *,
    l2_sensitivity: float,
    l1_sensitivity: float,
    variance: float,
    orders: tuple[int, ...] = RDP_ORDERS,
) -> NDArray[np.float64]:
    """RDP of one release of the multi-dimensional Skellam mechanism, per order.

    Args:
        l2_sensitivity: L2 sensitivity ``D2`` of the integer vector.
        l1_sensitivity: L1 sensitivity ``D1``.
        variance: total Skellam variance ``V`` per coordinate (``2 mu`` for
            ``Poisson(mu) - Poisson(mu)``).
        orders: integer RDP orders.

    Returns:
        ``eps(alpha)`` for each order.

    Notes:
        Agarwal, Kairouz and Liu (2021), Corollary 3.6 (module docstring).
    """
    if variance <= 0 or l2_sensitivity < 0 or l1_sensitivity < 0:
        raise InvalidPrivacyParameters("variance must be positive and sensitivities >= 0")
    a = _orders(orders)
    d2sq, d1, v = l2_sensitivity**2, l1_sensitivity, variance
    extra = np.minimum(((2 * a - 1) * d2sq + 6 * d1) / (4 * v**2), 3 * d1 / (2 * v))
    return np.asarray(a * d2sq / (2 * v) + extra, dtype=np.float64)


def ddg_rdp(
    *,
    l2_sensitivity: float,
    l1_sensitivity: float,
    local_variance: float,
    n_contributors: int,
    dimension: int,
    orders: tuple[int, ...] = RDP_ORDERS,
) -> NDArray[np.float64]:
    """RDP of the sum of ``n_contributors`` discrete Gaussians ``N_Z(0, local_variance)``.

    Args:
        l2_sensitivity: L2 sensitivity ``D2`` of the integer vector.
        l1_sensitivity: L1 sensitivity ``D1``.
        local_variance: ``sigma^2`` of each contributor's discrete Gaussian.
        n_contributors: number of independent noise shares in the sum (the honest ones).
        dimension: number of coordinates ``d``.
        orders: RDP orders.

    Returns:
        ``eps(alpha)`` for each order.

    Notes:
        Kairouz, Liu and Steinke (2021), Theorem 1 in RDP form (module docstring); the
        ``tau`` term is what a sum of discrete Gaussians loses against one discrete Gaussian.
    """
    if local_variance <= 0 or n_contributors < 1 or dimension < 1:
        raise InvalidPrivacyParameters("variance, contributors and dimension must be positive")
    a = _orders(orders)
    central_std = math.sqrt(n_contributors * local_variance)
    l2 = l2_sensitivity / central_std
    l1 = l1_sensitivity / central_std
    tau = 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * local_variance * k / (k + 1)) for k in range(1, n_contributors)
    )
    term_1 = a / 2 * l2**2 + tau * dimension
    term_2 = a / 2 * (l2**2 + 2 * l1 * tau + tau**2 * dimension)
    term_3 = a / 2 * (l2 + math.sqrt(dimension) * tau) ** 2
    return np.asarray(np.minimum(np.minimum(term_1, term_2), term_3), dtype=np.float64)


def gaussian_rdp(
    *, noise_multiplier: float, orders: tuple[int, ...] = RDP_ORDERS
) -> NDArray[np.float64]:
    """RDP ``alpha / (2 z^2)`` of the continuous Gaussian mechanism (the reference curve).

    Notes:
        Mironov (2017), Proposition 7.
    """
    if not noise_multiplier > 0:
        raise InvalidPrivacyParameters("noise_multiplier must be positive")
    a = _orders(orders)
    return np.asarray(a / (2 * noise_multiplier**2), dtype=np.float64)


def rdp_to_epsilon(
    rdp: NDArray[np.float64], *, delta: float, orders: tuple[int, ...] = RDP_ORDERS
) -> tuple[float, float]:
    """Convert an RDP curve to ``(epsilon, best order)`` at ``delta``.

    Notes:
        Balle et al. (2020), Theorem 21, as in Opacus; epsilon is clamped at 0 and must be
        finite, otherwise :class:`InvalidPrivacyParameters` is raised.
    """
    if not 0 < delta < 1:
        raise InvalidPrivacyParameters("delta must be in (0, 1)")
    a = _orders(orders)
    curve = np.asarray(rdp, dtype=np.float64)
    if curve.shape != a.shape or np.any(np.isnan(curve)) or np.any(curve < 0):
        raise InvalidPrivacyParameters("the RDP curve must be non-negative, one value per order")
    eps = curve - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    best = int(np.nanargmin(eps))
    epsilon = max(0.0, float(eps[best]))
    if not math.isfinite(epsilon):
        raise InvalidPrivacyParameters("epsilon is not finite")
    return epsilon, float(a[best])


def delta_with_sampling_error(*, delta: float, epsilon: float, distance: float) -> float:
    """The delta of a mechanism whose noise is within total variation ``distance`` of the analysed one.

    Args:
        delta: the analysed mechanism's delta at ``epsilon``.
        epsilon: its epsilon.
        distance: total variation between the sampled and the analysed output
            distributions, for every input (``rounds * n_silos * d`` times the per-draw
            bound of :func:`dp.distributed.samplers.sampling_distance`).

    Returns:
        ``delta + (1 + e^epsilon) distance``, capped at 1.

    Notes:
        If ``M`` is ``(eps, delta)``-DP and ``TV(M(D), M'(D)) <= eta`` for every ``D``, then
        for every event ``S``: ``P[M'(D) in S] <= P[M(D) in S] + eta <= e^eps P[M(D') in S]
        + delta + eta <= e^eps P[M'(D') in S] + delta + (1 + e^eps) eta``: the proof is
        this line (the coupling argument behind every "statistically close sampler"
        claim). Adjacent inputs here are the zero-out pairs of :data:`UNIT_OF_PRIVACY`.
    """
    if distance < 0 or not math.isfinite(distance):
        raise InvalidPrivacyParameters("distance must be a finite non-negative number")
    if distance == 0:
        return delta
    if epsilon > 700:  # e^eps overflows: no meaningful delta left
        return 1.0
    return min(1.0, delta + (1.0 + math.exp(epsilon)) * distance)


@dataclass(frozen=True, kw_only=True)
class SiloLevelEpsilon:
    """A silo-level privacy guarantee, labelled with its unit of privacy.

    Attributes:
        epsilon: the silo-level epsilon after ``rounds`` rounds.
        delta: the matching delta.
        rounds: rounds composed.
        order: the RDP order that gave the bound.
        mechanism: ``"skellam"`` or ``"ddg"``.
        unit_of_privacy: what one unit of protection is (NIST SP 800-226 asks for it).
        accountant: how the number was computed.
    """

    epsilon: float
    delta: float
    rounds: int
    order: float
    mechanism: str
    unit_of_privacy: str = UNIT_OF_PRIVACY
    accountant: str = "rdp (integer orders) + Balle et al. 2020 conversion"
