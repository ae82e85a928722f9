"""The silo transport against a tiny real gRPC server on 127.0.0.1 port 0 (insecure debug mode).

The server (:mod:`tests.coordinator.sdk.fakes`) is the transport's environment, not a stand-in for it: it
implements the ``Federation`` and ``Audit`` services with answers and failures a test scripts per call, and
records what arrived. Failures take the server's half of the one error table, so these tests also pin the round
trip exception -> status -> exception. Backoff sleeps and the clock are injected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from audits.checkpoint import CheckpointSigner
from audits.witness import CheckpointWitness
from coordinator.common import INSECURE_SILO_HEADER, chunk_words, ledger_origin, model_hash
from coordinator.errors import (
    Aborted,
    AuditFailure,
    CoordinatorError,
    DuplicateSubmission,
    InvalidInput,
    NotFound,
    Overloaded,
    PrivacyRefused,
    StageError,
    Unauthorized,
    Unavailable,
)
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.sdk.transport import RetryPolicy, Transport
from coordinator.wire.errors import ERROR_CATALOG
from tests.coordinator.sdk.fakes import FEDERATION, MODEL, SILO, Clock, Server, Status

TransportFactory = Callable[..., Transport]


@pytest.fixture
def connect(server: Server, clock: Clock) -> Iterator[TransportFactory]:
    opened: list[Transport] = []

    def factory(**overrides: object) -> Transport:
        arguments: dict[str, object] = {
            "address": server.address,
            "federation": FEDERATION,
            "silo": SILO,
            "tls": None,
            "insecure_debug_no_tls": True,
            "retry": RetryPolicy(attempts=4, initial=0.5, maximum=1.5),
            "clock": clock.time,
            "sleep": clock.sleep,
            "poll_seconds": 2.0,
        }
        transport = Transport(**(arguments | overrides))  # type: ignore[arg-type]
        opened.append(transport)
        return transport

    yield factory
    for transport in opened:
        transport.close()


def join(transport: Transport) -> pb.JoinResponse:
    stub = transport.stub(pb_grpc.FederationStub)
    return transport.call(stub.Join, pb.JoinRequest(federation=FEDERATION, silo=SILO))


def advertise(transport: Transport) -> None:
    stub = transport.stub(pb_grpc.FederationStub)
    ad = pb.AdvertiseKeysRequest(
        federation=FEDERATION, round=0, advertisement=pb.Advertisement(silo=SILO)
    )
    transport.submit(stub.AdvertiseKeys, ad)


UNAVAILABLE = Status(grpc.StatusCode.UNAVAILABLE)
ALREADY_EXISTS = Status(grpc.StatusCode.ALREADY_EXISTS)
DEADLINE_EXCEEDED = Status(grpc.StatusCode.DEADLINE_EXCEEDED)


# -- channel -------------------------------------------------------------------------------------------------
def test_the_insecure_debug_mode_names_the_caller_in_its_header(
    server: Server, connect: TransportFactory
) -> None:
    assert join(connect()).roster_fingerprint == "pinned"
    assert server.federation.metadata[0][INSECURE_SILO_HEADER] == SILO


def test_a_channel_without_tls_must_be_asked_for_explicitly(server: Server) -> None:
    with pytest.raises(ValueError, match="TLS material is required"):
        Transport(address=server.address, federation=FEDERATION, silo=SILO, tls=None)


# -- retries -------------------------------------------------------------------------------------------------
def test_unavailable_is_retried_with_growing_jittered_backoff_then_succeeds(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    server.federation.fail("Join", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    assert join(connect()).roster_fingerprint == "pinned"
    assert server.federation.calls["Join"] == 4
    first, second, third = clock.slept
    assert 0.25 <= first < 0.75  # initial 0.5 x (0.5 + jitter)
    assert 0.5 <= second < 1.5  # doubled
    assert 0.75 <= third < 2.25  # capped at maximum 1.5 before jitter


def test_resource_exhausted_is_transient_too(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    server.federation.fail("Join", Status(grpc.StatusCode.RESOURCE_EXHAUSTED))
    join(connect())
    assert server.federation.calls["Join"] == 2
    assert len(clock.slept) == 1


def test_retries_end_in_unavailable_after_the_last_attempt(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    server.federation.fail("Join", *[UNAVAILABLE] * 5)
    with pytest.raises(Unavailable):
        join(connect(retry=RetryPolicy(attempts=3, initial=0.1, maximum=0.1)))
    assert server.federation.calls["Join"] == 3
    assert len(clock.slept) == 2


def test_a_final_failure_is_not_retried(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    server.federation.fail("Join", StageError("wrong stage"))
    with pytest.raises(StageError, match="wrong stage"):
        join(connect())
    assert server.federation.calls["Join"] == 1
    assert clock.slept == []


def test_retry_policy_backoff_is_capped_and_validated() -> None:
    policy = RetryPolicy(attempts=5, initial=1.0, maximum=3.0)
    assert [policy.delay(n, jitter=0.5) for n in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert policy.delay(0, jitter=0.0) == 0.5
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="initial"):
        RetryPolicy(initial=2.0, maximum=1.0)


# -- the error table -----------------------------------------------------------------------------------------
def join_refusal(connect: TransportFactory) -> CoordinatorError:
    """What joining raises once the test server refuses the call."""
    with pytest.raises(CoordinatorError) as caught:
        join(connect())
    return caught.value


def test_permission_denied_naming_privacy_refused_is_a_privacy_refusal(
    server: Server, connect: TransportFactory
) -> None:
    refusal = Status(grpc.StatusCode.PERMISSION_DENIED, "PrivacyRefused", "epsilon too low")
    server.federation.fail("Join", refusal)
    error = join_refusal(connect)
    assert type(error) is PrivacyRefused
    assert str(error) == "epsilon too low"


def test_permission_denied_without_a_kind_is_unauthorized(
    server: Server, connect: TransportFactory
) -> None:
    server.federation.fail("Join", Status(grpc.StatusCode.PERMISSION_DENIED))
    assert type(join_refusal(connect)) is Unauthorized


def test_a_kind_that_contradicts_the_status_code_is_ignored(
    server: Server, connect: TransportFactory
) -> None:
    server.federation.fail("Join", Status(grpc.StatusCode.NOT_FOUND, "PrivacyRefused"))
    assert type(join_refusal(connect)) is NotFound


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(kind, mapped) for kind, (_, mapped) in ERROR_CATALOG.items()],
    ids=[kind.__name__ for kind in ERROR_CATALOG],
)
def test_every_exception_of_the_table_comes_back_as_its_sdk_exception(
    server: Server,
    connect: TransportFactory,
    raised: type[Exception],
    expected: type[CoordinatorError],
) -> None:
    # as many as the retry policy's attempts: a transient one (Overloaded) is retried until they run out
    server.federation.fail("Join", *[raised("refused by the test server")] * 4)
    error = join_refusal(connect)
    assert type(error) is expected
    assert str(error) == "refused by the test server"
    assert isinstance(error.__cause__, grpc.RpcError)  # the status, for logs only


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, Unauthorized),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthorized),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, StageError),
        (grpc.StatusCode.ALREADY_EXISTS, DuplicateSubmission),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.ABORTED, Aborted),
        (grpc.StatusCode.DATA_LOSS, AuditFailure),
        (grpc.StatusCode.DEADLINE_EXCEEDED, CoordinatorError),
        (grpc.StatusCode.INTERNAL, CoordinatorError),
        (grpc.StatusCode.UNKNOWN, CoordinatorError),
    ],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else value.__name__,
)
def test_a_bare_status_code_maps_by_the_table(
    server: Server,
    connect: TransportFactory,
    code: grpc.StatusCode,
    expected: type[CoordinatorError],
) -> None:
    server.federation.fail("Join", Status(code))
    assert type(join_refusal(connect)) is expected


def test_unavailable_after_the_last_retry_is_unavailable(
    server: Server, connect: TransportFactory
) -> None:
    server.federation.fail("Join", *[UNAVAILABLE] * 4)
    assert type(join_refusal(connect)) is Unavailable


def test_exhausted_resources_end_as_overloaded(server: Server, connect: TransportFactory) -> None:
    server.federation.fail("Join", *[Status(grpc.StatusCode.RESOURCE_EXHAUSTED)] * 4)
    assert type(join_refusal(connect)) is Overloaded


# -- submissions ---------------------------------------------------------------------------------------------
def test_already_exists_after_a_retry_counts_as_delivered(
    server: Server, connect: TransportFactory
) -> None:
    # the first attempt reaches the server, whose answer is lost; the retry finds it delivered
    server.federation.fail("AdvertiseKeys", UNAVAILABLE)
    advertise(connect())
    assert server.federation.delivered == [SILO]
    assert server.federation.calls["AdvertiseKeys"] == 2


def test_already_exists_on_the_first_attempt_is_a_duplicate(
    server: Server, connect: TransportFactory
) -> None:
    transport = connect()
    advertise(transport)
    with pytest.raises(DuplicateSubmission):
        advertise(transport)


def test_already_exists_after_a_retry_of_a_plain_call_is_still_an_error(
    server: Server, connect: TransportFactory
) -> None:
    server.federation.fail("Join", UNAVAILABLE, ALREADY_EXISTS)
    with pytest.raises(DuplicateSubmission):
        join(connect())


def test_a_retried_upload_streams_again_from_its_first_chunk(
    server: Server, connect: TransportFactory
) -> None:
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    server.federation.fail("UploadMaskedInput", UNAVAILABLE, ALREADY_EXISTS)
    streams: list[int] = []

    def chunks() -> Iterator[pb.MaskedChunk]:
        streams.append(len(streams))
        for offset in (0, 10, 20):
            yield pb.MaskedChunk(federation=FEDERATION, silo=SILO, offset=offset, last=offset == 20)

    transport.upload(stub.UploadMaskedInput, chunks)
    assert streams == [0, 1]
    assert server.federation.uploads == [[0, 10, 20], [0, 10, 20]]


# -- long polls ----------------------------------------------------------------------------------------------
def test_polling_asks_again_when_the_wait_runs_out(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    server.federation.fail("GetInbox", DEADLINE_EXCEEDED, DEADLINE_EXCEEDED)
    inbox = transport.poll_stage(stub.GetInbox, 0, deadline=clock.now + 60)
    assert [share.recipient for share in inbox.shares] == [SILO]
    assert server.federation.calls["GetInbox"] == 3
    assert server.federation.waits == [2.0, 2.0, 2.0]  # the transport's poll_seconds each time
    assert clock.slept == []  # a wait that ran out is not a failure to back off from


def test_polling_gives_up_well_past_the_stage_deadline(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    server.federation.fail("GetInbox", *[DEADLINE_EXCEEDED] * 3)
    deadline = clock.now - 301  # past the deadline and the margin
    with pytest.raises(Unavailable, match="never closed the stage"):
        transport.poll_stage(stub.GetInbox, 0, deadline=deadline)
    assert server.federation.calls["GetInbox"] == 1


def test_polling_without_a_stage_deadline_waits_for_a_round_to_open(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    server.federation.fail("GetRound", DEADLINE_EXCEEDED)

    def fetch(wait: float) -> pb.RoundInfo:
        clock.now += 1800  # half an hour per wait: the second answer still comes within the hour
        return transport.call(stub.GetRound, pb.GetRoundRequest(federation=FEDERATION, after=3))

    assert transport.poll(fetch).round == 3


def test_polling_passes_other_failures_through_at_once(
    server: Server, connect: TransportFactory, clock: Clock
) -> None:
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    server.federation.fail("GetInbox", Aborted("too few silos"))
    with pytest.raises(Aborted, match="too few silos"):
        transport.poll_stage(stub.GetInbox, 0, deadline=clock.now + 60)
    assert server.federation.calls["GetInbox"] == 1


# -- model download ------------------------------------------------------------------------------------------
def test_the_model_is_downloaded_in_chunks_and_checked_against_its_hash(
    connect: TransportFactory,
) -> None:
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    weights = transport.download_model(stub.DownloadModel, 0, model_hash(MODEL))
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, MODEL)


def test_a_model_that_does_not_match_its_hash_is_refused(
    server: Server, connect: TransportFactory
) -> None:
    server.federation.model = np.full(MODEL.shape, 0.5, "<f4").tobytes()
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    with pytest.raises(InvalidInput, match="does not match the round's model hash"):
        transport.download_model(stub.DownloadModel, 0, model_hash(MODEL))


def test_a_download_broken_off_is_fetched_again_from_the_start(
    server: Server, connect: TransportFactory
) -> None:
    server.federation.break_download_once = True
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    weights = transport.download_model(stub.DownloadModel, 0, model_hash(MODEL))
    np.testing.assert_array_equal(weights, MODEL)
    assert server.federation.calls["DownloadModel"] == 2


@pytest.mark.parametrize(("skip", "why"), [(1, "do not tile"), (3, "ended before the whole model")])
def test_a_model_stream_with_a_gap_is_refused_before_its_hash(
    server: Server, connect: TransportFactory, skip: int, why: str
) -> None:
    # the chunks are copied into place by offset: a stream that leaves a chunk out (in the middle, or the
    # last one) must be refused as such, not read as a shorter or shifted model
    server.federation.skip_download_chunk = skip
    transport = connect()
    stub = transport.stub(pb_grpc.FederationStub)
    with pytest.raises(InvalidInput, match=why):
        transport.download_model(stub.DownloadModel, 0, model_hash(MODEL))


# -- message sizes -------------------------------------------------------------------------------------------
def test_chunks_are_sized_below_the_smaller_limit_after_join(connect: TransportFactory) -> None:
    transport = connect(max_message_bytes=1 << 20)
    assert transport.chunk_words == chunk_words(1 << 20)
    transport.negotiate(0)  # a coordinator that announces nothing changes nothing
    assert transport.max_message_bytes == 1 << 20
    transport.negotiate(64 * 1024)
    assert transport.max_message_bytes == 64 * 1024
    assert transport.chunk_words == chunk_words(64 * 1024)
    transport.negotiate(8 << 20)  # a coordinator cannot raise what this silo agreed to
    assert transport.max_message_bytes == 64 * 1024


# -- witness -------------------------------------------------------------------------------------------------
def test_without_an_audit_key_nothing_is_witnessed(
    server: Server, connect: TransportFactory, tmp_path: Path
) -> None:
    transport = connect(witness_path=tmp_path / "witness.sqlite")
    assert not transport.witnessing
    transport.witness_checkpoint()
    transport.record("sent", {"round": 0})
    assert not (tmp_path / "witness.sqlite").exists()


def test_the_witness_accepts_extensions_and_catches_a_rewritten_log(
    server: Server, connect: TransportFactory, tmp_path: Path
) -> None:
    audit = server.audit
    path = tmp_path / "witness" / "witness.sqlite"
    transport = connect(audit_public_key=audit.signer.public_key, witness_path=path)
    assert transport.witnessing
    audit.entries = [b"e0", b"e1", b"e2"]
    transport.witness_checkpoint()
    audit.entries += [b"e3", b"e4"]
    transport.witness_checkpoint()
    assert audit.proofs_asked == [(3, 5)]
    transport.record("sent", {"round": 1, "coordinates": 23})
    audit.entries = [b"e0", b"forged", b"e2", b"e3", b"e4", b"e5"]
    with pytest.raises(AuditFailure, match="failed this silo's check"):
        transport.witness_checkpoint()
    transport.close()
    origin = ledger_origin(FEDERATION)
    with CheckpointWitness(path, audit_public_key=audit.signer.public_key, origin=origin) as w:
        latest = w.latest()
        assert latest is not None and latest.size == 5  # the forged checkpoint was not accepted
        assert [r.body for r in w.records("sent")] == [{"round": 1, "coordinates": 23}]


def test_a_checkpoint_signed_by_another_key_is_refused(
    server: Server, connect: TransportFactory, tmp_path: Path
) -> None:
    other = CheckpointSigner.generate(key_name="test-audit")
    transport = connect(audit_public_key=other.public_key, witness_path=tmp_path / "w.sqlite")
    server.audit.entries = [b"e0"]
    with pytest.raises(AuditFailure):
        transport.witness_checkpoint()
