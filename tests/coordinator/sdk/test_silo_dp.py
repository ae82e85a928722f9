"""The silo's own silo-level DP guards (:mod:`coordinator.sdk.silo_dp`): the plan it derives and its tally.

Each lie of the outside review is shown twice: what the SDK accepted before it derived its own plan (the noise
floor and the vector length were its only checks, so the lie passes them and shrinks the silo's noise), and the
refusal now. The tally is exercised through its file: a restarted silo reads what it counted before.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from coordinator.config import SiloPolicy
from coordinator.errors import Aborted, InvalidInput, PrivacyRefused, StoreError, Unauthorized
from coordinator.pki import ConsortiumPaths
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.sdk import Silo
from coordinator.sdk.silo_dp import SiloLevelTally, derive_plan
from coordinator.wire.masking import config_from_pb
from coordinator.wire.silo_dp import plan_config_from_pb, plan_to_pb
from dp.distributed import DistributedDPConfig, DistributedDPPlan, plan
from secagg import Roster, RoundConfig
from tests.coordinator.sdk.fakes import MODEL, Server, announced, connect

LENGTH = MODEL.shape[0]  # 23, padded to 32 by the rotation
NOISE = 0.8


def federation_plan(**overrides: object) -> DistributedDPPlan:
    """The plan a coordinator of three silos makes (``MaskingRounds``: c = 1 like ``announced``)."""
    settings: dict[str, object] = {
        "l2_norm_clip": 1.0,
        "rounds": 1,
        "n_silos": 3,
        "noise_multiplier": NOISE,
        "collusion_bound": 1,
    }
    return plan(DistributedDPConfig(**(settings | overrides)), LENGTH)  # type: ignore[arg-type]


def dp_round(consortium: ConsortiumPaths, p: DistributedDPPlan, **fields: object) -> pb.RoundInfo:
    """Round 0 of ``announced`` with silo-level DP under ``p``."""
    return announced(consortium, vector_length=p.padded_dimension, silo_dp=plan_to_pb(p), **fields)


def derive(
    consortium: ConsortiumPaths, info: pb.RoundInfo, policy: SiloPolicy | None = None
) -> DistributedDPPlan:
    return derive_plan(
        plan_config_from_pb(info.silo_dp),
        int(info.silo_dp.model_length),
        round_config=config_from_pb(info),
        roster=Roster.loads(consortium.roster.read_text()),
        policy=policy or SiloPolicy(),
        planned_rounds=int(info.rounds),
    )


def old_checks_pass(p: DistributedDPPlan, config: RoundConfig, policy: SiloPolicy) -> bool:
    """What the SDK checked before it derived its own plan: the noise floor and the vector length."""
    policy.check_silo_dp(p.noise_multiplier)
    return p.padded_dimension == config.vector_length


def share_std(p: DistributedDPPlan) -> float:
    """Standard deviation of one silo's noise share, in units of the update (the silo's own protection)."""
    return math.sqrt(p.share_variance) / p.scale


# -- the plan the silo derives -------------------------------------------------------------------------------


def test_an_honest_announcement_derives_the_coordinators_plan_and_digest(
    consortium: ConsortiumPaths,
) -> None:
    honest = federation_plan()
    own = derive(consortium, dp_round(consortium, honest))
    assert own == honest
    assert own.digest() == honest.digest()


LIES = [
    # (what the coordinator changes in its plan, the silo's policy, the field the refusal names)
    ({"n_silos": 100}, SiloPolicy(), "n_silos 100 (this silo derives 3 from the pinned roster)"),
    ({"collusion_bound": 0}, SiloPolicy(), "collusion_bound 0 (this silo derives 1"),
    (
        {"collusion_bound": 1, "dropouts_tolerated": 0},
        SiloPolicy(min_silo_dp_dropouts_tolerated=1),
        "dropouts_tolerated 0 (this silo derives 1",
    ),
]


@pytest.mark.parametrize(("lie", "policy", "refusal"), LIES)
def test_a_plan_that_shrinks_the_silos_noise_is_refused(
    consortium: ConsortiumPaths, lie: dict[str, object], policy: SiloPolicy, refusal: str
) -> None:
    honest = plan(
        dataclasses.replace(
            federation_plan().config, dropouts_tolerated=policy.min_silo_dp_dropouts_tolerated
        ),
        LENGTH,
    )
    lied = federation_plan(**lie)
    info = dp_round(consortium, lied)
    # positive control: the checks of the SDK before this change pass, and the silo would add less noise
    assert old_checks_pass(lied, config_from_pb(info), policy)
    assert share_std(lied) < share_std(honest)
    with pytest.raises(Unauthorized, match=r"not the one this silo derives") as refused:
        derive(consortium, info, policy)
    assert refusal in str(refused.value)


def test_inflated_n_would_have_cut_the_noise_to_a_sixth() -> None:
    """The review's figure: n = 100 for a roster of 3 leaves sqrt(3/100) ~ 0.17 of the silo's noise."""
    ratio = share_std(federation_plan(n_silos=100, collusion_bound=0)) / share_std(
        federation_plan(collusion_bound=0)
    )
    assert ratio == pytest.approx(math.sqrt(3 / 100), rel=0.05)


def test_the_silos_own_collusion_assumption_counts(consortium: ConsortiumPaths) -> None:
    """c = 1 announced everywhere, but this silo assumes 2 colluders: the plan is too weak for it."""
    info = dp_round(consortium, federation_plan())
    with pytest.raises(Unauthorized, match=r"collusion_bound 1 \(this silo derives 2"):
        derive(consortium, info, SiloPolicy(max_collusion_assumed=2))


def test_a_plan_for_other_rounds_than_the_federation_announces_is_refused(
    consortium: ConsortiumPaths,
) -> None:
    info = dp_round(consortium, federation_plan(rounds=1), rounds=3)
    with pytest.raises(Unauthorized, match=r"rounds 1 \(the federation announces 3 rounds\)"):
        derive(consortium, info)


def test_the_noise_floor_and_the_vector_length_still_hold(consortium: ConsortiumPaths) -> None:
    p = federation_plan()
    with pytest.raises(Unauthorized, match="below this silo's minimum"):
        derive(consortium, dp_round(consortium, p), SiloPolicy(min_silo_dp_noise_multiplier=1.0))
    with pytest.raises(InvalidInput, match="does not fit"):
        derive(consortium, announced(consortium, vector_length=LENGTH, silo_dp=plan_to_pb(p)))


def test_a_refused_plan_sends_nothing_and_fetches_no_model(
    consortium: ConsortiumPaths, server: Server
) -> None:
    server.federation.rounds = [dp_round(consortium, federation_plan(n_silos=100))]
    with connect(consortium, server) as silo, pytest.raises(Unauthorized, match="n_silos 100"):
        list(silo.run(lambda ctx: ctx.weights))
    assert server.federation.calls["DownloadModel"] == 0
    assert server.federation.calls["AdvertiseKeys"] == 0


def test_the_test_only_switch_restores_the_old_trust_in_the_announcement(
    consortium: ConsortiumPaths, server: Server
) -> None:
    """The positive control the adversarial tests use: the lie passes, so the round goes ahead."""
    server.federation.rounds = [dp_round(consortium, federation_plan(n_silos=100))]
    server.federation.fail("GetAdvertisements", Aborted("round 0 was aborted: scripted"))
    with connect(consortium, server, insecure_test_trust_announced_plan=True) as silo:
        (report,) = silo.run(lambda ctx: ctx.weights)
    assert "scripted" in report.reason
    assert server.federation.calls["AdvertiseKeys"] == 1


# -- the plan digest -------------------------------------------------------------------------------------------


def test_the_digest_changes_with_every_parameter_of_the_plan() -> None:
    base = federation_plan()
    variants = [
        federation_plan(mechanism="ddg"),
        federation_plan(l2_norm_clip=2.0),
        federation_plan(noise_multiplier=NOISE * 1.0000001),
        federation_plan(bits=21),
        federation_plan(n_silos=4),
        federation_plan(dropouts_tolerated=1),
        federation_plan(collusion_bound=0),
        federation_plan(rounds=2),
        federation_plan(target_delta=1e-6),
        federation_plan(rotation=False),
        federation_plan(beta=0.5),
        federation_plan(wrap_probability=1e-8),
        federation_plan(guard_bits=2),
        plan(base.config, LENGTH + 1),
    ]
    digests = {p.digest() for p in [base, *variants]}
    assert len(digests) == len(variants) + 1
    assert federation_plan().digest() == base.digest()


# -- the tally -------------------------------------------------------------------------------------------------


def tally(path: Path | None, silo: str = "silo-a") -> SiloLevelTally:
    return SiloLevelTally(path, federation="testfed", silo=silo)


def release(t: SiloLevelTally, p: DistributedDPPlan | None, policy: SiloPolicy, r: int) -> None:
    t.record(round_=r, session_id=f"{r:064x}", p=p, policy=policy, plan_rounds=True)


def test_the_tally_composes_like_the_plans_own_accountant_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    p, path = federation_plan(rounds=5), tmp_path / "state" / "tally.json"
    t = tally(path)
    assert t.epsilon == 0.0 and t.releases == ()
    for r in range(3):
        assert t.next_epsilon(p) == pytest.approx(p.silo_level_epsilon(rounds=r + 1).epsilon)
        release(t, p, SiloPolicy(), r)
    restarted = tally(path)
    assert restarted.releases == t.releases
    assert restarted.epsilon == pytest.approx(p.silo_level_epsilon(rounds=3).epsilon)
    assert [r.round for r in restarted.releases] == [0, 1, 2]
    assert {r.plan for r in restarted.releases} == {p.digest().hex()}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    json.loads(path.read_text())  # plain JSON


def test_the_release_cap_counts_every_release(tmp_path: Path) -> None:
    policy = SiloPolicy(max_silo_level_releases=2)
    t = tally(tmp_path / "tally.json")
    release(t, federation_plan(rounds=5), policy, 0)
    release(t, None, policy, 1)  # a round without silo-level DP is a release too
    with pytest.raises(PrivacyRefused, match="release cap reached: 2 of this silo's 2 releases"):
        t.check(federation_plan(rounds=5), policy, plan_rounds=True)
    with pytest.raises(PrivacyRefused):
        release(tally(tmp_path / "tally.json"), None, policy, 2)
    assert len(tally(tmp_path / "tally.json").releases) == 2  # a refused release is not recorded


def test_the_epsilon_ceiling_refuses_the_release_that_would_cross_it(tmp_path: Path) -> None:
    p = federation_plan(rounds=10)
    ceiling = (p.silo_level_epsilon(rounds=2).epsilon + p.silo_level_epsilon(rounds=3).epsilon) / 2
    policy = SiloPolicy(max_silo_level_epsilon=ceiling)
    t = tally(tmp_path / "tally.json")
    release(t, p, policy, 0)
    release(t, p, policy, 1)
    with pytest.raises(PrivacyRefused, match=r"after release 3, above this silo's ceiling") as e:
        t.check(p, policy, plan_rounds=True)
    assert "\n" not in str(e.value)


def test_a_ceiling_refuses_a_round_without_silo_level_dp_and_after_one(tmp_path: Path) -> None:
    policy = SiloPolicy(max_silo_level_epsilon=100.0)
    t = tally(tmp_path / "tally.json")
    with pytest.raises(PrivacyRefused, match="no silo-level DP in this round"):
        t.check(None, policy, plan_rounds=True)
    release(t, None, SiloPolicy(), 0)  # released before the ceiling was configured
    assert t.next_epsilon(federation_plan()) == math.inf
    with pytest.raises(PrivacyRefused, match="inf"):
        t.check(federation_plan(rounds=5), policy, plan_rounds=True)
    assert tally(tmp_path / "tally.json").epsilon == math.inf


def test_a_release_beyond_the_plans_rounds_is_refused_unless_switched_off(tmp_path: Path) -> None:
    p = federation_plan(rounds=1)
    t = tally(None)
    release(t, p, SiloPolicy(), 0)
    with pytest.raises(PrivacyRefused, match="release 2 would exceed the 1 rounds"):
        t.check(p, SiloPolicy(), plan_rounds=True)
    t.check(p, SiloPolicy(), plan_rounds=False)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{not json", "unreadable"),
        ('{"format": "something else"}', "unreadable"),
        (None, "another federation or silo"),
    ],
)
def test_an_unreadable_or_foreign_tally_stops_the_silo(
    tmp_path: Path, content: str | None, error: str
) -> None:
    path = tmp_path / "tally.json"
    if content is None:
        release(tally(path, silo="silo-b"), federation_plan(), SiloPolicy(), 0)
    else:
        path.write_text(content)
    with pytest.raises(StoreError, match=error):
        tally(path)


def test_a_ceiling_or_cap_needs_a_persisted_tally(
    consortium: ConsortiumPaths, server: Server, tmp_path: Path
) -> None:
    for policy in (SiloPolicy(max_silo_level_epsilon=1.0), SiloPolicy(max_silo_level_releases=1)):
        with pytest.raises(ValueError, match="needs a tally_path"):
            connect(consortium, server, policy=policy)
    path = tmp_path / "tally.json"
    release(tally(path), federation_plan(), SiloPolicy(), 0)
    with connect(
        consortium, server, policy=SiloPolicy(max_silo_level_releases=1), tally_path=path
    ) as silo:
        assert len(silo.silo_level_tally.releases) == 1


def test_a_silo_whose_cap_is_reached_refuses_the_round_before_anything_is_sent(
    consortium: ConsortiumPaths, server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "tally.json"
    release(tally(path), federation_plan(rounds=2), SiloPolicy(), 0)
    server.federation.rounds = [dp_round(consortium, federation_plan(rounds=2), rounds=2)]
    policy = SiloPolicy(min_cohort=3, max_silo_level_releases=1)
    with (
        connect(consortium, server, policy=policy, tally_path=path) as silo,
        pytest.raises(PrivacyRefused, match="release cap reached"),
    ):
        list(silo.run(lambda ctx: ctx.weights))
    assert server.federation.calls["DownloadModel"] == 0
    assert server.federation.calls["AdvertiseKeys"] == 0


def test_the_silo_exposes_its_tally(silo: Silo) -> None:
    assert silo.silo_level_tally.releases == ()
