"""The asyncio server over real mTLS gRPC on 127.0.0.1: a member silo flooding it with long polls and streams
cannot starve another silo (the per-silo limits), and a parked long poll holds no thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from coordinator.config import LimitsConfig
from coordinator.errors import Overloaded
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.masking import MaskingRounds
from coordinator.server.masking import FederationServicer
from coordinator.store import SQLiteStore
from coordinator.wire.errors import from_rpc_error
from tests.e2e.harness import (
    FEDERATION,
    SHORT,
    Consortium,
    ManualSilo,
    audit_trail,
    deadlines_with,
    exact,
    expected_model,
    in_threads,
    integer_update,
    running_coordinator,
    secure_channel,
    settings,
    wait_until,
)

pytestmark = pytest.mark.e2e

LENGTH = 300
POLLS = 24  # half GetRound, half GetResult, each parked for up to a minute
STREAMS = 6  # upload streams that send nothing
UNITS = {s: integer_update(70 + i, LENGTH) for i, s in enumerate("ab")}


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return Consortium.create(tmp_path_factory.mktemp("pki-aio") / "pki", silos=["a", "b", "c"])


@dataclass
class Flood:
    """A member silo's calls, all at once: long polls and upload streams that never send."""

    calls: list[grpc.Future] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def refused(self) -> list[grpc.RpcError]:
        done = [f for f in self.calls if f.done() and not f.cancelled()]
        return [e for f in done if isinstance(e := f.exception(), grpc.RpcError)]


@contextmanager
def flood(trio: Consortium, address: str, silo: str = "c") -> Iterator[Flood]:
    channel = secure_channel(address, trio.silo_tls(silo))
    stub = pb_grpc.FederationStub(channel)
    attack = Flood()

    def silent() -> Iterator[pb.MaskedChunk]:
        attack.release.wait(60.0)  # the stream stays open and sends nothing
        return
        yield  # a generator

    for _ in range(POLLS // 2):
        attack.calls.append(
            stub.GetRound.future(
                pb.GetRoundRequest(federation=FEDERATION, after=99, wait_seconds=60)
            )
        )
        attack.calls.append(
            stub.GetResult.future(
                pb.StageRequest(federation=FEDERATION, round=0, silo=silo, wait_seconds=60)
            )
        )
    for _ in range(STREAMS):
        attack.calls.append(stub.UploadMaskedInput.future(silent()))
    try:
        yield attack
    finally:
        for call in attack.calls:
            call.cancel()
        attack.release.set()
        channel.close()


def join(trio: Consortium, address: str, silo: str) -> pb.JoinResponse:
    with secure_channel(address, trio.silo_tls(silo)) as channel:
        response: pb.JoinResponse = pb_grpc.FederationStub(channel).Join(
            pb.JoinRequest(federation=FEDERATION, silo=silo), timeout=10
        )
        return response


def test_a_silo_flooding_long_polls_and_streams_cannot_starve_another_silo(
    trio: Consortium, tmp_path: Path
) -> None:
    limits = LimitsConfig(calls_per_silo=4, streams_per_silo=2, max_concurrent_rpcs=16, workers=2)
    fed = settings(n=3, length=LENGTH, min_cohort=2, deadlines=deadlines_with(advertise=SHORT))
    with (
        running_coordinator(trio, tmp_path / "c.db", fed, joined=[], limits=limits) as coord,
        flood(trio, coord.address) as attack,
    ):
        total = POLLS + STREAMS
        wait_until(lambda: len(attack.refused()) == total - 4, what="the flood's refusals")
        refusals = attack.refused()
        assert {e.code() for e in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all(
            "calls_per_silo" in (e.details() or "") or "streams_per_silo" in (e.details() or "")
            for e in refusals
        )
        assert all("\n" not in (e.details() or "") for e in refusals)
        assert coord.server.in_flight == 4  # the attacker's share, parked

        # the honest silos join (round 0 waits for them) and run a whole round, upload included
        for silo in "ab":
            assert join(trio, coord.address, silo).rounds == 1

        def honest(silo: str) -> pb.RoundResult | None:
            with ManualSilo(trio, silo, coord.address) as manual:
                return manual.run(exact(UNITS[silo]))

        results = in_threads(*[lambda s=s: honest(s) for s in "ab"])
        assert all(r is not None and r.state == pb.ROUND_STATE_COMPLETED for r in results)
        (record,) = coord.rounds()
        assert record.survivors == ("a", "b")
        assert np.array_equal(
            coord.model(1),
            expected_model(np.zeros(LENGTH, np.float32), list(UNITS.values())),
        )


def test_positive_control_without_per_silo_limits_the_flood_starves_the_honest_join(
    trio: Consortium, tmp_path: Path
) -> None:
    """The same flood with per-silo limits as large as the global bound: the attacker takes every slot."""
    limits = LimitsConfig(calls_per_silo=16, streams_per_silo=16, max_concurrent_rpcs=16, workers=2)
    fed = settings(n=3, length=LENGTH, min_cohort=2)
    with (
        running_coordinator(trio, tmp_path / "c.db", fed, joined=[], limits=limits) as coord,
        flood(trio, coord.address) as attack,
    ):
        wait_until(lambda: len(attack.refused()) == POLLS + STREAMS - 16, what="the flood")
        assert coord.server.in_flight == 16
        with pytest.raises(grpc.RpcError) as caught:
            join(trio, coord.address, "a")
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_rpcs (16)" in (caught.value.details() or "")
        assert isinstance(
            from_rpc_error(caught.value), Overloaded
        )  # the SDK's error (and it retries it)
        assert coord.service.joined == frozenset()  # the refused call changed nothing


def _park_polls(
    address: str, trio: Consortium, count: int
) -> tuple[grpc.Channel, list[grpc.Future]]:
    channel = secure_channel(address, trio.silo_tls("c"))
    stub = pb_grpc.FederationStub(channel)
    polls = [
        stub.GetRound.future(pb.GetRoundRequest(federation=FEDERATION, after=99, wait_seconds=30))
        for _ in range(count)
    ]
    return channel, polls


def test_parked_long_polls_hold_no_thread(trio: Consortium, tmp_path: Path) -> None:
    """32 parked GetRound polls: the asyncio server's thread count does not move; a thread-per-call server
    serving the same servicer (the positive control) holds one thread per poll."""
    limits = LimitsConfig(calls_per_silo=64, streams_per_silo=2, max_concurrent_rpcs=64, workers=2)
    fed = settings(n=3, length=LENGTH, min_cohort=3)
    count = 32
    with running_coordinator(trio, tmp_path / "c.db", fed, joined=[], limits=limits) as coord:
        before = threading.active_count()
        channel, polls = _park_polls(coord.address, trio, count)
        try:
            wait_until(lambda: coord.server.in_flight == count, what="the parked polls")
            assert (
                threading.active_count() <= before + 2
            )  # the client channel's own threads at most
            assert not any(p.done() for p in polls)
        finally:
            for p in polls:
                p.cancel()
            channel.close()
        wait_until(lambda: coord.server.in_flight == 0, what="cancelled polls to end")

    # positive control: the same servicer on gRPC's thread-per-call server
    store = SQLiteStore(tmp_path / "threaded.db")
    rounds = MaskingRounds(
        settings=fed,
        roster=trio.roster,
        store=store,
        initial_model=np.zeros(LENGTH, np.float32),
        audit=audit_trail(trio, tmp_path / "threaded.db"),
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb_grpc.add_FederationServicer_to_server(
        FederationServicer(rounds, revoked=frozenset(), insecure=False), server
    )
    credentials = grpc.ssl_server_credentials(
        [(trio.coordinator_tls().key, trio.coordinator_tls().cert)],
        root_certificates=trio.coordinator_tls().ca,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    rounds.start()
    try:
        before = threading.active_count()
        channel, polls = _park_polls(f"127.0.0.1:{port}", trio, count)
        try:
            wait_until(
                lambda: threading.active_count() >= before + count, what="one thread per poll"
            )
        finally:
            for p in polls:
                p.cancel()
            channel.close()
    finally:
        rounds.stop()
        server.stop(0).wait()
        store.close()
        rounds.audit.close()
