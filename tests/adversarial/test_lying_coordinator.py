"""A lying coordinator over the wire: the real SDK (``Silo.run``) must refuse before revealing anything.

The coordinator here is the real one (``MaskingRounds`` behind the real ``FederationServicer``, mTLS with the
consortium's own coordinator certificate) with one method overridden to lie, which is exactly what an actively
malicious operator controls. Every lie is recorded against what the silos then send: a silo that refuses sends
nothing more for that round.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coordinator.common import RoundStatus
from coordinator.errors import InvalidInput, Unauthorized
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.masking import MaskingRounds
from coordinator.sdk.masking import RoundReport, SiloPolicy
from coordinator.server.app import bind_server
from coordinator.server.masking import FederationServicer
from coordinator.store import SQLiteStore
from tests.e2e.harness import (
    Consortium,
    audit_trail,
    exact,
    in_threads,
    integer_update,
    settings,
)

pytestmark = pytest.mark.e2e

LENGTH = 300


class Liar(FederationServicer):
    """The honest servicer, plus a log of the submissions that reached it (by rpc name and silo)."""

    def __init__(self, rounds: MaskingRounds) -> None:
        super().__init__(rounds, revoked=frozenset(), insecure=False)
        self.received: list[tuple[str, str]] = []

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        self.received.append(("ShareKeys", request.sender))
        return super().ShareKeys(request, context)

    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        self.received.append(("Unmask", request.silo))
        return super().Unmask(request, context)


class WrongRoster(Liar):
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        response = super().Join(request, context)
        response.roster_fingerprint = "0" * 64
        return response


class WeakerParameters(Liar):
    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        info = super().GetRound(request, context)
        info.min_cohort = 2  # below what the silos insist on
        return info


class TamperedModel(Liar):
    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        for wire in super().DownloadModel(request, context):
            chunk = pb.ModelChunk.FromString(wire)
            chunk.values = np.full(len(chunk.values) // 4, 0.5, "<f4").tobytes()
            yield chunk


class DropsOwnAdvertisement(Liar):
    def GetAdvertisements(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.AdvertisementSet:
        ads = super().GetAdvertisements(request, context)
        kept = [ad for ad in ads.advertisements if ad.silo != request.silo]
        return pb.AdvertisementSet(advertisements=kept)


class SwapsAdvertisementKeys(Liar):
    """Serves a's advertisement with the coordinator's own mask key (a man in the middle of a's masks)."""

    def GetAdvertisements(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.AdvertisementSet:
        ads = super().GetAdvertisements(request, context)
        by_silo = {ad.silo: ad for ad in ads.advertisements}
        by_silo["a"].mask_public = X25519PrivateKey.generate().public_key().public_bytes_raw()
        return ads


class ReportsSurvivorAsDropped(Liar):
    """Claims b dropped although it uploaded: asks for b's mask-key share, which would unmask b's input."""

    def GetUnmaskRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.UnmaskRequest:
        honest = super().GetUnmaskRequest(request, context)
        return pb.UnmaskRequest(
            survivors=[s for s in honest.survivors if s != "b"],
            dropped=[*honest.dropped, "b"],
            signatures=[sig for sig in honest.signatures if sig.silo != "b"],
        )


@contextmanager
def lying_coordinator(
    consortium: Consortium, db: Path, liar: type[Liar]
) -> Iterator[tuple[Liar, str, SQLiteStore]]:
    store = SQLiteStore(db)
    rounds = MaskingRounds(
        settings=settings(n=3, length=LENGTH, threshold=2, min_cohort=3),
        roster=consortium.roster,
        store=store,
        initial_model=np.zeros(LENGTH, np.float32),
        audit=audit_trail(consortium, db),
    )
    servicer = liar(rounds)

    def add(server: grpc.Server, shared: dict[str, Any]) -> str:
        pb_grpc.add_FederationServicer_to_server(servicer, server)
        return "coordinator.proto.v1.Federation"

    # the production server (asyncio, admission, fair workers) around the lying servicer
    server, port = bind_server(rounds, "127.0.0.1:0", add, tls=consortium.coordinator_tls())
    server.start()
    rounds.start()
    try:
        yield servicer, f"127.0.0.1:{port}", store
    finally:
        rounds.stop()
        server.stop(0).wait()
        store.close()
        rounds.audit.close()


def run_silos(
    consortium: Consortium, address: str, policy: SiloPolicy | None = None
) -> list[list[RoundReport] | Exception]:
    """Each silo runs one round with the SDK; returns its reports, or the exception it raised."""

    def silo(s: str) -> list[RoundReport] | Exception:
        try:
            with consortium.sdk(s, address, policy=policy or SiloPolicy(min_cohort=3)) as client:
                return list(client.run(lambda ctx: exact(integer_update(7, LENGTH)), max_rounds=1))
        except Exception as exc:  # the SDK's refusal is the result under test
            return exc

    return in_threads(*[lambda s=s: silo(s) for s in consortium.silos])


def test_a_different_roster_is_refused_at_join(trio: Consortium, tmp_path: Path) -> None:
    with lying_coordinator(trio, tmp_path / "c.db", WrongRoster) as (liar, address, _):
        outcomes = run_silos(trio, address)
    assert all(isinstance(o, Unauthorized) and "different roster" in str(o) for o in outcomes)
    assert liar.received == []


def test_parameters_weaker_than_the_silo_policy_are_refused(
    trio: Consortium, tmp_path: Path
) -> None:
    with lying_coordinator(trio, tmp_path / "c.db", WeakerParameters) as (liar, address, _):
        outcomes = run_silos(trio, address)
    assert all(isinstance(o, Unauthorized) and "min_cohort" in str(o) for o in outcomes)
    assert liar.received == []


def test_a_model_that_does_not_match_its_hash_is_refused(trio: Consortium, tmp_path: Path) -> None:
    with lying_coordinator(trio, tmp_path / "c.db", TamperedModel) as (liar, address, _):
        outcomes = run_silos(trio, address)
    assert all(isinstance(o, InvalidInput) and "model hash" in str(o) for o in outcomes)
    assert liar.received == []


@pytest.mark.parametrize(
    ("liar", "refusal"),
    [
        (DropsOwnAdvertisement, "own advertisement"),
        (SwapsAdvertisementKeys, "does not verify"),
    ],
)
def test_tampered_advertisement_sets_are_refused_before_sharing(
    trio: Consortium, tmp_path: Path, liar: type[Liar], refusal: str
) -> None:
    with lying_coordinator(trio, tmp_path / "c.db", liar) as (servicer, address, store):
        outcomes = run_silos(trio, address)
        records = store.rounds("fed")
    refused = [o for o in outcomes if isinstance(o, list)]
    assert len(refused) == 3
    for (report,) in refused:
        assert report.status is RoundStatus.ABORTED
        assert report.reason.startswith("refused:") and refusal in report.reason
    assert servicer.received == []  # nobody shared a single key
    assert records[0].status is not RoundStatus.COMPLETED


def test_a_survivor_reported_as_dropped_gets_no_share_revealed(
    trio: Consortium, tmp_path: Path
) -> None:
    with lying_coordinator(trio, tmp_path / "c.db", ReportsSurvivorAsDropped) as (
        liar,
        address,
        store,
    ):
        outcomes = run_silos(trio, address)
        records = store.rounds("fed")
    for outcome in outcomes:
        assert isinstance(outcome, list)
        (report,) = outcome
        assert report.status is RoundStatus.ABORTED and report.reason.startswith("refused:")
    assert [
        name for name, _ in liar.received if name == "Unmask"
    ] == []  # no share of anyone left a silo
    assert records[0].status is not RoundStatus.COMPLETED
