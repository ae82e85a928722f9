"""Paillier mode on the round driver, without a wire and without waiting: collect then decrypt, early closes,
deadlines on a fake clock, aborts, contributions that break or stall, refusals, long polls and the new model.

Four silos a..d with a 2-of-4 threshold key (256 bits, insecure, tests only), min_cohort = 3. Every message is
made by the real roles: ``PaillierContributor`` encrypts, ``PartialDecrypter`` spot-checks and decrypts.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits import EventKind
from coordinator.common import RoundStatus, model_hash
from coordinator.errors import (
    DuplicateSubmission,
    InvalidInput,
    NotFound,
    StageError,
    Unauthorized,
)
from coordinator.rounds.paillier import PaillierRounds
from secagg import Quantizer, RoundAborted
from secagg.hazmat.paillier import ThresholdKeyMaterial
from secagg.paillier import DecryptionRequest, SpotCheckChallenge
from tests.coordinator.rounds.conftest import (
    EXACT_BITS,
    EXACT_CLIP,
    LIMIT,
    PAST,
    SILOS,
    WAIT,
    Coordinators,
    FakeClock,
    Members,
    PaillierSilo,
    Rig,
    StreamBroke,
    check_aggregate,
    eventually,
    expected_model,
    independent_fedavg,
    paillier_silos,
    run_paillier_round,
    start_model,
    stream,
    updates,
)

COLLECT, CHALLENGE, FOLD, DECRYPT = PaillierRounds.stages


# -- stage transitions and early closes ---------------------------------------------------------------------------
def test_each_stage_closes_as_soon_as_it_can(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    opened = paillier.clock()
    view = paillier.driver.view()
    assert (view.stage, view.status, view.stage_deadline) == (
        COLLECT,
        RoundStatus.OPEN,
        opened + LIMIT,
    )
    for s in SILOS:
        silos[s].contribute(units[s])
    request = paillier.driver.decryption_request("a", 0, WAIT)  # closed: every member contributed
    assert [c.silo_id for c in request.contributions] == list(SILOS)
    assert paillier.driver.view().stage is CHALLENGE
    check_aggregate(paillier, silos)  # every key holder challenged, every contributor folded
    assert paillier.driver.view().stage is DECRYPT
    silos["a"].decrypt()
    with pytest.raises(TimeoutError):  # one partial decryption is not enough
        paillier.driver.wait_past(0, DECRYPT, 0.05)
    silos["b"].decrypt()  # t = 2: combined at once, although c and d never answer
    outcome = paillier.driver.result(0, WAIT)
    assert paillier.clock() == opened  # no deadline was involved
    assert (outcome.status, outcome.survivors, outcome.dropped) == (
        RoundStatus.COMPLETED,
        SILOS,
        (),
    )
    assert np.array_equal(paillier.model(1), expected_model(start_model(), list(units.values())))
    assert [e.kind for e in paillier.events()] == [
        EventKind.FEDERATION_CREATED,
        EventKind.ROUND_OPENED,
        EventKind.PARTICIPANTS,
        EventKind.GLOBAL_MODEL,
        EventKind.ROUND_CLOSED,
    ]
    (participants,) = paillier.events(EventKind.PARTICIPANTS)
    body = dict(participants.body)
    assert (
        len(bytes.fromhex(body.pop("session_id"))) == 32
    )  # the session the attestations are bound to
    assert body == {"survivors": SILOS, "dropped": (), "decrypters": ("a", "b")}
    with pytest.raises(StageError):  # the round is over: a late key holder is refused
        silos["c"].decrypt()


def test_collect_waits_for_a_missing_silo_until_its_deadline(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    for s in "abc":
        silos[s].contribute(units[s])
    deadline = paillier.driver.view().stage_deadline
    paillier.clock.advance(deadline - paillier.clock() - 0.5)
    paillier.driver.wake()
    with pytest.raises(TimeoutError):
        paillier.driver.decryption_request("a", 0, 0.05)
    paillier.clock.advance(0.5)
    paillier.driver.wake()
    request = paillier.driver.decryption_request("a", 0, WAIT)
    assert [c.silo_id for c in request.contributions] == ["a", "b", "c"]


# -- dropouts ---------------------------------------------------------------------------------------------------
def test_a_silo_that_does_not_contribute_by_the_deadline_is_dropped_and_the_round_completes(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    start = paillier.clock()
    outcome = run_paillier_round(paillier, paillier_keys, units, contributors="abc")
    assert (outcome.status, outcome.survivors, outcome.dropped) == (
        RoundStatus.COMPLETED,
        ("a", "b", "c"),
        ("d",),
    )
    assert paillier.clock() == start + PAST  # collect waited for d; decrypt closed at t partials
    record = paillier.record(0)
    assert (record.survivors, record.dropped) == (("a", "b", "c"), ("d",))
    assert np.array_equal(
        paillier.model(1), expected_model(start_model(), [units[s] for s in "abc"])
    )


def test_key_holders_need_not_be_contributors(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    outcome = run_paillier_round(
        paillier, paillier_keys, units, contributors="abc", decrypters=("c", "d")
    )
    assert outcome.survivors == ("a", "b", "c")
    (participants,) = paillier.events(EventKind.PARTICIPANTS)
    assert participants.body["decrypters"] == ("c", "d")


def test_too_few_contributions_abort_the_round_and_the_next_round_works(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, rounds=2)
    outcome = run_paillier_round(rig, paillier_keys, updates(SILOS), contributors="ab")
    assert outcome.status is RoundStatus.ABORTED
    assert outcome.reason == "2 contributions, min_cohort is 3"
    record = rig.record(0)
    assert (record.status, record.reason, record.new_model_hash) == (
        RoundStatus.ABORTED,
        outcome.reason,
        b"",
    )
    (aborted,) = rig.events(EventKind.ROUND_ABORTED)
    assert (aborted.round, dict(aborted.body)) == (
        0,
        {"reason": outcome.reason, "stage": "collect"},
    )
    with pytest.raises(RoundAborted, match="min_cohort"):
        rig.driver.decryption_request("a", 0, 0)
    assert np.array_equal(rig.model(1), rig.model(0))

    again = updates(SILOS, round_=1)
    outcome = run_paillier_round(rig, paillier_keys, again, round_=1)
    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, SILOS)
    assert np.array_equal(rig.model(2), expected_model(rig.model(1), list(again.values())))


def test_fewer_than_t_partial_decryptions_by_the_deadline_abort_the_round(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, rounds=2)
    outcome = run_paillier_round(rig, paillier_keys, updates(SILOS), decrypters=("a",))
    assert outcome.status is RoundStatus.ABORTED
    assert outcome.reason == "1 partial decryptions, 2 needed"
    (aborted,) = rig.events(EventKind.ROUND_ABORTED)
    assert aborted.body["stage"] == "decrypt"
    assert np.array_equal(rig.model(1), rig.model(0))
    assert run_paillier_round(rig, paillier_keys, updates(SILOS, 1), round_=1).status is (
        RoundStatus.COMPLETED
    )


def test_fewer_than_t_challenges_by_the_deadline_abort_the_round(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, rounds=2)
    units = updates(SILOS)
    silos = paillier_silos(rig, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    silos["a"].challenge()
    rig.expire()
    outcome = rig.driver.result(0, WAIT)
    assert (outcome.status, outcome.reason) == (
        RoundStatus.ABORTED,
        "1 key holders challenged the decryption request, 2 needed",
    )
    (aborted,) = rig.events(EventKind.ROUND_ABORTED)
    assert aborted.body["stage"] == "challenge"
    assert run_paillier_round(rig, paillier_keys, updates(SILOS, 1), round_=1).status is (
        RoundStatus.COMPLETED
    )


def test_a_contributor_that_does_not_fold_aborts_the_round_naming_it(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    # its ciphertexts are in the aggregate: without its folds no key holder can check the aggregate, so the
    # round cannot go on without it (the price of whole-aggregate integrity; DESIGN 5)
    rig = coordinators.paillier(paillier_keys, rounds=2)
    units = updates(SILOS)
    silos = paillier_silos(rig, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    for s in SILOS:
        silos[s].challenge()
    rig.driver.wait_past(0, CHALLENGE, WAIT)
    for s in "abc":
        silos[s].fold()
    with pytest.raises(TimeoutError):
        rig.driver.wait_past(0, FOLD, 0.05)
    rig.expire()
    outcome = rig.driver.result(0, WAIT)
    assert (outcome.status, outcome.reason) == (
        RoundStatus.ABORTED,
        "contributors ['d'] did not answer the fold requests: the aggregate cannot be checked",
    )
    assert run_paillier_round(rig, paillier_keys, updates(SILOS, 1), round_=1).status is (
        RoundStatus.COMPLETED
    )


def test_folds_are_checked_and_answered_once(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    for s in SILOS:
        silos[s].challenge()
        if s == "a":
            with pytest.raises(DuplicateSubmission, match="challenged the decryption request"):
                paillier.driver.challenge("a", 0, silos["a"].challenged)
    _, requests = paillier.driver.fold_requests("a", 0, WAIT)
    assert [r.decrypter for r in requests] == list(SILOS)
    answers = silos["a"].contributor.answer_folds(requests)
    with pytest.raises(
        InvalidInput, match="fold signature"
    ):  # the coordinator cannot invent a fold
        paillier.driver.folds(
            "a", 0, [dataclasses.replace(answers[0], fold=answers[1].fold), *answers[1:]]
        )
    with pytest.raises(InvalidInput, match="another decrypter"):  # nor move one to another seed
        paillier.driver.folds("b", 0, answers)
    paillier.driver.folds("a", 0, answers)
    with pytest.raises(DuplicateSubmission, match="answered the fold requests"):
        paillier.driver.folds("a", 0, answers)
    for s in "bcd":
        silos[s].fold()
    paillier.driver.wait_past(0, FOLD, WAIT)
    for s in "ab":
        silos[s].decrypt()
    assert paillier.driver.result(0, WAIT).status is RoundStatus.COMPLETED


def test_refusals_are_recorded_and_the_round_aborts_naming_them(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    silos["a"].refuse("the aggregate is not the product of the signed contributions")
    silos["b"].refuse()
    with pytest.raises(TimeoutError):  # c and d may still answer
        paillier.driver.wait_past(0, CHALLENGE, 0.05)
    paillier.expire()
    outcome = paillier.driver.result(0, WAIT)
    assert outcome.status is RoundStatus.ABORTED
    assert outcome.reason == (
        "0 key holders challenged the decryption request, 2 needed; refused by ['a', 'b']"
    )
    failures = paillier.events(EventKind.VERIFICATION_FAILURE)
    assert [(e.body["silo"], e.body["what"]) for e in failures] == [
        ("a", "decryption_request"),
        ("b", "decryption_request"),
    ]
    assert failures[0].body["reason"] == (
        "the aggregate is not the product of the signed contributions"
    )


def test_the_challenge_stage_closes_early_once_every_key_holder_refused(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    start = paillier.clock()
    for s in SILOS:
        silos[s].refuse()
    outcome = paillier.driver.result(0, WAIT)
    assert paillier.clock() == start
    assert outcome.reason.endswith("refused by ['a', 'b', 'c', 'd']")


def test_an_invalid_partial_decryption_is_recorded_and_t_valid_ones_still_complete(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    check_aggregate(paillier, silos)
    honest = silos["a"].partial()
    forged = dataclasses.replace(
        honest, partial=dataclasses.replace(honest.partial, response=honest.partial.response + 1)
    )
    paillier.driver.partial_decryption("a", 0, forged)
    silos["b"].decrypt()  # two partials, one with a bad proof: not enough, the stage stays open
    eventually(lambda: bool(paillier.events(EventKind.VERIFICATION_FAILURE)))
    with pytest.raises(TimeoutError):
        paillier.driver.wait_past(0, DECRYPT, 0.05)
    (failure,) = paillier.events(EventKind.VERIFICATION_FAILURE)
    assert failure.body["what"] == "partial_decryption"
    assert "1 valid partial decryptions, 2 needed" in failure.body["reason"]
    silos["c"].decrypt()
    outcome = paillier.driver.result(0, WAIT)
    assert outcome.status is RoundStatus.COMPLETED
    assert np.array_equal(paillier.model(1), expected_model(start_model(), list(units.values())))


# -- streamed contributions -------------------------------------------------------------------------------------
def test_a_contribution_broken_midway_is_divided_out_and_cannot_be_restarted(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, one_ciphertext_chunks=True)
    units = updates(SILOS)
    silos = paillier_silos(rig, paillier_keys)
    chunks, commitment = silos["d"].encrypt(units["d"])
    assert len(chunks) >= 2
    with pytest.raises(StreamBroke):  # after its first chunk was multiplied into the aggregate
        stream(
            rig.driver.contribution("d", 0, commitment),
            [(chunks[0].chunk_index, chunks[0].data)],
            finish=False,
        )
    with pytest.raises(StageError, match="cannot be restarted"):
        rig.driver.contribution("d", 0, commitment)
    start = rig.clock()
    for s in "abc":
        silos[s].contribute(units[s])
    # every member has contributed or broken off: collect closes without waiting for its deadline
    request = rig.driver.decryption_request("a", 0, WAIT)
    assert rig.clock() == start
    assert [c.silo_id for c in request.contributions] == ["a", "b", "c"]
    check_aggregate(rig, silos)
    for s in "ab":
        silos[s].decrypt()
    outcome = rig.driver.result(0, WAIT)
    assert (outcome.survivors, outcome.dropped) == (("a", "b", "c"), ("d",))
    # exact: d's first chunk was divided back out of the aggregate
    assert np.array_equal(rig.model(1), expected_model(start_model(), [units[s] for s in "abc"]))


def test_a_contribution_still_open_at_the_deadline_is_cut_off(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, one_ciphertext_chunks=True)
    units = updates(SILOS)
    silos = paillier_silos(rig, paillier_keys)
    chunks, commitment = silos["d"].encrypt(units["d"])
    with rig.driver.contribution("d", 0, commitment) as stalled:
        stalled.add(chunks[0].chunk_index, chunks[0].data)
        with pytest.raises(DuplicateSubmission):
            rig.driver.contribution("d", 0, commitment)
        for s in "abc":
            silos[s].contribute(units[s])
        with pytest.raises(TimeoutError):  # the open upload keeps collect open until its deadline
            rig.driver.decryption_request("a", 0, 0.05)
        rig.expire()
        request = rig.driver.decryption_request("a", 0, WAIT)
        assert [c.silo_id for c in request.contributions] == ["a", "b", "c"]
        with pytest.raises(StageError, match="discarded"):
            stalled.add(chunks[1].chunk_index, chunks[1].data)
    check_aggregate(rig, silos)
    for s in "ab":
        silos[s].decrypt()
    outcome = rig.driver.result(0, WAIT)
    assert (outcome.status, outcome.survivors, outcome.dropped) == (
        RoundStatus.COMPLETED,
        ("a", "b", "c"),
        ("d",),
    )
    assert np.array_equal(rig.model(1), expected_model(start_model(), [units[s] for s in "abc"]))


def test_a_contribution_that_ends_early_is_refused_and_cannot_be_restarted(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, one_ciphertext_chunks=True)
    silos = paillier_silos(rig, paillier_keys)
    chunks, commitment = silos["d"].encrypt(updates(SILOS)["d"])
    with pytest.raises(InvalidInput, match="before its last ciphertext"):
        stream(
            rig.driver.contribution("d", 0, commitment), [(chunks[0].chunk_index, chunks[0].data)]
        )
    with pytest.raises(StageError, match="cannot be restarted"):
        rig.driver.contribution("d", 0, commitment)


# -- refusals ---------------------------------------------------------------------------------------------------
def test_second_submissions_are_refused(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    silos["a"].contribute(units["a"])
    _, commitment = silos["a"].encrypt(units["a"])
    with pytest.raises(DuplicateSubmission, match="a already contributed for round 0"):
        paillier.driver.contribution("a", 0, commitment)
    for s in "bcd":
        silos[s].contribute(units[s])
    check_aggregate(paillier, silos)
    partial = silos["a"].partial()
    paillier.driver.partial_decryption("a", 0, partial)
    with pytest.raises(DuplicateSubmission, match="answered the decryption request"):
        paillier.driver.partial_decryption("a", 0, partial)
    with pytest.raises(DuplicateSubmission):
        silos["a"].refuse()
    silos["b"].decrypt()
    assert paillier.driver.result(0, WAIT).status is RoundStatus.COMPLETED


def test_messages_for_another_stage_are_refused(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    digest = b"\0" * 32
    challenge = SpotCheckChallenge(digest, (0,), b"\0" * 32)
    with pytest.raises(StageError, match="is in stage collect, not challenge"):
        paillier.driver.challenge("a", 0, challenge)
    with pytest.raises(StageError, match="is in stage collect, not fold"):
        paillier.driver.folds("a", 0, [])
    with pytest.raises(StageError, match="is in stage collect, not decrypt"):
        paillier.driver.refuse("a", 0, digest, "no")
    for s in SILOS:
        silos[s].contribute(units[s])
    with pytest.raises(TimeoutError, match="stage fold of round 0 is still open"):  # a long poll
        paillier.driver.open_spot_checks("a", 0, challenge)
    check_aggregate(paillier, silos)
    partial = silos["a"].partial()
    _, commitment = PaillierSilo(paillier, paillier_keys, "a").encrypt(units["a"])
    with pytest.raises(StageError, match="is in stage decrypt, not collect"):
        paillier.driver.contribution("a", 0, commitment)
    paillier.driver.partial_decryption("a", 0, partial)


def test_a_partial_decryption_of_another_request_is_invalid_input(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    for s in SILOS:
        silos[s].contribute(units[s])
    check_aggregate(paillier, silos)
    partial = silos["a"].partial()
    with pytest.raises(InvalidInput, match="another request"):
        paillier.driver.partial_decryption(
            "a", 0, dataclasses.replace(partial, request_digest=b"\1" * 32)
        )
    paillier.driver.partial_decryption("a", 0, partial)  # the refusal did not count as an answer


def test_an_unknown_round_is_not_found(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    silo = PaillierSilo(paillier, paillier_keys, "a")
    _, commitment = silo.encrypt(updates(SILOS)["a"])
    with pytest.raises(NotFound, match="round 3 is not open"):
        paillier.driver.contribution("a", 3, commitment)
    with pytest.raises(NotFound):
        paillier.driver.decryption_request("a", 3, WAIT)
    with pytest.raises(NotFound, match="beyond the 1 planned rounds"):
        paillier.driver.result(1, 0)
    assert paillier.driver.held_bytes(3) == 0


def test_a_caller_that_is_not_a_member_or_not_itself_is_unauthorized(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    _, of_b = silos["b"].encrypt(units["b"])
    with pytest.raises(Unauthorized, match="its own contribution"):
        paillier.driver.contribution("a", 0, of_b)
    with pytest.raises(Unauthorized, match="not a member"):
        paillier.driver.contribution("mallory", 0, dataclasses.replace(of_b, silo_id="mallory"))
    with pytest.raises(Unauthorized, match="not a member"):
        paillier.driver.decryption_request("mallory", 0, 0)
    for s in SILOS:
        silos[s].contribute(units[s])
    mallory = SpotCheckChallenge(b"\0" * 32, (0,), b"\0" * 32)
    with pytest.raises(Unauthorized, match="not a member"):
        paillier.driver.challenge("mallory", 0, mallory)
    check_aggregate(paillier, silos)
    with pytest.raises(Unauthorized, match="not a member"):
        paillier.driver.open_spot_checks("mallory", 0, mallory)
    partial_of_b = silos["b"].partial()
    with pytest.raises(Unauthorized, match="decrypt as itself"):
        paillier.driver.partial_decryption("a", 0, partial_of_b)
    paillier.driver.partial_decryption("b", 0, partial_of_b)
    silos["a"].decrypt()
    assert paillier.driver.result(0, WAIT).survivors == SILOS


# -- long polls -------------------------------------------------------------------------------------------------
def test_the_decryption_request_long_poll(
    paillier: Rig[PaillierRounds], paillier_keys: ThresholdKeyMaterial
) -> None:
    units = updates(SILOS)
    silos = paillier_silos(paillier, paillier_keys)
    with pytest.raises(TimeoutError, match="still open"):
        paillier.driver.decryption_request("a", 0, 0.01)
    got: list[DecryptionRequest] = []
    poll = threading.Thread(
        target=lambda: got.append(paillier.driver.decryption_request("c", 0, WAIT))
    )
    poll.start()
    for s in SILOS:
        silos[s].contribute(units[s])
    poll.join(WAIT)
    (request,) = got
    assert request.digest() == paillier.driver.decryption_request("a", 0, 0).digest()


# -- the new global model ---------------------------------------------------------------------------------------
def test_the_next_model_is_blockwise_fedavg_of_the_decrypted_sum(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> None:
    rig = coordinators.paillier(paillier_keys, rounds=2)
    quantizer = Quantizer(clip=EXACT_CLIP, bits=EXACT_BITS, max_silos=len(SILOS))
    for r, contributors in ((0, SILOS), (1, ("a", "c", "d"))):
        units = updates(SILOS, round_=r)
        outcome = run_paillier_round(rig, paillier_keys, units, round_=r, contributors=contributors)
        assert outcome.survivors == contributors
        contributed = [units[s] for s in contributors]
        start, new = rig.model(r), rig.model(r + 1)
        assert np.array_equal(new, expected_model(start, contributed))
        assert np.array_equal(new, independent_fedavg(quantizer, start, contributed))
        assert outcome.new_model_hash == rig.record(r).new_model_hash == model_hash(new)


# -- any set of contributors and key holders ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_federation(
    tmp_path_factory: pytest.TempPathFactory,
    members: Members,
    paillier_keys: ThresholdKeyMaterial,
) -> Iterator[Rig[PaillierRounds]]:
    """Rounds enough for every example: each example plays the next round."""
    built = Coordinators(tmp_path_factory.mktemp("paillier-dropouts"), members, FakeClock())
    try:
        yield built.paillier(paillier_keys, rounds=1000)
    finally:
        built.close()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contributors=st.sets(st.sampled_from(SILOS)),
    decrypters=st.lists(st.sampled_from(SILOS), unique=True, max_size=2),
)
def test_any_cohort_of_min_cohort_contributors_and_t_key_holders_gives_the_exact_sum(
    long_federation: Rig[PaillierRounds],
    paillier_keys: ThresholdKeyMaterial,
    contributors: set[str],
    decrypters: list[str],
) -> None:
    rig = long_federation
    r = rig.driver.view(wait=WAIT).config.round_number
    units = updates(SILOS, round_=r)
    cohort = tuple(s for s in SILOS if s in contributors)
    outcome = run_paillier_round(
        rig, paillier_keys, units, round_=r, contributors=cohort, decrypters=decrypters
    )
    if len(cohort) < 3 or len(decrypters) < 2:
        assert outcome.status is RoundStatus.ABORTED
        assert np.array_equal(rig.model(r + 1), rig.model(r))
        return
    assert (outcome.status, outcome.survivors) == (RoundStatus.COMPLETED, cohort)
    assert np.array_equal(
        rig.model(r + 1), expected_model(rig.model(r), [units[s] for s in cohort])
    )


# -- trust parameters: t > c and min_cohort - c >= 2 (DESIGN 5) ---------------------------------------------------
@pytest.mark.parametrize(
    ("collusion", "min_cohort", "refusal"),
    [
        (2, 4, "t=2 must exceed collusion c=2"),  # the key's t = 2 <= c
        (3, 4, "t=2 must exceed collusion c=3"),
        (1, 2, "min_cohort 2 - collusion 1 must be >= 2"),  # min_cohort - c < 2
        (0, 1, "min_cohort 1 - collusion 0 must be >= 2"),
    ],
)
def test_the_coordinator_refuses_a_key_or_cohort_the_colluders_could_defeat(
    tmp_path_factory: pytest.TempPathFactory,
    members: Members,
    paillier_keys: ThresholdKeyMaterial,
    collusion: int,
    min_cohort: int,
    refusal: str,
) -> None:
    from audits import CheckpointSigner
    from coordinator.common import ledger_origin
    from coordinator.rounds.audit import AuditTrail
    from coordinator.store import SQLiteStore
    from tests.coordinator.rounds.conftest import FEDERATION, federation_settings

    settings_ = dataclasses.replace(
        federation_settings(threshold=paillier_keys.public_key.threshold, min_cohort=min_cohort),
        collusion=collusion,
    )
    tmp_path = tmp_path_factory.mktemp("trust")
    db = tmp_path / "coordinator.sqlite"
    store = SQLiteStore(db)
    signer = CheckpointSigner(members.audit_key, key_name=ledger_origin(FEDERATION))
    audit = AuditTrail.open(db, federation=FEDERATION, signer=signer)
    try:
        with pytest.raises(InvalidInput, match=refusal) as refused:
            PaillierRounds(
                settings=settings_,
                roster=members.roster,
                store=store,
                initial_model=start_model(),
                audit=audit,
                public_key=paillier_keys.public_key,
                spool_dir=tmp_path,
            )
        assert "\n" not in str(refused.value)
        assert store.rounds(FEDERATION) == []  # refused before the federation was registered
    finally:
        store.close()
        audit.close()


def test_the_key_ceremony_command_refuses_a_threshold_or_cohort_the_colluders_could_defeat(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``secagg pki paillier`` runs :func:`coordinator.pki.paillier.create_paillier_keys`."""
    from coordinator.errors import PKIError
    from coordinator.pki import create_consortium
    from coordinator.pki.paillier import PaillierFiles, create_paillier_keys

    consortium = create_consortium(
        tmp_path_factory.mktemp("ceremony") / "pki", federation="fed", silos=["a", "b", "c", "d"]
    )
    refusals = [
        ({"threshold": 2, "collusion": 2, "min_cohort": 4}, "t=2 must exceed collusion c=2"),
        (
            {"threshold": 3, "collusion": 1, "min_cohort": 2},
            "min_cohort 2 - collusion 1 must be >= 2",
        ),
        ({"threshold": 3, "collusion": 0, "min_cohort": 5}, "exceeds the 4 key holders"),
    ]
    for arguments, refusal in refusals:
        with pytest.raises(PKIError, match=refusal):
            create_paillier_keys(consortium, key_bits=256, insecure_test_key_size=True, **arguments)
    files = PaillierFiles.for_silo(consortium.root, "a")
    assert not files.public_key.exists() and not files.share.exists()  # nothing was written
    create_paillier_keys(
        consortium,
        threshold=3,
        collusion=1,
        min_cohort=3,
        key_bits=256,
        insecure_test_key_size=True,
    )
    pinned = bytes.fromhex(consortium.consortium_public_key.read_text(encoding="utf-8"))
    key, share = files.load(federation="fed", consortium_key=pinned)
    assert (key.threshold, share.index) == (3, 1)
