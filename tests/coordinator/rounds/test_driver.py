"""The mode-independent round driver, for both modes: the federation's end, outcomes from memory and from the
store, release of finished rounds, the model cache, the lifecycle, and restart reconciliation of store and ledger.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from audits import EventKind
from coordinator.common import RoundStatus, model_hash
from coordinator.errors import NotFound, Unauthorized
from coordinator.rounds.driver import RESTART_REASON
from coordinator.store import SQLiteStore
from secagg import RoundAborted
from secagg.hazmat.paillier import ThresholdKeyMaterial
from tests.coordinator.rounds.conftest import (
    FEDERATION,
    LENGTH,
    LIMIT,
    MODES,
    SILOS,
    WAIT,
    Coordinators,
    announced_round,
    build_rig,
    expected_model,
    play_round,
    start_model,
    updates,
)

pytestmark = pytest.mark.parametrize("mode", MODES)


def test_view_after_the_federation_finished(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys)
    assert play_round(rig, paillier_keys, updates(SILOS)).status is RoundStatus.COMPLETED
    assert rig.driver.wait_finished(WAIT)
    assert rig.driver.finished
    assert rig.driver.open_round_number() is None
    for after in (0, 1, 5):
        view = rig.driver.view(after=after, wait=0)
        assert view.finished
        assert (view.status, view.stage, view.rounds) == (RoundStatus.COMPLETED, rig.driver.done, 1)
        assert (view.stage_deadline, view.model_hash) == (0.0, b"\0" * 32)
        assert announced_round(view.config) == 1  # the round that would come next


def test_an_outcome_comes_from_memory_and_later_from_the_store(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=3)
    outcomes = [
        play_round(rig, paillier_keys, updates(SILOS, r), round_=r, absent="d" if r else "")
        for r in range(3)
    ]
    assert [o.status for o in outcomes] == [RoundStatus.COMPLETED] * 3
    assert outcomes[1].dropped == ("d",)
    # rounds 1 and 2 are kept in memory for late long polls; round 0 is read back from the store
    assert [rig.driver.result(r, 0) for r in range(3)] == outcomes
    with pytest.raises(NotFound):
        rig.driver.result(3, 0)
    closings = rig.events(EventKind.ROUND_CLOSED)
    rig.close()

    restarted = build_rig(coordinators, mode, paillier_keys, rounds=3)
    assert restarted.driver.wait_finished(WAIT)
    assert [restarted.driver.result(r, 0) for r in range(3)] == outcomes
    assert restarted.events(EventKind.ROUND_CLOSED) == closings  # a restart records nothing twice


def test_a_round_still_to_come_has_no_result_yet(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=2)
    with pytest.raises(TimeoutError, match="round 1 has not finished"):
        rig.driver.result(1, 0.01)


def test_a_finished_round_holds_no_vectors(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=3)
    for r, absent in ((0, ""), (1, "cd")):  # one completes, one aborts
        rig.driver.view(after=r, wait=WAIT)
        assert rig.driver.held_bytes(r) >= 4 * LENGTH  # at least the start model while it runs
        play_round(rig, paillier_keys, updates(SILOS, r), round_=r, absent=absent)
        assert rig.driver.held_bytes(r) == 0  # released, although kept for late long polls
    assert [r.status for r in rig.records()[:2]] == [RoundStatus.COMPLETED, RoundStatus.ABORTED]


def test_the_model_cache_serves_the_stored_models(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=2)
    view = rig.driver.view(after=0, wait=WAIT)
    data, digest = rig.driver.model_bytes(0)
    assert data == start_model().astype("<f4").tobytes()
    assert digest == view.model_hash == model_hash(start_model())
    units = updates(SILOS)
    play_round(rig, paillier_keys, units)
    data, digest = rig.driver.model_bytes(1)
    assert np.array_equal(np.frombuffer(data, "<f4"), rig.model(1))
    assert digest == rig.record(0).new_model_hash == rig.driver.view(after=1, wait=WAIT).model_hash
    assert np.array_equal(rig.model(1), expected_model(start_model(), list(units.values())))
    # no longer cached: read from the store again
    assert rig.driver.model_bytes(0)[0] == start_model().astype("<f4").tobytes()
    with pytest.raises(NotFound):
        rig.driver.model_bytes(5)


def test_deadlines_follow_the_injected_clock_and_a_round_nobody_joins_aborts(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=2)
    first = rig.driver.view(after=0, wait=WAIT)
    assert first.stage_deadline == rig.clock() + LIMIT
    rig.expire()
    outcome = rig.driver.result(0, WAIT)
    assert outcome.status is RoundStatus.ABORTED
    assert outcome.reason.startswith(("only 0 silos", "0 contributions"))
    second = rig.driver.view(after=1, wait=WAIT)
    assert second.stage_deadline == rig.clock() + LIMIT > first.stage_deadline


def test_run_round_can_be_driven_without_the_driver_thread(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, start=False)
    assert rig.driver.open_round_number() is None
    assert not rig.driver.finished
    runner = threading.Thread(target=rig.driver.run_round, args=(0,))
    runner.start()
    outcome = play_round(rig, paillier_keys, updates(SILOS))
    runner.join(WAIT)
    assert not runner.is_alive()
    assert outcome.status is RoundStatus.COMPLETED
    assert rig.driver.finished and rig.driver.open_round_number() is None


def test_stop_leaves_the_open_round_open_in_the_store(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=2)
    rig.driver.view(after=0, wait=WAIT)
    assert rig.driver.open_round_number() == 0
    rig.driver.stop()
    assert rig.driver.wait_finished(0)  # nobody is left waiting
    assert not rig.driver.finished
    assert [(r.round, r.status) for r in rig.records()] == [(0, RoundStatus.OPEN)]
    with pytest.raises(TimeoutError):
        rig.driver.result(0, WAIT)  # returns at once: the driver is stopping
    assert rig.events(EventKind.ROUND_ABORTED) == []


def test_a_long_poll_on_a_stage_that_never_closed_is_refused_once_the_coordinator_stops(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=2)
    rig.driver.view(after=0, wait=WAIT)
    rig.driver.stop()
    with pytest.raises(RoundAborted, match="interrupted: the coordinator is stopping"):
        rig.driver.wait_past(0, rig.driver.stages[0], WAIT)


# -- restart reconciliation -----------------------------------------------------------------------------------------
def test_a_round_open_when_the_coordinator_stopped_is_aborted_at_the_next_start(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    first = build_rig(coordinators, mode, paillier_keys, rounds=2)
    first.driver.view(after=0, wait=WAIT)
    assert first.record(0).status is RoundStatus.OPEN
    first.close()  # the process ends with round 0 open (its protocol state is gone with it)

    second = build_rig(coordinators, mode, paillier_keys, rounds=2)
    record = second.record(0)
    assert (record.status, record.reason, record.new_model_hash) == (
        RoundStatus.ABORTED,
        RESTART_REASON,
        b"",
    )
    (aborted,) = second.events(EventKind.ROUND_ABORTED)
    assert (aborted.round, dict(aborted.body)) == (
        0,
        {"reason": RESTART_REASON, "recorded_at_restart": True},
    )
    assert np.array_equal(second.model(1), second.model(0))  # the interrupted round changed nothing
    units = updates(SILOS, round_=1)
    outcome = play_round(second, paillier_keys, units, round_=1)
    assert outcome.status is RoundStatus.COMPLETED
    assert np.array_equal(second.model(2), expected_model(second.model(1), list(units.values())))


@pytest.mark.parametrize("ended", [RoundStatus.COMPLETED, RoundStatus.ABORTED])
def test_an_outcome_the_ledger_missed_is_recorded_at_restart(
    coordinators: Coordinators,
    paillier_keys: ThresholdKeyMaterial,
    mode: str,
    ended: RoundStatus,
) -> None:
    first = build_rig(coordinators, mode, paillier_keys, rounds=2, start=False)
    # A crash between the two commits: the store ended round 0, the ledger never heard of it.
    store: SQLiteStore = first.store
    start, digest = store.model(FEDERATION, 0)
    units = updates(SILOS)
    new_model = expected_model(start, [units[s] for s in "abc"])
    store.open_round(FEDERATION, 0, digest)
    if ended is RoundStatus.COMPLETED:
        new_hash = store.complete_round(
            FEDERATION, 0, survivors=("a", "b", "c"), dropped=("d",), new_model=new_model
        )
    else:
        store.abort_round(FEDERATION, 0, "only 2 silos advertised keys")
    assert 0 not in first.audit.closed_rounds()
    first.close()

    second = build_rig(coordinators, mode, paillier_keys, rounds=2)
    assert 0 in second.audit.closed_rounds()
    if ended is RoundStatus.COMPLETED:
        (participants,) = second.events(EventKind.PARTICIPANTS)
        (model,) = second.events(EventKind.GLOBAL_MODEL)
        (closed,) = second.events(EventKind.ROUND_CLOSED)
        assert dict(participants.body) == {
            "survivors": ("a", "b", "c"),
            "dropped": ("d",),
            "recorded_at_restart": True,
        }
        assert dict(model.body) == {"model_hash": new_hash.hex()}
        assert dict(closed.body) == {
            "global_model_hash": new_hash.hex(),
            "recorded_at_restart": True,
        }
        outcome = second.driver.result(0, 0)  # from the store: this driver never ran round 0
        assert (outcome.status, outcome.survivors, outcome.new_model_hash) == (
            RoundStatus.COMPLETED,
            ("a", "b", "c"),
            new_hash,
        )
    else:
        (aborted,) = second.events(EventKind.ROUND_ABORTED)
        assert dict(aborted.body) == {
            "reason": "only 2 silos advertised keys",
            "recorded_at_restart": True,
        }
        assert second.driver.result(0, 0).status is RoundStatus.ABORTED
    # training goes on from what the store holds
    again = updates(SILOS, round_=1)
    assert play_round(second, paillier_keys, again, round_=1).status is RoundStatus.COMPLETED
    assert np.array_equal(second.model(2), expected_model(second.model(1), list(again.values())))
    recorded = len(second.events())
    second.close()

    third = build_rig(coordinators, mode, paillier_keys, rounds=2)  # nothing left to reconcile
    assert third.driver.wait_finished(WAIT)
    assert len(third.events()) == recorded


def test_round_0_opens_only_once_min_cohort_silos_have_joined(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, joined=SILOS[:2])
    with pytest.raises(NotFound):
        rig.driver.view(after=0, wait=0.3)  # two of min_cohort = 3: no round yet
    assert rig.driver.open_round_number() is None
    assert rig.records() == []
    rig.driver.join(SILOS[2])
    view = rig.driver.view(after=0, wait=WAIT)
    assert view.status is RoundStatus.OPEN
    assert rig.driver.joined == frozenset(SILOS[:3])
    assert rig.driver.cohort_shortfall is None


def test_the_federation_gives_up_when_the_join_deadline_passes_without_the_cohort(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, rounds=2, joined=SILOS[:1])
    assert not rig.driver.wait_finished(0.2)
    rig.expire()
    assert rig.driver.wait_finished(WAIT)
    assert rig.driver.cohort_shortfall == (
        f"only 1 of the 3 silos round 0 needs (min_cohort) joined within the {LIMIT:g} s join deadline"
    )
    assert not rig.driver.finished
    assert rig.records() == []  # no round was opened, so none was aborted
    assert rig.events(EventKind.ROUND_OPENED) == []


def test_a_non_member_cannot_join(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial, mode: str
) -> None:
    rig = build_rig(coordinators, mode, paillier_keys, joined=())
    with pytest.raises(Unauthorized):
        rig.driver.join("mallory")
    assert rig.driver.joined == frozenset()
