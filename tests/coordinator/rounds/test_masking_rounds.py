"""Masking mode on the round driver, without a wire and without waiting: the five stages in order, early closes,
deadlines on a fake clock, aborts, uploads that break or stall, refusals, long polls and the new global model.

Four silos a..d, t = 3, min_cohort = 3: one silo may drop at any stage. Every message is made by the real
``secagg.SecAggClient``; a silo that "vanishes" simply stops calling, and the stage it leaves waiting closes when
the test moves the fake clock past its deadline.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits import EventKind
from coordinator.common import RoundStatus, model_hash
from coordinator.errors import DuplicateSubmission, NotFound, StageError, Unauthorized
from coordinator.rounds.masking import MaskingRounds
from secagg import (
    Advertisement,
    Quantizer,
    RoundAborted,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskResponse,
)
from secagg.hazmat.shamir import PRIME
from tests.coordinator.rounds.conftest import (
    CHUNK,
    EXACT_BITS,
    EXACT_CLIP,
    LIMIT,
    MASKING_STAGES,
    PAST,
    SILOS,
    STAGE_ORDER,
    WAIT,
    Coordinators,
    FakeClock,
    MaskingSilo,
    Members,
    Rig,
    StreamBroke,
    expected_model,
    independent_fedavg,
    make_members,
    masking_silos,
    run_masking_round,
    start_model,
    stream,
    updates,
)
from tests.secagg.harness import garbage_share, lagrange_at_zero, moved, seeded_rng, tampered

ABORT_REASONS = {
    Stage.ADVERTISE_KEYS: "only 2 silos advertised keys; the round needs 3",
    Stage.SHARE_KEYS: "only 2 silos shared their keys; the round needs 3",
    Stage.MASKED_INPUT: "only 2 silos submitted masked input; the round needs 3",
    Stage.CONSISTENCY_CHECK: "only 2 silos signed the survivor set; need 3",
    Stage.UNMASK: "only 2 silos sent unmask shares; need 3",
}


def before(stage: Stage) -> str:
    return f"before_{stage.value}"


def play_until(rig: Rig[MaskingRounds], silos: dict[str, MaskingSilo], stage: Stage) -> None:
    """Every silo answers every stage before ``stage``; returns with ``stage`` open."""
    units = updates(SILOS)
    for earlier in MASKING_STAGES[: STAGE_ORDER[stage]]:
        for s in SILOS:
            silos[s].step(earlier, units[s])
        rig.driver.wait_past(0, earlier, WAIT)
    assert rig.driver.view().stage is stage


def finish(
    rig: Rig[MaskingRounds],
    silos: dict[str, MaskingSilo],
    stage: Stage,
    *,
    answered: tuple[str, ...] = (),
) -> None:
    """Every silo answers ``stage`` (except those that ``answered`` it already) and every stage after it."""
    units = updates(SILOS)
    for later in MASKING_STAGES[STAGE_ORDER[stage] :]:
        for s in SILOS:
            if later is not stage or s not in answered:
                silos[s].step(later, units[s])
        rig.driver.wait_past(0, later, WAIT)


# -- stage transitions and early closes ---------------------------------------------------------------------------
def test_the_five_stages_run_in_order_and_each_closes_once_every_expected_silo_answered(
    masking: Rig[MaskingRounds],
) -> None:
    assert tuple(masking.driver.stages) == MASKING_STAGES
    units = updates(SILOS)
    silos = masking_silos(masking)
    opened = masking.clock()
    for stage in MASKING_STAGES:
        view = masking.driver.view()
        assert (view.stage, view.status, view.finished) == (stage, RoundStatus.OPEN, False)
        assert view.stage_deadline == opened + LIMIT  # the clock never moves in this test
        assert masking.record(0).status is RoundStatus.OPEN
        for s in SILOS:
            silos[s].step(stage, units[s])
        masking.driver.wait_past(0, stage, WAIT)  # closed early: nobody waited for a deadline
    outcome = masking.driver.result(0, WAIT)
    assert masking.clock() == opened
    assert (outcome.status, outcome.survivors, outcome.dropped) == (
        RoundStatus.COMPLETED,
        SILOS,
        (),
    )
    assert [ad.silo for ad in masking.driver.advertisements(0, 0)] == list(SILOS)
    assert masking.driver.survivors(0, 0) == SILOS
    assert [e.kind for e in masking.events()] == [
        EventKind.FEDERATION_CREATED,
        EventKind.ROUND_OPENED,
        EventKind.KEY_FINGERPRINTS,
        EventKind.PARTICIPANTS,
        EventKind.GLOBAL_MODEL,
        EventKind.ROUND_CLOSED,
    ]
    assert dict(masking.events(EventKind.ROUND_CLOSED)[0].body) == {
        "global_model_hash": outcome.new_model_hash.hex()
    }


def test_a_stage_waits_for_a_missing_silo_until_its_deadline(masking: Rig[MaskingRounds]) -> None:
    silos = masking_silos(masking)
    for s in "abc":
        silos[s].advertise()
    with pytest.raises(TimeoutError):
        masking.driver.advertisements(0, 0.05)
    masking.clock.advance(LIMIT - 0.5)
    masking.driver.wake()
    with pytest.raises(TimeoutError):
        masking.driver.advertisements(0, 0.05)
    masking.clock.advance(0.5)  # exactly the deadline
    masking.driver.wake()
    assert [ad.silo for ad in masking.driver.advertisements(0, WAIT)] == ["a", "b", "c"]


# -- dropouts at every stage ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", MASKING_STAGES, ids=before)
def test_a_silo_that_does_not_answer_by_the_deadline_is_dropped_and_the_round_completes(
    masking: Rig[MaskingRounds], stage: Stage
) -> None:
    units = updates(SILOS)
    start = masking.clock()
    outcome = run_masking_round(masking, units, vanish={"d": stage})

    # A silo that vanished before uploading is not in the sum; one that vanished after uploading is (the others
    # reveal its self-mask share, DESIGN 4.1 stage 5), so its update counts and nobody is "dropped".
    uploaded = STAGE_ORDER[stage] > STAGE_ORDER[Stage.MASKED_INPUT]
    contributors = SILOS if uploaded else ("a", "b", "c")
    dropped = () if uploaded else ("d",)
    assert (outcome.status, outcome.survivors, outcome.dropped) == (
        RoundStatus.COMPLETED,
        contributors,
        dropped,
    )
    # only d's stage waited for its deadline; every other stage closed early
    assert masking.clock() == start + PAST
    record = masking.record(0)
    assert (record.status, record.survivors, record.dropped) == (
        RoundStatus.COMPLETED,
        contributors,
        dropped,
    )
    assert np.array_equal(
        masking.model(1), expected_model(start_model(), [units[s] for s in contributors])
    )
    (participants,) = masking.events(EventKind.PARTICIPANTS)
    body = dict(participants.body)
    assert (
        len(bytes.fromhex(body.pop("session_id"))) == 32
    )  # the session the attestations are bound to
    assert body == {"survivors": contributors, "dropped": dropped}


@pytest.mark.parametrize("stage", MASKING_STAGES, ids=before)
def test_too_few_survivors_abort_the_round_with_the_reason_and_the_next_round_works(
    coordinators: Coordinators, stage: Stage
) -> None:
    rig = coordinators.masking(rounds=2)
    outcome = run_masking_round(rig, updates(SILOS), vanish={"c": stage, "d": stage})

    assert outcome.status is RoundStatus.ABORTED
    assert outcome.reason.startswith(ABORT_REASONS[stage]), outcome.reason
    record = rig.record(0)
    assert (record.status, record.reason, record.new_model_hash) == (
        RoundStatus.ABORTED,
        outcome.reason,
        b"",
    )
    (aborted,) = rig.events(EventKind.ROUND_ABORTED)
    assert (aborted.round, dict(aborted.body)) == (
        0,
        {"reason": outcome.reason, "stage": stage.value},
    )
    with pytest.raises(RoundAborted, match="only 2 silos"):
        rig.driver.wait_past(0, stage, 0)
    assert np.array_equal(rig.model(1), rig.model(0))  # the aborted round released nothing

    again = updates(SILOS, round_=1)
    outcome = run_masking_round(rig, again, round_=1)
    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, SILOS)
    assert rig.record(1).model_hash == rig.record(0).model_hash
    assert np.array_equal(rig.model(2), expected_model(rig.model(0), list(again.values())))


# -- streamed uploads -------------------------------------------------------------------------------------------
def test_an_upload_broken_midway_is_rolled_back_and_a_later_complete_one_sums_exactly(
    masking: Rig[MaskingRounds],
) -> None:
    units = updates(SILOS)
    silos = masking_silos(masking)
    play_until(masking, silos, Stage.MASKED_INPUT)
    masked = silos["d"].mask(units["d"])
    arrived: list[int] = []
    with pytest.raises(StreamBroke):
        stream(
            masking.driver.upload("d", 0),
            [(0, masked[:CHUNK]), (CHUNK, masked[CHUNK : 2 * CHUNK])],
            finish=False,
            midway=lambda: arrived.append(masking.driver.received("d")),
        )
    assert arrived == [2 * CHUNK]  # the chunks were in the running sum, not merely sent
    assert masking.driver.received("d") == 0  # taken back out of the running sum
    for s in "abc":
        silos[s].masked_input(units[s])
    with pytest.raises(TimeoutError):  # d is still expected: the stage stays open for its retry
        masking.driver.survivors(0, 0.05)

    silos["d"].upload(masked)
    finish(masking, silos, Stage.CONSISTENCY_CHECK)
    outcome = masking.driver.result(0, WAIT)
    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, SILOS)
    # bit-exact: not one coordinate of the broken attempt is left in the sum, nor counted twice
    assert np.array_equal(masking.model(1), expected_model(start_model(), list(units.values())))


def test_a_broken_upload_never_retried_counts_as_dropped_at_the_deadline(
    masking: Rig[MaskingRounds],
) -> None:
    units = updates(SILOS)
    silos = masking_silos(masking)
    play_until(masking, silos, Stage.MASKED_INPUT)
    masked = silos["d"].mask(units["d"])
    with pytest.raises(StreamBroke):
        stream(masking.driver.upload("d", 0), [(0, masked[:CHUNK])], finish=False)
    for s in "abc":
        silos[s].masked_input(units[s])
    masking.expire()
    assert masking.driver.survivors(0, WAIT) == ("a", "b", "c")
    for stage in (Stage.CONSISTENCY_CHECK, Stage.UNMASK):
        for s in "abc":
            silos[s].step(stage, units[s])
    outcome = masking.driver.result(0, WAIT)
    assert (outcome.survivors, outcome.dropped) == (("a", "b", "c"), ("d",))
    assert np.array_equal(
        masking.model(1), expected_model(start_model(), [units[s] for s in "abc"])
    )


def test_an_upload_still_open_at_the_deadline_is_cut_off_and_its_silo_dropped(
    masking: Rig[MaskingRounds],
) -> None:
    """d sends one chunk, then neither finishes nor disconnects: it must not hold the round hostage."""
    units = updates(SILOS)
    silos = masking_silos(masking)
    play_until(masking, silos, Stage.MASKED_INPUT)
    masked = silos["d"].mask(units["d"])
    with masking.driver.upload("d", 0) as stalled:
        stalled.add(0, masked[:CHUNK])
        with pytest.raises(DuplicateSubmission):  # one upload at a time per silo
            masking.driver.upload("d", 0)
        for s in "abc":
            silos[s].masked_input(units[s])
        with pytest.raises(TimeoutError):  # an open upload keeps the stage open until its deadline
            masking.driver.survivors(0, 0.05)

        masking.expire()
        assert masking.driver.survivors(0, WAIT) == ("a", "b", "c")
        with pytest.raises(StageError, match="discarded"):
            stalled.add(CHUNK, masked[CHUNK : 2 * CHUNK])
    for stage in (Stage.CONSISTENCY_CHECK, Stage.UNMASK):
        for s in "abc":
            silos[s].step(stage, units[s])
    outcome = masking.driver.result(0, WAIT)
    assert (outcome.status, outcome.survivors, outcome.dropped) == (
        RoundStatus.COMPLETED,
        ("a", "b", "c"),
        ("d",),
    )
    assert np.array_equal(
        masking.model(1), expected_model(start_model(), [units[s] for s in "abc"])
    )


def test_an_upload_or_a_chunk_after_the_deadline_is_refused(masking: Rig[MaskingRounds]) -> None:
    units = updates(SILOS)
    silos = masking_silos(masking)
    play_until(masking, silos, Stage.MASKED_INPUT)
    masked = {s: silos[s].mask(units[s]) for s in ("c", "d")}
    for s in "ab":
        silos[s].masked_input(units[s])
    with masking.driver.upload("c", 0) as late:
        late.add(0, masked["c"][:CHUNK])
        # the deadline passes: whether or not the driver has seen it yet, a chunk is too late
        masking.clock.advance(PAST)
        with pytest.raises(StageError):
            late.add(CHUNK, masked["c"][CHUNK : 2 * CHUNK])
        with pytest.raises(StageError):  # and so is a new upload
            masking.driver.upload("d", 0)
    masking.driver.wake()
    with pytest.raises(RoundAborted, match="only 2 silos submitted masked input"):
        masking.driver.survivors(0, WAIT)


# -- refusals ---------------------------------------------------------------------------------------------------
def _submission(silo: MaskingSilo, stage: Stage) -> Callable[[], None]:
    """``silo``'s message for ``stage``, made once; calling the result sends that same message."""
    driver, r, name = silo.driver, silo.round, silo.silo
    if stage is Stage.ADVERTISE_KEYS:
        ad = silo.client.advertise()
        return lambda: driver.advertise(name, r, ad)
    if stage is Stage.SHARE_KEYS:
        shares = silo.client.share_keys(driver.advertisements(r, WAIT))
        return lambda: driver.share_keys(name, r, shares)
    if stage is Stage.MASKED_INPUT:
        masked = silo.mask(updates(SILOS)[name])
        return lambda: silo.upload(masked)
    if stage is Stage.CONSISTENCY_CHECK:
        signature = silo.client.sign_survivors(driver.survivors(r, WAIT))
        return lambda: driver.sign_survivors(name, r, signature)
    response = silo.client.unmask(driver.unmask_request(r, WAIT))
    return lambda: driver.unmask(name, r, response)


@pytest.mark.parametrize("stage", MASKING_STAGES, ids=lambda s: s.value)
def test_a_second_submission_in_a_stage_is_refused_and_the_round_goes_on(
    masking: Rig[MaskingRounds], stage: Stage
) -> None:
    silos = masking_silos(masking)
    play_until(masking, silos, stage)
    send = _submission(silos["a"], stage)
    send()
    with pytest.raises(DuplicateSubmission, match="already"):
        send()
    finish(masking, silos, stage, answered=("a",))
    outcome = masking.driver.result(0, WAIT)
    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, SILOS)


def test_a_message_for_another_stage_is_refused(coordinators: Coordinators) -> None:
    rig = coordinators.masking(rounds=2)
    driver = rig.driver
    silos = masking_silos(rig)
    early: dict[str, Callable[[], Any]] = {
        "share_keys": lambda: driver.share_keys("a", 0, ShareKeys(sender="a", shares=())),
        "upload": lambda: driver.upload("a", 0),
        "sign_survivors": lambda: driver.sign_survivors("a", 0, SurvivorSignature("a", b"")),
        "unmask": lambda: driver.unmask("a", 0, UnmaskResponse("a", {}, {})),
    }
    for call in early.values():
        with pytest.raises(StageError, match="is in stage advertise_keys"):
            call()
    play_until(rig, silos, Stage.SHARE_KEYS)
    with pytest.raises(StageError, match="is in stage share_keys, not advertise_keys"):
        driver.advertise("a", 0, MaskingSilo(rig, "a").client.advertise())
    finish(rig, silos, Stage.SHARE_KEYS)
    with pytest.raises(StageError, match="round 0 is over"):  # round 1 is open now
        driver.advertise("a", 0, MaskingSilo(rig, "a", 1).client.advertise())


def test_a_silo_outside_the_previous_stage_is_refused(masking: Rig[MaskingRounds]) -> None:
    """d never shared keys, so it is not in U2: it gets no inbox and may not upload."""
    silos = masking_silos(masking)
    for s in SILOS:
        silos[s].advertise()
    for s in "abc":
        silos[s].share_keys()
    masking.expire()
    with pytest.raises(StageError, match="not in U2"):
        masking.driver.inbox("d", 0, WAIT)
    with pytest.raises(StageError, match="may not submit"):
        masking.driver.upload("d", 0)


def test_an_unknown_round_is_not_found(masking: Rig[MaskingRounds]) -> None:
    silo = MaskingSilo(masking, "a")
    ad = silo.client.advertise()
    with pytest.raises(NotFound, match="round 1 is not open"):
        masking.driver.advertise("a", 1, ad)
    with pytest.raises(NotFound):
        masking.driver.advertisements(7, WAIT)
    with pytest.raises(NotFound, match="beyond the 1 planned rounds"):
        masking.driver.result(1, 0)
    with pytest.raises(NotFound, match="no round >= 1 is open yet"):
        masking.driver.view(after=1, wait=0)
    assert masking.driver.held_bytes(7) == 0
    masking.driver.advertise("a", 0, ad)  # the refusals changed nothing


def test_a_caller_that_is_not_a_member_or_not_itself_is_unauthorized(
    masking: Rig[MaskingRounds],
) -> None:
    silos = masking_silos(masking)
    ads = {s: silos[s].client.advertise() for s in SILOS}
    with pytest.raises(Unauthorized, match="not a member"):
        masking.driver.advertise("mallory", 0, dataclasses.replace(ads["a"], silo="mallory"))
    with pytest.raises(Unauthorized, match="its own keys"):
        masking.driver.advertise("a", 0, ads["b"])
    with pytest.raises(Unauthorized, match="not a member"):
        masking.driver.upload("mallory", 0)
    with pytest.raises(Unauthorized, match="not a member"):
        masking.driver.inbox("mallory", 0, 0)
    for s in SILOS:
        masking.driver.advertise(s, 0, ads[s])
    shares_of_b = silos["b"].client.share_keys(masking.driver.advertisements(0, WAIT))
    with pytest.raises(Unauthorized, match="its own shares"):
        masking.driver.share_keys("a", 0, shares_of_b)
    masking.driver.share_keys("b", 0, shares_of_b)
    finish(masking, silos, Stage.SHARE_KEYS, answered=("b",))
    assert masking.driver.result(0, WAIT).survivors == SILOS


# -- long polls -------------------------------------------------------------------------------------------------
def test_long_polls_return_when_the_stage_closes_and_time_out_while_it_is_open(
    masking: Rig[MaskingRounds],
) -> None:
    silos = masking_silos(masking)
    with pytest.raises(TimeoutError, match="still open"):
        masking.driver.advertisements(0, 0.01)
    got: list[tuple[Advertisement, ...]] = []
    poll = threading.Thread(target=lambda: got.append(masking.driver.advertisements(0, WAIT)))
    poll.start()
    for s in SILOS:
        silos[s].advertise()
    poll.join(WAIT)
    (ads,) = got
    assert [ad.silo for ad in ads] == list(SILOS)


def test_a_waiting_long_poll_learns_that_the_round_was_aborted(
    masking: Rig[MaskingRounds],
) -> None:
    silos = masking_silos(masking)
    for s in "ab":
        silos[s].advertise()
    failures: list[BaseException] = []

    def poll() -> None:
        try:
            masking.driver.advertisements(0, WAIT)
        except BaseException as exc:  # the outcome under test
            failures.append(exc)

    waiting = threading.Thread(target=poll)
    waiting.start()
    masking.expire()
    waiting.join(WAIT)
    (failure,) = failures
    assert isinstance(failure, RoundAborted)
    assert "only 2 silos advertised keys" in str(failure)
    with pytest.raises(RoundAborted):
        masking.driver.inbox("a", 0, 0)


# -- the new global model ---------------------------------------------------------------------------------------
def test_the_next_model_is_blockwise_fedavg_of_the_contributors_decoded_sum(
    coordinators: Coordinators,
) -> None:
    rig = coordinators.masking(rounds=2)
    quantizer = Quantizer(clip=EXACT_CLIP, bits=EXACT_BITS, max_silos=len(SILOS))
    for r, vanish in ((0, {}), (1, {"b": Stage.MASKED_INPUT})):
        units = updates(SILOS, round_=r)
        outcome = run_masking_round(rig, units, round_=r, vanish=vanish)
        contributed = [units[s] for s in outcome.survivors]
        start, new = rig.model(r), rig.model(r + 1)
        assert np.array_equal(new, expected_model(start, contributed))
        assert np.array_equal(new, independent_fedavg(quantizer, start, contributed))
        assert outcome.new_model_hash == rig.record(r).new_model_hash == model_hash(new)
        data, digest = rig.driver.model_bytes(r + 1)
        assert (data, digest) == (new.astype("<f4").tobytes(), model_hash(new))
    assert rig.driver.result(1, 0).survivors == ("a", "c", "d")


# -- any dropout pattern ----------------------------------------------------------------------------------------
SILOS5 = ("a", "b", "c", "d", "e")


@pytest.fixture(scope="module")
def members5() -> Members:
    return make_members(SILOS5)


@pytest.fixture(scope="module")
def long_federation(
    tmp_path_factory: pytest.TempPathFactory, members5: Members
) -> Iterator[Rig[MaskingRounds]]:
    """Five silos, t = 3, min_cohort = 3, and rounds enough for every example: each example plays the next."""
    built = Coordinators(tmp_path_factory.mktemp("dropouts"), members5, FakeClock())
    try:
        yield built.masking(rounds=1000)
    finally:
        built.close()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vanish=st.dictionaries(st.sampled_from(SILOS5), st.sampled_from(MASKING_STAGES), max_size=3))
def test_any_dropout_pattern_completes_with_the_exact_sum_iff_t_silos_stay(
    long_federation: Rig[MaskingRounds], vanish: dict[str, Stage]
) -> None:
    rig = long_federation
    r = rig.driver.view(wait=WAIT).config.round
    units = updates(SILOS5, round_=r)
    outcome = run_masking_round(rig, units, round_=r, vanish=vanish)
    stayed = [s for s in SILOS5 if s not in vanish]
    uploaded = tuple(
        s
        for s in SILOS5
        if s not in vanish or STAGE_ORDER[vanish[s]] > STAGE_ORDER[Stage.MASKED_INPUT]
    )
    if len(stayed) < 3:
        assert outcome.status is RoundStatus.ABORTED
        assert np.array_equal(rig.model(r + 1), rig.model(r))
        return
    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, uploaded)
    assert np.array_equal(
        rig.model(r + 1), expected_model(rig.model(r), [units[s] for s in uploaded])
    )


# -- a malicious member silo in the unmask stage (DESIGN 2 and 4.4) ---------------------------------------------
def lie_in_unmask(
    rig: Rig[MaskingRounds], silo: MaskingSilo, lies: dict[str, bytes | None]
) -> None:
    """``silo`` reveals, for each peer in ``lies``, its self-mask share shifted by the inverse of its public
    Lagrange coefficient among the first t holders (``None``), or the given share instead."""
    request = rig.driver.unmask_request(silo.round, WAIT)
    response = silo.client.unmask(request)
    index = rig.members.roster.index
    t = rig.driver.settings.threshold
    first_t = [index(s) for s in sorted(request.survivors, key=index)[:t]]
    shift = pow(lagrange_at_zero(first_t, index(silo.silo)), -1, PRIME)
    replaced = {
        peer: moved(response.self_mask_shares[peer], shift) if share is None else share
        for peer, share in lies.items()
    }
    rig.driver.unmask(silo.silo, silo.round, tampered(response, self_mask=replaced))


def test_a_silo_shifting_its_unmask_share_is_recorded_as_a_culprit_and_the_round_sums_exactly(
    masking: Rig[MaskingRounds],
) -> None:
    silos = masking_silos(masking)
    play_until(masking, silos, Stage.UNMASK)
    # a is among the first t holders: unchecked, d's reconstructed seed would move by exactly 1
    lie_in_unmask(masking, silos["a"], {"d": None})
    for s in "bcd":
        silos[s].unmask()
    outcome = masking.driver.result(0, WAIT)

    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, SILOS)
    units = updates(SILOS)  # what play_until had every silo upload
    assert np.array_equal(masking.model(1), expected_model(start_model(), list(units.values())))
    (failure,) = masking.events(EventKind.VERIFICATION_FAILURE)
    assert (failure.round, failure.body["what"], failure.body["silo"]) == (0, "unmask_shares", "a")
    assert "round 0" in failure.body["reason"] and "for d" in failure.body["reason"]
    kinds = [e.kind for e in masking.events()]
    assert kinds.index(EventKind.VERIFICATION_FAILURE) < kinds.index(EventKind.PARTICIPANTS)


def test_two_culprits_leaving_too_few_consistent_holders_abort_the_round_naming_both(
    coordinators: Coordinators,
) -> None:
    rig = coordinators.masking(rounds=2)
    silos = masking_silos(rig)
    play_until(rig, silos, Stage.UNMASK)
    lie_in_unmask(rig, silos["a"], {"c": None})
    lie_in_unmask(rig, silos["b"], {"d": garbage_share(seeded_rng(4))})
    for s in "cd":
        silos[s].unmask()
    outcome = rig.driver.result(0, WAIT)

    assert outcome.status is RoundStatus.ABORTED
    assert "culprits: a, b" in outcome.reason
    assert "only 2 consistent unmask responses remain; need 3" in outcome.reason
    failures = rig.events(EventKind.VERIFICATION_FAILURE)
    assert [(f.body["silo"], f.body["what"]) for f in failures] == [
        ("a", "unmask_shares"),
        ("b", "unmask_shares"),
    ]
    assert "for c" in failures[0].body["reason"] and "for d" in failures[1].body["reason"]
    (aborted,) = rig.events(EventKind.ROUND_ABORTED)
    assert aborted.body["stage"] == Stage.UNMASK.value
    # the next round runs as usual
    units = updates(SILOS, round_=1)
    assert run_masking_round(rig, units, round_=1).status is RoundStatus.COMPLETED
