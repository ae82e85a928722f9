"""A silo given several coordinator replicas: it uses the first that serves, fails over on UNAVAILABLE, and keeps
retrying through a restart once the federation has answered; against real gRPC servers on 127.0.0.1 (the
scripted servers of :mod:`tests.coordinator.sdk.fakes`, insecure debug mode) and a port nobody listens on."""

from __future__ import annotations

import logging
import socket

import grpc
import pytest

from coordinator.errors import Unavailable
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.sdk.replicas import replica_addresses
from coordinator.sdk.transport import RetryPolicy, Transport
from tests.coordinator.sdk.fakes import FEDERATION, SILO, Clock, Server, Status, serving

UNAVAILABLE = Status(grpc.StatusCode.UNAVAILABLE)


def dead_address() -> str:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def transport(address: str | list[str], clock: Clock, retry: RetryPolicy) -> Transport:
    return Transport(
        address=address,
        federation=FEDERATION,
        silo=SILO,
        tls=None,
        insecure_debug_no_tls=True,
        retry=retry,
        clock=clock.time,
        sleep=clock.sleep,
    )


def join(t: Transport) -> pb.JoinResponse:
    stub = t.stub(pb_grpc.FederationStub)
    return t.call(stub.Join, pb.JoinRequest(federation=FEDERATION, silo=SILO))


def test_the_first_replica_that_serves_is_used_and_the_switch_is_warned(
    server: Server, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    down = dead_address()
    with (
        caplog.at_level(logging.WARNING, logger="coordinator.sdk.transport"),
        transport([down, server.address], clock, RetryPolicy(attempts=3)) as t,
    ):
        assert join(t).roster_fingerprint == "pinned"
        assert t.address == server.address
        assert t.addresses == (down, server.address)
        join(t)  # the next call stays on the replica that serves
    assert server.federation.calls["Join"] == 2
    assert len(clock.slept) == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert (
        warning
        == f"coordinator replica {down} is unavailable; silo {SILO} fails over to {server.address}"
    )


def test_going_round_the_replicas_in_one_outage_warns_once(
    server: Server, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = dead_address(), dead_address()
    with (
        caplog.at_level(logging.INFO, logger="coordinator.sdk.transport"),
        transport([first, second, server.address], clock, RetryPolicy(attempts=4)) as t,
    ):
        join(t)
    switches = [
        (r.levelno, r.getMessage()) for r in caplog.records if "fails over" in r.getMessage()
    ]
    assert switches == [
        (
            logging.WARNING,
            f"coordinator replica {first} is unavailable; silo {SILO} fails over to {second}",
        ),
        (
            logging.INFO,
            f"coordinator replica {second} is unavailable; silo {SILO} fails over to {server.address}",
        ),
    ]


def test_a_leader_lost_mid_federation_moves_the_silo_to_the_other_replica(clock: Clock) -> None:
    with serving() as leader, serving() as standby:
        t = transport([leader.address, standby.address], clock, RetryPolicy(attempts=2))
        with t:
            join(t)
            leader.federation.fail("Join", *[UNAVAILABLE] * 3)  # the leader stops serving
            join(t)
            assert t.address == standby.address
            assert t.reconnections == 1
    assert leader.federation.calls["Join"] == 2
    assert standby.federation.calls["Join"] == 1


def test_once_answered_unavailable_is_retried_for_the_reconnect_window_not_attempts(
    server: Server, clock: Clock
) -> None:
    policy = RetryPolicy(attempts=2, initial=0.5, maximum=1.0, reconnect_seconds=5.0)
    with transport(server.address, clock, policy) as t:
        server.federation.fail("Join", UNAVAILABLE, UNAVAILABLE)
        with pytest.raises(Unavailable):
            join(t)  # never answered: attempts bound it (a coordinator that is not running)
        join(t)
        server.federation.fail("Join", *[UNAVAILABLE] * 6)  # a restart: 0.5 + 1 x 5 s of waits
        assert join(t).roster_fingerprint == "pinned"
        assert t.reconnections == 1
        server.federation.fail(
            "Join", *[UNAVAILABLE] * 7
        )  # past the window: the coordinator is gone
        with pytest.raises(Unavailable):
            join(t)
    assert policy.reconnect_attempts == 7


def test_reconnect_attempts_follow_the_backoff_and_keep_attempts_as_a_floor() -> None:
    assert RetryPolicy(initial=0.2, maximum=5.0, reconnect_seconds=300.0).reconnect_attempts == 65
    assert RetryPolicy(attempts=6, reconnect_seconds=0.0).reconnect_attempts == 6
    assert RetryPolicy(attempts=1, initial=0.0, maximum=0.0).reconnect_attempts == 1
    with pytest.raises(ValueError, match="reconnect_seconds"):
        RetryPolicy(reconnect_seconds=-1.0)


def test_replica_addresses_are_one_or_several_distinct_host_ports() -> None:
    assert replica_addresses("a:1") == ("a:1",)
    assert replica_addresses(["a:1", "b:1"]) == ("a:1", "b:1")
    for bad in ([], [""], ["a:1", "a:1"]):
        with pytest.raises(ValueError, match="coordinator"):
            replica_addresses(bad)
