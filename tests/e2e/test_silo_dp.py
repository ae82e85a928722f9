"""Silo-level distributed DP end to end: real SDK silos, real mTLS gRPC, Skellam noise added inside the silos.

The issue's end-to-end test: the decoded aggregate's noise has the configured variance (measured over repeated
rounds on a fixed input), and the coordinator never holds a noiseless sum. With every silo submitting the zero
update, clipping, rotation and conditional rounding leave exact zeros, so whatever the coordinator decodes is
the noise the silos added: if it ever held a noiseless sum, the decoded value would be exactly zero.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from audits import build_report, write_bundle
from coordinator.common import RoundStatus
from coordinator.config import SiloDPConfig, SiloPolicy
from coordinator.errors import Unauthorized
from coordinator.rounds.audit import verify_bundle_dir
from coordinator.sdk.masking import RoundContext, RoundReport
from tests.e2e.harness import (
    SHORT,
    Consortium,
    deadlines_with,
    in_threads,
    running_coordinator,
    settings,
)

pytestmark = pytest.mark.e2e

LENGTH = 200  # padded to 256 by the rotation
ROUNDS = 6
CLIP = 1.0
NOISE = 0.8


def test_aggregate_noise_has_the_configured_variance(trio: Consortium, tmp_path: Path) -> None:
    base = settings(
        n=3, rounds=ROUNDS, length=LENGTH, threshold=2, min_cohort=3, clip=CLIP, bits=16
    )
    config = dataclasses.replace(base, silo_dp=SiloDPConfig(noise_multiplier=NOISE, bits=20))
    with running_coordinator(trio, tmp_path / "c.db", config) as coord:
        plan = coord.service.silo_dp_plan
        assert plan is not None

        def silo(s: str) -> list[RoundReport]:
            with trio.sdk(s, coord.address) as client:
                return list(client.run(lambda ctx: np.zeros(LENGTH)))

        reports = in_threads(*[lambda s=s: silo(s) for s in trio.silos])
        records = coord.rounds()
        models = [coord.model(r).astype(np.float64) for r in range(ROUNDS + 1)]
        entries = [e.event for e in coord.service.audit.ledger.decoded()]
        audit = coord.service.audit
        audit.checkpoint()
        write_bundle(
            audit.ledger,
            tmp_path / "bundle",
            roster_bytes=trio.paths.roster.read_bytes(),
            audit_public_key=audit.signer.public_key,
        )
    verified, _ = verify_bundle_dir(
        tmp_path / "bundle",
        audit_public_key=audit.signer.public_key,
        consortium_public_key=trio.consortium_key,
    )
    report = build_report(verified)

    assert all(r.status is RoundStatus.COMPLETED for rs in reports for r in rs)
    assert [r.status for r in records] == [RoundStatus.COMPLETED] * ROUNDS
    # new model = old + (decoded sum) / 3, so 3 * the step is the decoded sum: pure noise here
    sums = np.concatenate([3 * (b - a) for a, b in itertools.pairwise(models)])
    assert (
        np.count_nonzero(sums) > 0.9 * sums.size
    )  # the coordinator never saw a noiseless (zero) sum
    expected = plan.aggregate_noise_variance(3)
    rounding = 3 / (
        4 * plan.scale**2
    )  # stochastic rounding of zeros adds nothing; bound kept for honesty
    measured = float(np.var(sums))
    # the variance estimate over k samples has relative standard deviation sqrt(2/k) (about 3.6% here)
    k = sums.size
    low, high = stats.chi2.ppf([1e-4, 1 - 1e-4], k - 1) / (k - 1)
    assert expected * low <= measured <= (expected + rounding) * high, (measured, expected)
    assert abs(float(np.mean(sums))) < 5 * np.sqrt(expected / k)  # zero-mean noise

    # the silo-level epsilon composes per round in the ledger, labelled with its unit of privacy
    closed = [e for e in entries if e.kind == "round_closed"]
    epsilons = [e.body["silo_level_dp"]["epsilon"] for e in closed]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == ROUNDS
    assert epsilons[-1] == pytest.approx(plan.silo_level_epsilon(rounds=ROUNDS).epsilon)
    assert all("silo" in e.body["silo_level_dp"]["unit_of_privacy"] for e in closed)
    assert all(e.body["silo_level_dp"]["wraps"] == 0 for e in closed)
    created = entries[0].body["privacy"]["silo_level"]
    assert created["noise_multiplier"] == pytest.approx(NOISE)
    # the regulator report shows it per round, next to (not mixed with) the record-level epsilon
    per_round = report["silo_level_dp"]["per_round"]
    assert [r["epsilon"] for r in per_round] == epsilons
    assert report["silo_level_dp"]["configuration"]["noise_multiplier"] == pytest.approx(NOISE)
    json.dumps(report)  # plain JSON


@pytest.mark.parametrize("silos_guard", [True, False], ids=["silos-guard", "coordinator-guards"])
def test_a_dropout_beyond_the_tolerance_aborts_instead_of_releasing_too_little_noise(
    trio: Consortium, tmp_path: Path, silos_guard: bool
) -> None:
    """dropouts_tolerated = 0: the noise shares need all three silos, so two contributions are not released.

    The silos see it first: once the share-keys stage admits only two of them they stop before training
    (the plan's minimum contributors is part of their admission check), so nobody spends budget on the round.
    The coordinator's own check is the second line: with silos that trust the announcement (the SDK's test-only
    switch) the two masked inputs arrive and the coordinator refuses to decode them.
    """
    base = settings(
        n=3,
        length=LENGTH,
        threshold=2,
        min_cohort=2,
        clip=CLIP,
        bits=16,
        # advertise: the refusing silo never advertises, so the stage runs to its deadline; 2 x SHORT so that
        # the two others advertise within it on a loaded CI machine too (SHORT alone aborted the round there)
        deadlines=deadlines_with(advertise=2 * SHORT, masked_input=SHORT),
    )
    config = dataclasses.replace(base, silo_dp=SiloDPConfig(noise_multiplier=NOISE))
    trained: list[str] = []
    with running_coordinator(trio, tmp_path / "c.db", config) as coord:

        def silo(s: str) -> list[RoundReport]:
            def train(ctx: RoundContext) -> npt.NDArray[np.float64]:
                trained.append(s)
                return np.zeros(LENGTH)

            trust = not silos_guard
            with trio.sdk(s, coord.address, insecure_test_trust_announced_plan=trust) as client:
                return list(client.run(train))

        def refusing() -> None:
            # the third silo's own policy demands more noise than announced: it refuses the round
            policy = SiloPolicy(min_cohort=2, min_silo_dp_noise_multiplier=NOISE * 2)
            with (
                trio.sdk("c", coord.address, policy=policy) as client,
                pytest.raises(Unauthorized, match="below this silo's minimum"),
            ):
                list(client.run(lambda ctx: np.zeros(LENGTH)))

        reports = in_threads(lambda: silo("a"), lambda: silo("b"), refusing)
        (record,) = coord.rounds()
        aborted = [
            e.event for e in coord.service.audit.ledger.decoded() if e.event.kind == "round_aborted"
        ]
    assert record.status is RoundStatus.ABORTED
    assert len(aborted) == 1
    if silos_guard:
        assert trained == []
        for (report,) in reports[:2]:
            assert report.status is RoundStatus.ABORTED
            assert "admitted 2 silos; this silo trains only for at least 3" in report.reason
    else:
        assert sorted(trained) == ["a", "b"]
        assert "silo-level DP" in record.reason
        assert "silo-level DP" in aborted[0].body["reason"]
