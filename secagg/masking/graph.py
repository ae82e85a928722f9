"""The SecAgg+ communication graph (Bell et al., CCS 2020): a k-regular Harary graph and its parameters.

Every silo masks with, and secret-shares to, only its k neighbours instead of all n - 1 others, so a silo's
cost grows with k (logarithmic in n for fixed rates) instead of n. The graph is the Harary graph H(k, n) -- the
circulant graph that joins each position on a cycle to the k/2 nearest positions on either side -- laid over
the roster in an order derived from the session id, so every party computes the same graph and nobody picks
neighbours.

Notes:
    The parameters follow the three conditions of Bell, Bonawitz, Gascon, Lepoint and Raykova, "Secure
    single-server aggregation with (poly)logarithmic overhead" (CCS 2020, ePrint 2020/704), for a graph to be
    good: (1) the graph without the corrupted and dropped silos stays connected, so the masks of the honest
    survivors only cancel in their total; (2) no neighbourhood holds enough corrupted silos to learn a secret
    or to make its honest members reveal both share types of one peer; (3) every neighbourhood keeps at least
    t survivors, so each secret can be reconstructed. The paper bounds these for random graphs; here they are
    bounded directly for the Harary graph under a uniformly random order, with exact hypergeometric tails and
    union bounds (:func:`security_failure`, :func:`correctness_failure`), so the stated failure probabilities
    are upper bounds for exactly the graph the protocol builds.

    Condition (2) in the active-adversary form: an honest holder reveals a share of peer P only with t valid
    signatures *from P's closed neighbourhood* N[P] (P and its k neighbours) on the identical survivor set.
    Two different survivor sets for P would need 2t signatures from N[P], and an honest silo signs once, so with
    c_P corrupted members 2t <= (k + 1 - c_P) + 2 c_P; hence t > (k + 1 + c_P) / 2 -- the Bonawitz rule
    t > (n + c) / 2 (CCS 2017, section 6.3) applied to the k + 1 members of one neighbourhood. The parameters
    make c_P < 2t - k - 1 hold for every neighbourhood except with probability ``security``.

    What the bounds assume: the corrupted silos (at most c) are fixed before the session id exists, and silos
    that really drop out do so independently of the graph. A coordinator that *excludes* silos it chose after
    seeing the graph can split the survivors into arcs and learn each arc's sum; every released sum still
    covers at least k + 2 - t honest silos (:attr:`GraphParameters.min_honest_per_sum`), because a survivor's
    self-mask seed is reconstructed only from t signers in its neighbourhood, of whom at most 2t - k - 2 are
    corrupted. The session id depends on which advertisements the coordinator admits, so a coordinator that
    tries many admissions multiplies ``security`` by the number of tries; 2^-40 leaves room for that.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from secagg.errors import InvalidParameters
from secagg.hazmat.keys import encode_fields

__all__ = [
    "DEFAULT_CORRECTNESS",
    "DEFAULT_SECURITY",
    "CommunicationGraph",
    "GraphParameters",
    "check_graph_shape",
    "check_graph_security",
    "communication_graph",
    "correctness_failure",
    "secaggplus_parameters",
    "security_failure",
]

DEFAULT_SECURITY = Fraction(1, 2**40)
"""Default bound on the probability that the graph breaks privacy (conditions 1 and 2)."""
DEFAULT_CORRECTNESS = Fraction(1, 2**20)
"""Default bound on the probability that a round with the planned dropouts cannot be unmasked (condition 3)."""


class CommunicationGraph:
    """Who masks with and shares to whom in one round: the full graph, or a Harary graph over the roster.

    Args:
        members: the roster's silo ids.
        degree: k, even, in [2, n - 2]; 0 for the full graph (every silo a neighbour of every other).
        order: the members in cycle order (a permutation of ``members``); ignored for the full graph.
    """

    def __init__(self, members: Iterable[str], degree: int, order: Sequence[str] = ()) -> None:
        self.members = tuple(sorted(members))
        self.degree = degree
        everyone = frozenset(self.members)
        if degree == 0:
            self._closed = {m: everyone for m in self.members}
            return
        if sorted(order) != list(self.members):
            raise ValueError("order must be a permutation of the members")
        n, half = len(order), degree // 2
        self._closed = {
            silo: frozenset(order[(i + offset) % n] for offset in range(-half, half + 1))
            for i, silo in enumerate(order)
        }

    def __repr__(self) -> str:
        return f"CommunicationGraph(n={len(self.members)}, degree={self.degree or 'full'})"

    @property
    def is_full(self) -> bool:
        """Whether every silo is a neighbour of every other (the Bonawitz graph)."""
        return self.degree == 0

    def closed_neighbourhood(self, silo: str) -> frozenset[str]:
        """N[silo]: the silo and its neighbours, i.e. who holds shares of its secrets (itself included)."""
        try:
            return self._closed[silo]
        except KeyError:
            raise ValueError(f"{silo!r} is not in the graph") from None

    def neighbours(self, silo: str) -> frozenset[str]:
        """N(silo): the silos it masks with and shares to."""
        return self.closed_neighbourhood(silo) - {silo}


def communication_graph(members: Iterable[str], degree: int, session: bytes) -> CommunicationGraph:
    """The round's graph: full for ``degree == 0``, else H(degree, n) over the members in session order.

    Notes:
        The cycle order sorts the members by SHA-256(label, session id, silo id): a uniformly random order in
        the random-oracle model that no party chooses and every party computes alike. The session id binds
        the round, the parameters and every admitted advertisement (with the silos' fresh keys), so the order
        is unknown before the silos have advertised.
    """
    members = tuple(members)
    if degree == 0:
        return CommunicationGraph(members, 0)
    check_graph_shape(n=len(members), degree=degree)

    def rank(silo: str) -> bytes:
        return hashlib.sha256(encode_fields("secaggplus-harary-order", session, silo)).digest()

    return CommunicationGraph(members, degree, sorted(members, key=rank))


def check_graph_shape(*, n: int, degree: int, threshold: int | None = None) -> None:
    """Validate a Harary graph's degree (and a per-neighbourhood threshold) for ``n`` silos.

    Raises:
        InvalidParameters: k odd or outside [2, n - 2], or t outside ((k + 1) / 2, k + 1].
    """
    if degree % 2 or not 2 <= degree <= n - 2:
        raise InvalidParameters(
            f"graph degree {degree} is invalid for {n} silos: need an even k in [2, n - 2]"
        )
    if threshold is not None and not (degree + 1) / 2 < threshold <= degree + 1:
        raise InvalidParameters(
            f"threshold {threshold} is invalid for degree {degree}: need (k + 1)/2 < t <= k + 1"
        )


def _upper_tail(population: int, marked: int, draws: int, at_least: int) -> Fraction:
    """P(X >= at_least) for X hypergeometric: ``draws`` of ``population`` without replacement, ``marked``
    marked."""
    top = min(marked, draws)
    if at_least > top:
        return Fraction(0)
    at_least = max(at_least, 0)
    favourable = sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i)
        for i in range(at_least, top + 1)
    )
    return Fraction(favourable, math.comb(population, draws))


def _disconnection(n: int, degree: int, removed: int) -> Fraction:
    """Upper bound on P(H(k, n) minus ``removed`` uniformly placed silos is disconnected).

    With h = k/2, two remaining silos consecutive on the cycle are adjacent when fewer than h removed silos lie
    between them, so the rest is connected unless two disjoint runs of h removed positions exist. A union bound
    over the n(n - 1)/2 pairs of run starts, each needing 2h given positions all removed, gives the bound.
    """
    span = degree  # 2h positions
    if removed < span:
        return Fraction(0)
    hit = Fraction(math.perm(removed, span), math.perm(n, span))
    return min(Fraction(1), n * (n - 1) // 2 * hit)


def security_failure(
    *, n: int, degree: int, threshold: int, collusion: int, dropouts: int = 0
) -> Fraction:
    """Upper bound on the probability that the graph breaks privacy (good-graph conditions 1 and 2).

    Args:
        n: silos on the roster.
        degree: k.
        threshold: per-neighbourhood threshold t.
        collusion: corrupted silos c (fixed before the graph is drawn).
        dropouts: honest silos that drop independently of the graph.

    Returns:
        (n - c) P(HG(n - 1, c, k) >= 2t - k - 1) (some honest silo's neighbourhood holds too many corrupted
        silos) plus the bound of :func:`_disconnection` for c + dropouts removed silos.
    """
    check_graph_shape(n=n, degree=degree, threshold=threshold)
    crowded = (n - collusion) * _upper_tail(n - 1, collusion, degree, 2 * threshold - degree - 1)
    return min(Fraction(1), crowded + _disconnection(n, degree, min(n, collusion + dropouts)))


def correctness_failure(*, n: int, degree: int, threshold: int, dropouts: int) -> Fraction:
    """Upper bound on the probability that some secret cannot be reconstructed (good-graph condition 3).

    n P(HG(n, d, k + 1) >= k + 2 - t): some closed neighbourhood (k + 1 uniformly placed silos) loses more than
    k + 1 - t of its members to the d dropouts.
    """
    check_graph_shape(n=n, degree=degree, threshold=threshold)
    return min(Fraction(1), n * _upper_tail(n, dropouts, degree + 1, degree + 2 - threshold))


@dataclass(frozen=True, kw_only=True)
class GraphParameters:
    """A Harary graph's degree and threshold with the failure bounds they meet.

    Attributes:
        n: silos on the roster.
        degree: k (each silo masks with and shares to k others).
        threshold: t of the k + 1 members of a closed neighbourhood.
        collusion: corrupted silos c the bounds assume.
        dropouts: dropped silos d the bounds assume.
        security_failure: bound on P(privacy fails) (:func:`security_failure`).
        correctness_failure: bound on P(the round cannot be unmasked with d dropouts).
    """

    n: int
    degree: int
    threshold: int
    collusion: int
    dropouts: int
    security_failure: float
    correctness_failure: float

    @property
    def min_honest_per_sum(self) -> int:
        """Fewest honest silos in any sum a coordinator can obtain by excluding silos of its choice: k + 2 - t."""
        return self.degree + 2 - self.threshold


def _resolve_collusion(n: int, collusion: int | None, collusion_fraction: float | None) -> int:
    if (collusion is None) == (collusion_fraction is None):
        raise InvalidParameters("give exactly one of collusion (a count) or collusion_fraction")
    if collusion_fraction is not None:
        if not 0 <= collusion_fraction < 1:
            raise InvalidParameters("collusion_fraction must be in [0, 1)")
        collusion = math.ceil(collusion_fraction * n)
    assert collusion is not None
    if not 0 <= collusion < n:
        raise InvalidParameters("collusion bound c must be in [0, n)")
    return collusion


def secaggplus_parameters(
    *,
    n: int,
    dropout_rate: float,
    collusion: int | None = None,
    collusion_fraction: float | None = None,
    security: Fraction = DEFAULT_SECURITY,
    correctness: Fraction = DEFAULT_CORRECTNESS,
) -> GraphParameters:
    """The smallest even degree k and, for it, the smallest threshold t that meet both failure bounds.

    Args:
        n: silos on the roster.
        dropout_rate: fraction delta of silos that may drop out during a round, at any stage.
        collusion: corrupted silos c, or
        collusion_fraction: their fraction gamma (c = ceil(gamma n)).
        security: bound on the probability that the graph breaks privacy.
        correctness: bound on the probability that a round with ceil(delta n) dropouts cannot be unmasked.

    Raises:
        InvalidParameters: the settings are out of range, or no Harary graph on n silos meets both bounds (the
            message says which; the full graph with t > (n + c)/2 is the remedy).

    Notes:
        Security falls as t grows (fewer neighbourhoods can be split) and correctness falls as t shrinks (more
        survivors are enough), so for each k the smallest t meeting ``security`` is the best candidate. Bell et
        al. (CCS 2020) compute the same trade-off for random graphs; the bounds here are those of
        :func:`security_failure` and :func:`correctness_failure` for the Harary graph.
    """
    if n < 4:
        raise InvalidParameters(f"a SecAgg+ graph needs at least 4 silos; {n} given")
    if not 0 <= dropout_rate < 1:
        raise InvalidParameters("dropout_rate must be in [0, 1)")
    if not 0 < security < 1 or not 0 < correctness < 1:
        raise InvalidParameters("failure probabilities must be in (0, 1)")
    c = _resolve_collusion(n, collusion, collusion_fraction)
    d = math.ceil(dropout_rate * n)
    for k in range(2, n - 1, 2):
        low, high = k // 2 + 1, k + 1  # t in ((k + 1)/2, k + 1]
        if security_failure(n=n, degree=k, threshold=high, collusion=c, dropouts=d) > security:
            continue
        while low < high:  # smallest t meeting the security bound (monotone in t)
            mid = (low + high) // 2
            if security_failure(n=n, degree=k, threshold=mid, collusion=c, dropouts=d) <= security:
                high = mid
            else:
                low = mid + 1
        failing = correctness_failure(n=n, degree=k, threshold=low, dropouts=d)
        if failing <= correctness:
            return GraphParameters(
                n=n,
                degree=k,
                threshold=low,
                collusion=c,
                dropouts=d,
                security_failure=float(
                    security_failure(n=n, degree=k, threshold=low, collusion=c, dropouts=d)
                ),
                correctness_failure=float(failing),
            )
    raise InvalidParameters(
        f"no Harary graph on {n} silos keeps privacy within {float(security):.3g} and unmasking within "
        f"{float(correctness):.3g} for {c} colluding and {d} dropped silos; use the full graph"
    )


def check_graph_security(
    *, n: int, degree: int, threshold: int, collusion: int, security: Fraction = DEFAULT_SECURITY
) -> None:
    """What a silo checks of an announced graph by itself: privacy within ``security`` against ``collusion``.

    Raises:
        InvalidParameters: the graph's shape is invalid or its privacy failure bound exceeds ``security``.
    """
    failing = security_failure(n=n, degree=degree, threshold=threshold, collusion=collusion)
    if failing > security:
        raise InvalidParameters(
            f"graph degree {degree} with threshold {threshold} on {n} silos fails privacy with probability up to "
            f"{float(failing):.3g} against {collusion} colluding silos (allowed {float(security):.3g})"
        )
