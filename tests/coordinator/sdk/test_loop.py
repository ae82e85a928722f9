"""The shared round loop, driven through the masking :class:`~coordinator.sdk.masking.Silo` (public API only)
against the scripted server of :mod:`tests.coordinator.sdk.fakes` (insecure debug mode, real gRPC)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.common import model_hash
from coordinator.errors import InvalidInput, Unauthorized
from coordinator.pki import ConsortiumPaths
from coordinator.sdk import RoundContext, Silo
from tests.coordinator.sdk.fakes import MODEL, Server, announced, connect


def never_called(ctx: RoundContext) -> npt.NDArray[np.float64]:
    raise AssertionError(f"trained on round {ctx.round}")


def test_a_finished_federation_yields_no_round(silo: Silo, server: Server) -> None:
    assert list(silo.run(never_called)) == []
    assert server.federation.calls["Join"] == 1
    assert server.federation.asked_after == [0]


def test_a_round_past_its_first_stage_is_skipped(
    silo: Silo, server: Server, consortium: ConsortiumPaths
) -> None:
    server.federation.rounds = [announced(consortium, stage="share_keys")]
    assert list(silo.run(never_called)) == []
    assert server.federation.asked_after == [0, 1]  # waited for the next round instead
    assert server.federation.calls["DownloadModel"] == 0


def test_a_coordinator_serving_another_roster_is_refused_at_join(
    silo: Silo, server: Server
) -> None:
    server.federation.roster_fingerprint = "0" * 64
    with pytest.raises(Unauthorized, match="different roster"):
        list(silo.run(never_called))
    assert server.federation.asked_after == []


def test_a_roster_pinned_for_another_federation_is_refused(
    consortium: ConsortiumPaths, server: Server
) -> None:
    with pytest.raises(Unauthorized, match="pinned roster is for"):
        connect(consortium, server, federation="another")


def test_a_round_weaker_than_the_policy_is_refused_before_the_model_is_fetched(
    silo: Silo, server: Server, consortium: ConsortiumPaths
) -> None:
    server.federation.rounds = [announced(consortium, min_cohort=2, threshold=2, collusion=0)]
    with pytest.raises(Unauthorized, match="min_cohort"):
        list(silo.run(never_called))
    assert server.federation.calls["DownloadModel"] == 0


def test_a_model_that_does_not_match_the_round_is_never_trained_on(
    silo: Silo, server: Server, consortium: ConsortiumPaths
) -> None:
    other = np.zeros_like(MODEL)
    server.federation.rounds = [announced(consortium, model_hash=model_hash(other))]
    with pytest.raises(InvalidInput, match="model hash"):
        list(silo.run(never_called))
    assert server.federation.calls["DownloadModel"] == 1


def test_the_repr_names_the_silo_and_never_its_key(silo: Silo) -> None:
    assert repr(silo) == "Silo(silo='silo-a', federation='testfed')"
