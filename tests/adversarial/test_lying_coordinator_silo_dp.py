"""Silo-level DP against a lying coordinator, over real mTLS gRPC and the real SDK (``Silo.run``).

The coordinator is the real one (``MaskingRounds`` behind the real ``FederationServicer``, built by the
production server builder with the consortium's coordinator certificate), altered the way an actively malicious
operator can alter it: a servicer subclass that changes what it sends, or a different plan given to the round
driver itself (then the coordinator announces and binds the lie consistently, the strongest position for it).

Every attack is shown twice where that is meaningful: first succeeding against the silo's unguarded path (the
SDK's public test-only ``insecure_test_trust_announced_plan``, which trusts the announced plan as the SDK did
before, or by computing what the old checks accepted), then failing against the guards of
:mod:`coordinator.sdk.silo_dp` and the SDK's train-after-admission. Silos train with a stand-in for
``dp.training.PrivateTrainer`` that records every DP-SGD round it runs in a real RDP accountant, so "spent no
record-level budget" is an empty accountant.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest

from coordinator.common import RoundStatus
from coordinator.config import SiloDPConfig, SiloPolicy
from coordinator.errors import Aborted, InvalidInput, PrivacyRefused, StageError, Unauthorized
from coordinator.pki import silo_identity
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.driver import FederationSettings
from coordinator.rounds.masking import MaskingRounds
from coordinator.sdk.masking import PrivateUpdate, RoundContext, RoundReport
from coordinator.sdk.silo_dp import SiloLevelTally, derive_plan
from coordinator.server.app import bind_server
from coordinator.store import SQLiteStore
from coordinator.wire.errors import to_status
from coordinator.wire.masking import config_from_pb, config_to_pb
from coordinator.wire.silo_dp import plan_config_from_pb, plan_to_pb
from dp.accounting import RdpAccountant
from dp.distributed import DistributedDPPlan, plan
from secagg import ProtocolViolation, SecAggClient
from tests.adversarial.test_lying_coordinator import Liar
from tests.e2e.harness import (
    SHORT,
    Consortium,
    audit_trail,
    deadlines_with,
    in_threads,
    settings,
)
from tests.e2e.test_privacy_attestation import STEP, DpUpdate

pytestmark = pytest.mark.e2e

LENGTH = 200  # padded to 256 by the rotation
NOISE = 0.8
SILO_DP = SiloDPConfig(noise_multiplier=NOISE)

Outcome = list[RoundReport] | Exception


# -- the coordinator ---------------------------------------------------------------------------------------------
class Recording(Liar):
    """The honest servicer, recording every submission that reached it: (rpc, silo).

    ``planned`` is the silo-level DP plan the federation's configuration makes, before any lie.
    """

    planned: DistributedDPPlan | None = None

    def caller(self, context: grpc.ServicerContext) -> str:
        auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
        return silo_identity(auth)

    def AdvertiseKeys(
        self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        self.received.append(("AdvertiseKeys", request.advertisement.silo))
        return super().AdvertiseKeys(request, context)

    def UploadMaskedInput(
        self, request_iterator: Iterator[pb.MaskedChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        self.received.append(("UploadMaskedInput", self.caller(context)))
        return super().UploadMaskedInput(request_iterator, context)

    def sent(self, rpc: str) -> list[str]:
        """The silos whose ``rpc`` submission reached the coordinator."""
        return sorted(silo for name, silo in self.received if name == rpc)


def fail(context: grpc.ServicerContext, exc: Exception) -> None:
    """End the call with ``exc`` through the one error table, as the real servicers do."""
    status = to_status(exc)
    assert status is not None
    code, message, trailer = status
    context.set_trailing_metadata(trailer)
    context.abort(code, message)


@contextmanager
def coordinator(
    consortium: Consortium,
    db: Path,
    federation: FederationSettings,
    servicer: type[Recording] = Recording,
    *,
    plan_lie: Mapping[str, Any] | None = None,
) -> Iterator[tuple[Recording, str, MaskingRounds]]:
    """A coordinator on 127.0.0.1 port 0 with mTLS; ``plan_lie`` changes the silo-level DP plan it runs with."""
    store = SQLiteStore(db)
    rounds = MaskingRounds(
        settings=federation,
        roster=consortium.roster,
        store=store,
        initial_model=np.zeros(federation.vector_length, np.float32),
        audit=audit_trail(consortium, db),
    )
    lying = servicer(rounds)
    lying.planned = rounds.silo_dp_plan
    if plan_lie is not None:
        assert rounds.silo_dp_plan is not None
        lied = dataclasses.replace(rounds.silo_dp_plan.config, **plan_lie)
        rounds.silo_dp_plan = plan(lied, federation.vector_length)

    def add(server: grpc.Server, shared: dict[str, Any]) -> str:
        pb_grpc.add_FederationServicer_to_server(lying, server)
        return "coordinator.proto.v1.Federation"

    server, port = bind_server(rounds, "127.0.0.1:0", add, tls=consortium.coordinator_tls())
    server.start()
    rounds.start()
    try:
        yield lying, f"127.0.0.1:{port}", rounds
    finally:
        rounds.stop()
        server.stop(0).wait()
        store.close()
        rounds.audit.close()


def federation(
    *, collusion: int = 0, silo_dp: SiloDPConfig | None = SILO_DP, **harness: Any
) -> FederationSettings:
    """Three silos a..c with silo-level DP (t = 2, min_cohort = 3, c = 0, dropouts tolerated 0)."""
    arguments = {"n": 3, "length": LENGTH, "threshold": 2, "min_cohort": 3, "clip": 1.0, "bits": 16}
    base = settings(**(arguments | harness))
    return dataclasses.replace(base, collusion=collusion, silo_dp=silo_dp)


# -- the silos ---------------------------------------------------------------------------------------------------
class Trainer:
    """A stand-in for ``dp.training.PrivateTrainer``: every call is one DP-SGD round in a real RDP accountant."""

    def __init__(self) -> None:
        self.accountant = RdpAccountant()
        self.rounds: list[int] = []

    def __call__(self, ctx: RoundContext) -> PrivateUpdate:
        self.rounds.append(ctx.round)
        self.accountant.record(STEP)
        return DpUpdate(np.zeros(LENGTH), self.accountant.history)


def run_silos(
    consortium: Consortium,
    address: str,
    *,
    policy: SiloPolicy | None = None,
    trust: bool = False,
    rounds: int | None = 1,
    tallies: Path | None = None,
    trainers: Mapping[str, Trainer] | None = None,
) -> dict[str, Outcome]:
    """Each silo runs ``rounds`` rounds (``None``: until the federation ends); its reports, or what it raised."""

    def silo(s: str) -> Outcome:
        train = trainers[s] if trainers is not None else Trainer()
        options: dict[str, Any] = {
            "policy": policy or SiloPolicy(min_cohort=2),
            "insecure_test_trust_announced_plan": trust,
        }
        if tallies is not None:
            options["tally_path"] = tallies / f"{s}.json"
        try:
            with consortium.sdk(s, address, **options) as client:
                return list(client.run(train, max_rounds=rounds))
        except Exception as exc:  # the SDK's refusal is the result under test
            return exc

    outcomes = in_threads(*[lambda s=s: silo(s) for s in consortium.silos])
    return dict(zip(consortium.silos, outcomes, strict=True))


def trainers(consortium: Consortium) -> dict[str, Trainer]:
    return {s: Trainer() for s in consortium.silos}


def share_std(p: DistributedDPPlan) -> float:
    """Standard deviation of one silo's noise share in units of the update."""
    return float(np.sqrt(p.share_variance) / p.scale)


# -- 1. the plan lies -------------------------------------------------------------------------------------------
PLAN_LIES = {
    # name: (federation, the plan the coordinator runs with instead, the silos' policy, refusal, noise left)
    "inflated n": (
        federation(),
        {"n_silos": 100},
        SiloPolicy(min_cohort=3, min_silo_dp_noise_multiplier=NOISE / 2),
        "n_silos 100 (this silo derives 3 from the pinned roster)",
        np.sqrt(3 / 100),  # the review's figure: 0.17 of the noise share the silo needs
    ),
    "lowered collusion bound": (
        federation(collusion=1, threshold=3),
        {"collusion_bound": 0},
        SiloPolicy(min_cohort=3, max_collusion_assumed=1),
        "collusion_bound 0 (this silo derives 1",
        np.sqrt(2 / 3),
    ),
    "lowered dropouts": (
        federation(
            silo_dp=SiloDPConfig(noise_multiplier=NOISE, dropouts_tolerated=1), min_cohort=2
        ),
        {"dropouts_tolerated": 0},
        SiloPolicy(min_cohort=2, min_silo_dp_dropouts_tolerated=1),
        "dropouts_tolerated 0 (this silo derives 1",
        np.sqrt(2 / 3),
    ),
}


@pytest.mark.parametrize("lie", list(PLAN_LIES))
def test_a_plan_that_shrinks_the_noise_shares_is_refused_before_anything_is_sent(
    trio: Consortium, tmp_path: Path, lie: str
) -> None:
    config, lied, policy, refusal, noise_left = PLAN_LIES[lie]

    # attack: the unguarded silo takes the coordinator's plan; everyone shares keys, uploads and unmasks
    with coordinator(trio, tmp_path / "lie.db", config, plan_lie=lied) as (liar, address, rounds):
        assert liar.planned is not None and rounds.silo_dp_plan is not None
        ratio = share_std(rounds.silo_dp_plan) / share_std(liar.planned)
        outcomes = run_silos(trio, address, policy=policy, trust=True)
    assert all(isinstance(o, list) for o in outcomes.values()), outcomes
    assert liar.sent("UploadMaskedInput") == liar.sent("Unmask") == trio.silos
    assert ratio == pytest.approx(
        noise_left
    )  # each silo added only this share of the noise it needed

    # defence: each silo derives its own plan and refuses, naming the lie, before training or sending
    with coordinator(trio, tmp_path / "guard.db", config, plan_lie=lied) as (liar, address, _):
        guarded = trainers(trio)
        outcomes = run_silos(trio, address, policy=policy, trainers=guarded)
    for outcome in outcomes.values():
        assert isinstance(outcome, Unauthorized) and refusal in str(outcome), outcome
    assert liar.received == []
    assert all(t.rounds == [] for t in guarded.values())


class AnnouncesFewerRounds(Recording):
    """Announces a plan (and a federation) of one round, then runs three: the silos' epsilon is a lie."""

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        info = super().GetRound(request, context)
        info.rounds = 1
        return info


def test_more_rounds_than_the_plan_announced_are_refused(trio: Consortium, tmp_path: Path) -> None:
    config = federation(rounds=3)

    # attack: unguarded, every silo contributes to all three rounds of a "one-round" plan
    with coordinator(
        trio, tmp_path / "lie.db", config, AnnouncesFewerRounds, plan_lie={"rounds": 1}
    ) as (liar, address, _):
        outcomes = run_silos(trio, address, trust=True, rounds=None)
    assert all(isinstance(o, list) and len(o) == 3 for o in outcomes.values()), outcomes
    assert liar.sent("UploadMaskedInput") == sorted(trio.silos * 3)

    # defence: the silo's own tally counts the first release; the second is beyond the plan
    with coordinator(
        trio, tmp_path / "guard.db", config, AnnouncesFewerRounds, plan_lie={"rounds": 1}
    ) as (liar, address, _):
        guarded = trainers(trio)
        outcomes = run_silos(trio, address, rounds=None, trainers=guarded)
    for outcome in outcomes.values():
        assert isinstance(outcome, PrivacyRefused)
        assert "release 2 would exceed the 1 rounds the announced plan is for" in str(outcome)
    assert liar.sent("UploadMaskedInput") == trio.silos  # round 0 only
    assert all(t.rounds == [0] for t in guarded.values())  # no budget spent on the refused round


# -- 2. a split view ----------------------------------------------------------------------------------------------
class MoreBitsForA(Recording):
    """Shows silo a a plan with 8 more bits: a's update would weigh 256 times over the others' noise."""

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        info = super().GetRound(request, context)
        if info.HasField("silo_dp") and self.caller(context) == "a":
            info.silo_dp.bits += 8
        return info


def test_a_different_plan_for_one_silo_is_what_the_old_checks_accepted(
    trio: Consortium, tmp_path: Path
) -> None:
    """Positive control, computed: a's view passes every check a silo can make alone, and without the plan in
    the round parameters all three silos' advertisements would have verified for each other."""
    with coordinator(trio, tmp_path / "c.db", federation()) as (liar, _, rounds):
        info = pb.RoundInfo(rounds=1)
        config_to_pb(rounds.announce(0), info)
        assert liar.planned is not None
        info.silo_dp.CopyFrom(plan_to_pb(liar.planned))
    split = pb.RoundInfo()
    split.CopyFrom(info)
    split.silo_dp.bits += 8
    policy = SiloPolicy(min_cohort=3, min_silo_dp_noise_multiplier=NOISE)
    views = {
        name: derive_plan(
            plan_config_from_pb(view.silo_dp),
            LENGTH,
            round_config=config_from_pb(view),
            roster=trio.roster,
            policy=policy,
            planned_rounds=1,
        )
        for name, view in (("honest", info), ("split", split))
    }
    assert views["split"].scale / views["honest"].scale == pytest.approx(256, rel=0.01)
    old = config_from_pb(info)  # the round parameters as the old SDK signed them: no plan digest
    assert old.params_hash() == config_from_pb(split).params_hash()
    bound = {k: dataclasses.replace(old, silo_dp_hash=p.digest()) for k, p in views.items()}
    assert bound["honest"] == rounds.announce(0)  # the coordinator binds the same digest
    assert bound["honest"].params_hash() != bound["split"].params_hash()

    # with the digest bound, b rejects the advertisement a signed under its view
    clients = {
        s: SecAggClient(
            silo=s,
            signing_key=trio.signing_key(s),
            roster=trio.roster,
            config=bound["split" if s == "a" else "honest"],
        )
        for s in trio.silos
    }
    ads = [c.advertise() for c in clients.values()]
    with pytest.raises(ProtocolViolation, match="advertisement of a does not verify"):
        clients["b"].share_keys(ads)


def test_a_split_view_aborts_the_round_and_nobody_trains(trio: Consortium, tmp_path: Path) -> None:
    config = federation(deadlines=deadlines_with(advertise=SHORT))
    with coordinator(trio, tmp_path / "c.db", config, MoreBitsForA) as (liar, address, rounds):
        silos = trainers(trio)
        policy = SiloPolicy(min_cohort=3, min_silo_dp_noise_multiplier=NOISE)
        outcomes = run_silos(trio, address, policy=policy, trainers=silos)
        records = rounds.store.rounds(trio.federation)
    # a's advertisement, signed under its view, does not verify under the coordinator's own plan
    assert isinstance(outcomes["a"], InvalidInput) and "does not verify" in str(outcomes["a"])
    for s in ("b", "c"):
        (report,) = cast(list[RoundReport], outcomes[s])
        assert report.status is RoundStatus.ABORTED
    assert records[0].status is RoundStatus.ABORTED
    assert liar.sent("ShareKeys") == liar.sent("UploadMaskedInput") == []
    assert all(t.rounds == [] for t in silos.values())


# -- 3. the survivor minimum ---------------------------------------------------------------------------------------
class HidesCFromSurvivors(Recording):
    """U3 without c, who uploaded: a and b would reveal c's mask-key share and unmask a sum of two.

    The plan's noise shares need all three silos (dropouts tolerated 0), so a released sum of two carries 2/3 of
    the central noise. The survivor signatures on the fake U3 are caught here and replayed in the request.
    """

    def __init__(self, rounds: MaskingRounds) -> None:
        super().__init__(rounds)
        self.signatures: dict[str, bytes] = {}
        self.signed = threading.Condition()

    def GetSurvivors(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.SurvivorSet:
        honest = super().GetSurvivors(request, context)
        return pb.SurvivorSet(survivors=[s for s in honest.survivors if s != "c"])

    def SignSurvivors(
        self, request: pb.SignSurvivorsRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        with self.signed:
            self.signatures[request.silo] = bytes(request.signature)
            self.signed.notify_all()
        return pb.Ack()

    def GetUnmaskRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.UnmaskRequest:
        with self.signed:
            self.signed.wait_for(lambda: {"a", "b"} <= set(self.signatures), timeout=10)
            signatures = [
                pb.SurvivorSignature(silo=s, signature=v) for s, v in self.signatures.items()
            ]
        return pb.UnmaskRequest(survivors=["a", "b"], dropped=["c"], signatures=signatures)

    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        self.received.append(("Unmask", request.silo))
        return pb.Ack()


def test_a_survivor_set_below_the_plans_minimum_gets_no_share_revealed(
    trio: Consortium, tmp_path: Path
) -> None:
    config = federation(min_cohort=2, deadlines=deadlines_with(consistency=SHORT))

    # attack: unguarded, a and b sign the two-silo U3 and reveal their shares (c's mask key among them)
    with coordinator(trio, tmp_path / "lie.db", config, HidesCFromSurvivors) as (
        liar,
        address,
        rounds,
    ):
        assert rounds.silo_dp_plan is not None and rounds.silo_dp_plan.config.min_contributors == 3
        run_silos(trio, address, trust=True)
    assert liar.sent("Unmask") == ["a", "b"]

    # defence: they refuse before revealing anything
    with coordinator(trio, tmp_path / "guard.db", config, HidesCFromSurvivors) as (
        liar,
        address,
        _,
    ):
        outcomes = run_silos(trio, address)
    for s in ("a", "b"):
        (report,) = cast(list[RoundReport], outcomes[s])
        assert report.status is RoundStatus.ABORTED
        assert report.reason == (
            "refused: only 2 survivors; the silo-level DP plan's noise needs at least 3 contributions"
        )
    assert liar.sent("Unmask") == []


# -- 4. the silo's own budget --------------------------------------------------------------------------------------
class AbortsAfterUpload(Recording):
    """Round 0: takes every masked input, then tells the silos the round was aborted."""

    def GetSurvivors(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.SurvivorSet:
        if request.round == 0:
            fail(context, Aborted("round 0 was aborted: too few silos"))
        return super().GetSurvivors(request, context)


def ceiling(p: DistributedDPPlan) -> float:
    """Between the silo-level epsilon of one release under ``p`` and that of two."""
    return (p.silo_level_epsilon(rounds=1).epsilon + p.silo_level_epsilon(rounds=2).epsilon) / 2


@pytest.mark.parametrize("limit", ["release cap", "epsilon ceiling"])
def test_a_release_in_an_aborted_round_counts_against_the_silos_own_budget_after_a_restart(
    trio: Consortium, tmp_path: Path, limit: str
) -> None:
    config = federation(rounds=2, deadlines=deadlines_with(consistency=SHORT))
    tallies = tmp_path / "state"
    with coordinator(trio, tmp_path / "c.db", config, AbortsAfterUpload) as (liar, address, rounds):
        assert liar.planned is not None
        if limit == "release cap":
            policy = SiloPolicy(min_cohort=2, max_silo_level_releases=1)
            refusal = "silo-level release cap reached: 1 of this silo's 1 releases made"
        else:
            policy = SiloPolicy(min_cohort=2, max_silo_level_epsilon=ceiling(liar.planned))
            refusal = "after release 2, above this silo's ceiling"
        first = run_silos(trio, address, policy=policy, tallies=tallies)
        # the silos restart: a new SDK over the same state directory
        silos = trainers(trio)
        second = run_silos(trio, address, policy=policy, tallies=tallies, trainers=silos)
        records = rounds.store.rounds(trio.federation)
    assert records[0].status is RoundStatus.ABORTED  # what the coordinator says about round 0
    for s in trio.silos:
        (report,) = cast(list[RoundReport], first[s])
        assert report.status is RoundStatus.ABORTED and "too few silos" in report.reason
        tally = SiloLevelTally(tallies / f"{s}.json", federation=trio.federation, silo=s)
        assert [r.round for r in tally.releases] == [0]  # counted although "aborted"
        outcome = second[s]
        assert isinstance(outcome, PrivacyRefused) and refusal in str(outcome), outcome
        assert "\n" not in str(outcome)
    assert liar.sent("UploadMaskedInput") == trio.silos  # round 0 only; nothing in round 1
    assert liar.sent("AdvertiseKeys") == trio.silos
    assert all(t.rounds == [] for t in silos.values())


# -- 5. budget drain: train after admission -------------------------------------------------------------------------
class LeavesCOutOfU1(Recording):
    def GetAdvertisements(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.AdvertisementSet:
        ads = super().GetAdvertisements(request, context)
        if request.silo == "c":
            return pb.AdvertisementSet(
                advertisements=[a for a in ads.advertisements if a.silo != "c"]
            )
        return ads


class LeavesCOutOfU2(Recording):
    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        if request.silo == "c":
            fail(context, StageError("c is not in U2 of round 0"))
        return super().GetInbox(request, context)


class AbortsForC(Recording):
    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        if request.silo == "c":
            fail(context, Aborted("round 0 was aborted"))
        return super().GetInbox(request, context)


@pytest.mark.parametrize("liar", [LeavesCOutOfU1, LeavesCOutOfU2, AbortsForC])
def test_a_silo_excluded_before_admission_spends_no_record_level_budget(
    trio: Consortium, tmp_path: Path, liar: type[Recording]
) -> None:
    """Budget drain: before this change the silo trained before stage 1, so c paid for a round it never
    entered. Now only the admitted silos train (the positive control that training does happen)."""
    deadlines = deadlines_with(share_keys=SHORT, masked_input=SHORT)
    config = federation(silo_dp=None, min_cohort=2, deadlines=deadlines)
    with coordinator(trio, tmp_path / "c.db", config, liar) as (servicer, address, rounds):
        silos = trainers(trio)
        outcomes = run_silos(trio, address, trainers=silos)
        records = rounds.store.rounds(trio.federation)
    assert silos["c"].accountant.history == ()  # c spent nothing
    assert [len(silos[s].accountant.history) for s in ("a", "b")] == [1, 1]
    (report,) = cast(list[RoundReport], outcomes["c"])
    assert report.status is RoundStatus.ABORTED
    for s in ("a", "b"):
        (report,) = cast(list[RoundReport], outcomes[s])
        assert report.status is RoundStatus.COMPLETED and report.survivors == ("a", "b")
    assert records[0].status is RoundStatus.COMPLETED
    assert servicer.sent("UploadMaskedInput") == ["a", "b"]
