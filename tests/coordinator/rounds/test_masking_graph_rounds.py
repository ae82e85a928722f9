"""Masking mode on the SecAgg+ graph (Bell et al., CCS 2020), forced on at small n with ``[masking] graph_above``.

Eight silos, ``graph_above = 4`` and a 15 % dropout rate give H(4, 8) with a per-neighbourhood threshold of 3;
every message is made by the real ``secagg.SecAggClient`` and the stages close on the injected clock. The
default ``graph_above`` keeps today's full graph, which the rest of the suite runs on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from audits import CheckpointSigner, EventKind
from coordinator.common import RoundStatus, ledger_origin
from coordinator.config import MaskingConfig, SiloDPConfig
from coordinator.errors import ConfigError
from coordinator.rounds.audit import AuditTrail
from coordinator.rounds.masking import MaskingRounds
from coordinator.store import SQLiteStore
from secagg import Stage
from tests.coordinator.rounds.conftest import (
    FEDERATION,
    Coordinators,
    FakeClock,
    Rig,
    expected_model,
    federation_settings,
    make_members,
    masking_silos,
    run_masking_round,
    start_model,
    updates,
)

SILOS8 = tuple("abcdefgh")
GRAPH = MaskingConfig(graph_above=4, dropout_rate=0.15)


@pytest.fixture
def eight(tmp_path: Path, clock: FakeClock) -> Any:
    built = Coordinators(tmp_path, make_members(SILOS8), clock)
    try:
        yield built
    finally:
        built.close()


def test_a_graph_round_with_a_dropout_releases_the_exact_fedavg(eight: Coordinators) -> None:
    rig: Rig[MaskingRounds] = eight.masking(threshold=5, masking=GRAPH)
    config = rig.driver.view(after=0, wait=5.0).config
    assert (config.graph_degree, config.threshold) == (4, 3)
    units = updates(SILOS8)
    silos = masking_silos(rig)
    outcome = run_masking_round(rig, units, vanish={"c": Stage.MASKED_INPUT}, silos=silos)
    assert outcome.status is RoundStatus.COMPLETED
    survivors = [s for s in SILOS8 if s != "c"]
    assert sorted(outcome.survivors) == survivors
    expected = expected_model(start_model(), [units[s] for s in survivors])
    assert (rig.model(1) == expected).all()
    # each silo shared to and masked with its 4 neighbours only
    assert all(len(silos[s].client.graph.neighbours(s)) == 4 for s in SILOS8)
    (created,) = rig.events(EventKind.FEDERATION_CREATED)
    graph = created.body["threat_model"]["graph"]
    assert (graph["kind"], graph["degree"], graph["threshold"]) == ("harary", 4, 3)


def test_the_default_keeps_the_full_graph(eight: Coordinators) -> None:
    rig: Rig[MaskingRounds] = eight.masking(threshold=5)
    config = rig.driver.view(after=0, wait=5.0).config
    assert (config.graph_degree, config.threshold) == (0, 5)
    (created,) = rig.events(EventKind.FEDERATION_CREATED)
    assert "graph" not in created.body["threat_model"]


def test_an_impossible_graph_is_refused_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"no Harary graph on 8 silos.*raise graph_above to 8"
    ) as caught:
        MaskingConfig(graph_above=4, dropout_rate=0.6).graph(n=8, collusion=0)
    assert "\n" not in str(caught.value)
    assert (
        MaskingConfig().graph(n=64, collusion=3) is None
    )  # at or below graph_above: the full graph


def test_silo_level_dp_is_refused_on_the_graph(tmp_path: Path) -> None:
    """A silo sizes its noise share for the cohort it sees, and on the graph it sees only its neighbourhood."""
    members = make_members(SILOS8)
    signer = CheckpointSigner(members.audit_key, key_name=ledger_origin(FEDERATION))
    store = SQLiteStore(tmp_path / "c.sqlite")
    audit = AuditTrail.open(tmp_path / "c.sqlite", federation=FEDERATION, signer=signer)
    settings = dataclasses.replace(
        federation_settings(threshold=5, masking=GRAPH), silo_dp=SiloDPConfig(noise_multiplier=1.0)
    )
    try:
        with pytest.raises(ConfigError, match="does not run on the SecAgg\\+ graph yet"):
            MaskingRounds(
                settings=settings,
                roster=members.roster,
                store=store,
                initial_model=start_model(),
                audit=audit,
                clock=FakeClock(),
            )
    finally:
        store.close()
        audit.close()
