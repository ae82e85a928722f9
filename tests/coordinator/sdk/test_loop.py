"""The shared round loop, driven through the masking :class:`~coordinator.sdk.masking.Silo` (public API only)
against the scripted server of :mod:`tests.coordinator.sdk.fakes` (insecure debug mode, real gRPC)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.common import model_hash
from coordinator.config import SiloPolicy
from coordinator.errors import InvalidInput, Unauthorized
from coordinator.pki import ConsortiumPaths, load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.sdk import RetryPolicy, RoundContext, Silo
from secagg import Roster
from tests.coordinator.sdk.fakes import MODEL, Server

SILO = "silo-a"


def connect(consortium: ConsortiumPaths, server: Server, **overrides: object) -> Silo:
    roster = Roster.loads(consortium.roster.read_text())
    server.federation.roster_fingerprint = roster.fingerprint()
    arguments: dict[str, object] = {
        "address": server.address,
        "federation": consortium.federation,
        "silo": SILO,
        "signing_key": load_ed25519_private(consortium.silos[SILO].signing_key),
        "roster": roster,
        "consortium_key": bytes.fromhex(consortium.consortium_public_key.read_text().strip()),
        "tls": None,
        "insecure_debug_no_tls": True,
        "policy": SiloPolicy(min_cohort=3),
        "retry": RetryPolicy(attempts=1, initial=0.0, maximum=0.0),
    }
    return Silo(**(arguments | overrides))  # type: ignore[arg-type]


@pytest.fixture
def silo(consortium: ConsortiumPaths, server: Server) -> Iterator[Silo]:
    with connect(consortium, server) as client:
        yield client


def announced(consortium: ConsortiumPaths, **fields: object) -> pb.RoundInfo:
    """A well-formed round 0 of three silos, open at its first stage, unless ``fields`` say otherwise."""
    arguments: dict[str, object] = {
        "federation": consortium.federation,
        "round": 0,
        "state": pb.ROUND_STATE_OPEN,
        "stage": "advertise_keys",
        "model_hash": model_hash(MODEL),
        "vector_length": MODEL.shape[0],
        "quantization": pb.Quantization(clip=1.0, bits=16, max_silos=3),
        "n": 3,
        "threshold": 3,
        "collusion": 1,
        "min_cohort": 3,
        "rounds": 1,
        "stage_deadline_unix": 2e9,
    }
    return pb.RoundInfo(**(arguments | fields))  # type: ignore[arg-type]


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
