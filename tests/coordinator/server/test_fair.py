"""FairQueue (per-silo FIFO queues served round-robin) as hypothesis properties, and the FairExecutor on it."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.server.fair import FairExecutor, FairQueue

KEYS = st.sampled_from("abcde")
# a schedule: ("put", key) adds the next numbered item for key; ("get", None) takes one if any
OPS = st.lists(
    st.one_of(st.tuples(st.just("put"), KEYS), st.tuples(st.just("get"), st.none())),
    max_size=200,
)


def run(ops: list[tuple[str, str | None]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Apply ``ops`` then drain; returns (items put, items got in order)."""
    queue: FairQueue[str, int] = FairQueue()
    put: list[tuple[str, int]] = []
    got: list[tuple[str, int]] = []
    for i, (op, key) in enumerate(ops):
        if op == "put":
            assert key is not None
            queue.put(key, i)
            put.append((key, i))
        elif queue:
            got.append(queue.get())
    while queue:
        got.append(queue.get())
    return put, got


@given(OPS)
def test_every_item_comes_out_once_and_in_order_per_key(ops: list[tuple[str, str | None]]) -> None:
    put, got = run(ops)
    assert sorted(got) == sorted(put)  # no loss, no duplication
    per_key: dict[str, list[int]] = defaultdict(list)
    for key, item in got:
        per_key[key].append(item)
    assert all(items == sorted(items) for items in per_key.values())  # FIFO per key


@given(st.dictionaries(KEYS, st.integers(min_value=1, max_value=20), min_size=1))
def test_keys_are_served_in_turn(backlog: dict[str, int]) -> None:
    """With everything queued up front, every pass takes one item of each key that still has some."""
    queue: FairQueue[str, int] = FairQueue()
    for key, count in backlog.items():
        for i in range(count):
            queue.put(key, i)
    left = dict(backlog)
    while queue:
        active = [k for k in backlog if left[k] > 0]  # insertion order = turn order
        one_pass = [queue.get()[0] for _ in active]
        assert one_pass == active
        for key in one_pass:
            left[key] -= 1


@given(OPS, KEYS)
def test_a_new_item_waits_for_at_most_one_item_per_other_key(
    ops: list[tuple[str, str | None]], newcomer: str
) -> None:
    """However much other keys have queued, an item of a key with nothing queued is taken after at most one
    item of each other key that has items queued (the fairness bound)."""
    queue: FairQueue[str, int] = FairQueue()
    for i, (op, key) in enumerate(ops):
        if op == "put" and key != newcomer:
            assert key is not None
            queue.put(key, i)
        elif op == "get" and queue:
            queue.get()
    others = {k for k in "abcde" if k != newcomer and queue.queued(k) > 0}
    queue.put(newcomer, -1)
    before = 0
    while queue.get() != (newcomer, -1):
        before += 1
    assert before <= len(others)


def test_an_empty_queue_refuses_get() -> None:
    queue: FairQueue[str, int] = FairQueue()
    assert len(queue) == 0 and not queue
    with pytest.raises(IndexError, match="empty"):
        queue.get()


def test_the_executor_serves_a_newcomer_before_a_flooding_silo_backlog() -> None:
    """One worker, busy; a silo queues 50 tasks, then another silo one: the latter runs second, not 51st."""
    executor = FairExecutor(1)
    started, gate = threading.Event(), threading.Event()
    order: list[str] = []
    try:

        def block() -> None:
            started.set()
            gate.wait(10)

        executor.submit("flood", block)
        assert started.wait(10)
        flood = [executor.submit("flood", lambda: order.append("flood")) for _ in range(50)]
        honest = executor.submit("honest", lambda: order.append("honest"))
        gate.set()
        honest.result(10)
        for f in flood:
            f.result(10)
        assert order.index("honest") <= 1
    finally:
        executor.shutdown(10)


def test_the_executor_passes_results_and_exceptions_and_refuses_after_shutdown() -> None:
    executor = FairExecutor(2)
    assert executor.submit("a", lambda: 6 * 7).result(10) == 42

    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        executor.submit("a", fail).result(10)
    executor.shutdown(10)
    with pytest.raises(RuntimeError, match="stopping"):
        executor.submit("a", lambda: None)
    with pytest.raises(ValueError, match="at least 1"):
        FairExecutor(0)
