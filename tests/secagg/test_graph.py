"""The SecAgg+ Harary graph and its parameter function (Bell et al., CCS 2020).

Hypothesis properties of the graph (degree, symmetry, connectivity, k-connectivity, determinism), the failure
bounds checked against exhaustive enumeration on small rings (so they are upper bounds, not estimates), and the
parameter function's choices and refusals.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import InvalidParameters
from secagg.masking.graph import (
    CommunicationGraph,
    check_graph_security,
    communication_graph,
    correctness_failure,
    secaggplus_parameters,
    security_failure,
)
from tests.secagg.harness import make_config, make_federation


def members(n: int) -> list[str]:
    return [f"silo-{i:03d}" for i in range(n)]


def connected(graph: CommunicationGraph, removed: Collection[str] = ()) -> bool:
    rest = [m for m in graph.members if m not in removed]
    if not rest:
        return True
    seen, queue = {rest[0]}, deque([rest[0]])
    while queue:
        for peer in graph.neighbours(queue.popleft()):
            if peer not in removed and peer not in seen:
                seen.add(peer)
                queue.append(peer)
    return len(seen) == len(rest)


@st.composite
def graphs(draw: st.DrawFn) -> CommunicationGraph:
    n = draw(st.integers(min_value=4, max_value=60))
    k = 2 * draw(st.integers(min_value=1, max_value=(n - 2) // 2))
    return communication_graph(members(n), k, draw(st.binary(min_size=32, max_size=32)))


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_harary_graph_is_k_regular_and_symmetric(graph: CommunicationGraph) -> None:
    for silo in graph.members:
        neighbours = graph.neighbours(silo)
        assert len(neighbours) == graph.degree
        assert silo not in neighbours
        assert graph.closed_neighbourhood(silo) == neighbours | {silo}
        for peer in neighbours:
            assert silo in graph.neighbours(peer)


@settings(max_examples=60, deadline=None)
@given(graphs(), st.data())
def test_harary_graph_stays_connected_without_any_k_minus_1_silos(
    graph: CommunicationGraph, data: st.DataObject
) -> None:
    """H(k, n) is k-connected (Harary 1962): removing any k - 1 silos leaves it connected."""
    assert connected(graph)
    removed = data.draw(
        st.sets(st.sampled_from(graph.members), max_size=graph.degree - 1), label="removed"
    )
    assert connected(graph, removed)


@settings(max_examples=30, deadline=None)
@given(graphs())
def test_every_party_computes_the_same_graph_from_the_session(graph: CommunicationGraph) -> None:
    session = b"s" * 32
    one = communication_graph(graph.members, graph.degree, session)
    other = communication_graph(list(reversed(graph.members)), graph.degree, session)
    assert all(one.neighbours(m) == other.neighbours(m) for m in graph.members)


def test_the_session_decides_the_neighbours() -> None:
    ids = members(40)
    first = communication_graph(ids, 6, b"\x01" * 32)
    second = communication_graph(ids, 6, b"\x02" * 32)
    assert any(first.neighbours(m) != second.neighbours(m) for m in ids)


def test_degree_zero_is_the_full_graph() -> None:
    graph = communication_graph(members(5), 0, b"")
    assert graph.is_full
    assert graph.neighbours("silo-002") == frozenset(members(5)) - {"silo-002"}


@pytest.mark.parametrize(("n", "k"), [(10, 3), (10, 0 - 2), (10, 10), (10, 9), (4, 4)])
def test_invalid_degrees_are_refused(n: int, k: int) -> None:
    with pytest.raises(InvalidParameters, match="even k"):
        communication_graph(members(n), k, b"s")


# --- the bounds are upper bounds: exhaustive enumeration on small rings --------------------------------------


def ring(n: int, k: int) -> CommunicationGraph:
    """H(k, n) in roster order: by symmetry of the uniform order, a uniformly random set of silos placed on it
    is a uniformly random set of ring positions."""
    return CommunicationGraph(members(n), k, members(n))


@pytest.mark.parametrize(("n", "k", "removed"), [(10, 2, 3), (10, 4, 5), (12, 4, 6), (12, 6, 7)])
def test_disconnection_bound_covers_every_placement(n: int, k: int, removed: int) -> None:
    graph = ring(n, k)
    placements = list(itertools.combinations(graph.members, removed))
    exact = Fraction(sum(not connected(graph, r) for r in placements), len(placements))
    bound = security_failure(n=n, degree=k, threshold=k + 1, collusion=removed)
    assert exact > 0  # the enumeration does find disconnecting placements
    assert exact <= bound


@pytest.mark.parametrize(("n", "k", "t", "c"), [(10, 4, 3, 2), (12, 4, 4, 3), (11, 6, 5, 3)])
def test_neighbourhood_corruption_bound_covers_every_placement(
    n: int, k: int, t: int, c: int
) -> None:
    """Fails when some honest silo has >= 2t - k - 1 corrupted neighbours (then two survivor sets could each
    gather t signatures in its neighbourhood); connectivity failures are counted too."""
    graph = ring(n, k)
    bad = 0
    placements = list(itertools.combinations(graph.members, c))
    for corrupted in placements:
        crowded = any(
            len(graph.neighbours(m) & set(corrupted)) >= 2 * t - k - 1
            for m in graph.members
            if m not in corrupted
        )
        bad += crowded or not connected(graph, corrupted)
    exact = Fraction(bad, len(placements))
    assert 0 < exact <= security_failure(n=n, degree=k, threshold=t, collusion=c)


@pytest.mark.parametrize(("n", "k", "t", "d"), [(10, 4, 4, 3), (12, 4, 3, 4), (11, 6, 5, 3)])
def test_correctness_bound_covers_every_dropout_set(n: int, k: int, t: int, d: int) -> None:
    graph = ring(n, k)
    placements = list(itertools.combinations(graph.members, d))
    failing = sum(
        any(len(graph.closed_neighbourhood(m) - set(gone)) < t for m in graph.members)
        for gone in placements
    )
    exact = Fraction(failing, len(placements))
    assert 0 < exact <= correctness_failure(n=n, degree=k, threshold=t, dropouts=d)


# --- the parameter function -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "gamma", "delta"),
    [(100, 0.05, 0.05), (200, 0.1, 0.1), (200, 0.2, 0.1), (500, 0.05, 0.05)],
)
def test_parameters_meet_both_bounds_and_are_the_smallest_degree(
    n: int, gamma: float, delta: float
) -> None:
    p = secaggplus_parameters(n=n, dropout_rate=delta, collusion_fraction=gamma)
    assert p.degree < n - 1 and p.degree % 2 == 0
    assert (p.degree + 1) / 2 < p.threshold <= p.degree + 1
    sec = security_failure(
        n=n, degree=p.degree, threshold=p.threshold, collusion=p.collusion, dropouts=p.dropouts
    )
    cor = correctness_failure(n=n, degree=p.degree, threshold=p.threshold, dropouts=p.dropouts)
    assert sec <= Fraction(1, 2**40) and cor <= Fraction(1, 2**20)
    # the next smaller even degree fails one bound for every threshold
    k = p.degree - 2
    if k >= 2:
        assert all(
            security_failure(n=n, degree=k, threshold=t, collusion=p.collusion, dropouts=p.dropouts)
            > Fraction(1, 2**40)
            or correctness_failure(n=n, degree=k, threshold=t, dropouts=p.dropouts)
            > Fraction(1, 2**20)
            for t in range(k // 2 + 1, k + 2)
        )
    # and for that degree, the threshold is the smallest that is secure
    assert (
        security_failure(
            n=n,
            degree=p.degree,
            threshold=p.threshold - 1,
            collusion=p.collusion,
            dropouts=p.dropouts,
        )
        > Fraction(1, 2**40)
        or p.threshold - 1 <= (p.degree + 1) / 2
    )


def test_the_graph_saves_work_at_scale() -> None:
    p = secaggplus_parameters(n=200, dropout_rate=0.1, collusion_fraction=0.1)
    assert p.degree <= 60  # each silo shares to and masks with about a quarter of the others
    assert p.min_honest_per_sum == p.degree + 2 - p.threshold


def test_a_count_and_a_fraction_give_the_same_parameters() -> None:
    by_count = secaggplus_parameters(n=100, dropout_rate=0.05, collusion=5)
    by_fraction = secaggplus_parameters(n=100, dropout_rate=0.05, collusion_fraction=0.05)
    assert by_count == by_fraction


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"n": 12, "dropout_rate": 0.3, "collusion_fraction": 0.3}, "no Harary graph on 12 silos"),
        ({"n": 100, "dropout_rate": 1.0, "collusion": 0}, "dropout_rate"),
        ({"n": 100, "dropout_rate": 0.1, "collusion": 100}, "collusion bound"),
        ({"n": 100, "dropout_rate": 0.1}, "exactly one of"),
        (
            {"n": 100, "dropout_rate": 0.1, "collusion": 1, "collusion_fraction": 0.1},
            "exactly one of",
        ),
        ({"n": 3, "dropout_rate": 0.1, "collusion": 0}, "at least 4 silos"),
        ({"n": 100, "dropout_rate": 0.1, "collusion": 1, "security": Fraction(0)}, "in \\(0, 1\\)"),
    ],
)
def test_impossible_settings_are_refused_in_one_line(kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidParameters, match=why) as caught:
        secaggplus_parameters(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_a_silo_refuses_a_graph_too_weak_for_its_collusion_bound() -> None:
    p = secaggplus_parameters(n=200, dropout_rate=0.1, collusion_fraction=0.1)
    check_graph_security(n=200, degree=p.degree, threshold=p.threshold, collusion=p.collusion)
    with pytest.raises(InvalidParameters, match="fails privacy with probability"):
        check_graph_security(
            n=200, degree=p.degree, threshold=p.degree // 2 + 1, collusion=p.collusion
        )


# --- the round config binds the graph ---------------------------------------------------------------------------


def test_round_config_binds_the_degree_and_checks_the_neighbourhood_threshold() -> None:
    fed = make_federation(12)
    full = make_config(fed, length=4)
    sparse = make_config(fed, length=4, threshold=3, graph_degree=4)
    assert sparse.params_hash() != full.params_hash()
    assert (
        sparse.params_hash()
        != make_config(fed, length=4, threshold=4, graph_degree=6).params_hash()
    )
    assert sparse.local_required == 3 and full.local_required == full.required_survivors
    with pytest.raises(InvalidParameters, match="even k"):
        make_config(fed, length=4, threshold=3, graph_degree=5)
    with pytest.raises(InvalidParameters, match=r"\(k \+ 1\)/2 < t <= k \+ 1"):
        make_config(fed, length=4, threshold=2, graph_degree=4)
    with pytest.raises(InvalidParameters, match=r"\(k \+ 1\)/2 < t <= k \+ 1"):
        make_config(fed, length=4, threshold=6, graph_degree=4)
