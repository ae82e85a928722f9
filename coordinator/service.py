"""The gRPC edge of the coordinator: thin servicers, the one error catalog, and server construction.

Servicers decode, call the :class:`~coordinator.rounds.RoundService`, and encode. The caller's silo identity
comes from its mTLS client certificate (never from a request field); every request field naming a silo
must match it.

Notes:
    Error messages that leave the server come from one catalog (:data:`ERROR_CATALOG`); they name stages,
    silos and counts, never payloads, keys or shares (Flower's ``supercore/error`` does the same). Anything
    unexpected becomes ``INTERNAL`` with a generic message, and the details go to the local log only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

import grpc
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from audits import LedgerError
from coordinator.config import DEFAULT_MAX_MESSAGE_BYTES, chunk_words
from coordinator.errors import (
    DuplicateSubmission,
    InvalidInput,
    NotFound,
    StageError,
    Unauthorized,
)
from coordinator.pki import silo_identity
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds import RoundService
from coordinator.serde import (
    advertisement_from_pb,
    advertisement_to_pb,
    config_to_pb,
    share_keys_from_pb,
    share_to_pb,
    unmask_request_to_pb,
    unmask_response_from_pb,
)
from coordinator.silo_dp import plan_to_pb
from coordinator.store import RoundStatus
from secagg import RoundAborted, SurvivorSignature

__all__ = [
    "ERROR_CATALOG",
    "TlsFiles",
    "create_server",
]

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_ENTRIES_PER_CALL = 1000
INSECURE_SILO_HEADER = "x-secagg-insecure-debug-silo"

ERROR_CATALOG: Mapping[type[Exception], grpc.StatusCode] = {
    Unauthorized: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    StageError: grpc.StatusCode.FAILED_PRECONDITION,
    DuplicateSubmission: grpc.StatusCode.ALREADY_EXISTS,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    RoundAborted: grpc.StatusCode.ABORTED,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""Internal exception -> public gRPC status. The exception's message is public: it never holds payloads."""


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    for kind, code in ERROR_CATALOG.items():
        if isinstance(exc, kind):
            context.abort(code, str(exc))
    log.exception("internal error while serving a request")
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


R = TypeVar("R")


def model_chunks(data: bytes, digest: bytes, max_message_bytes: int) -> Iterator[pb.ModelChunk]:
    """A model (float32 little-endian bytes) as download chunks below the message limit."""
    step = chunk_words(max_message_bytes) * 4
    view = memoryview(data)
    for start in range(0, max(len(data), 1), step):
        yield pb.ModelChunk(
            offset=start // 4,
            values=bytes(view[start : start + step]),
            total=len(data) // 4,
            model_hash=digest,
        )


def u32_view(data: bytes) -> npt.NDArray[np.uint32]:
    """A read-only uint32 view of a chunk's little-endian bytes (no copy); refuses a ragged length.

    :func:`~coordinator.serde.u32_from_bytes` returns a writable copy; an upload chunk is only read (added into
    the running sum and spooled), and with every silo streaming at once each copy is one more chunk per stream.
    """
    if len(data) % 4:
        raise InvalidInput("vector chunk length is not a multiple of 4 bytes")
    view: npt.NDArray[np.uint32] = np.frombuffer(data, dtype="<u4")
    return view


def drain_upload(
    first: Any,
    rest: Iterator[Any],
    silo: str,
    add: Callable[[Any], None],
    finish: Callable[[], None],
) -> None:
    """Feed a client-streamed upload to ``add`` chunk by chunk and ``finish`` at its last chunk.

    Every chunk must name the same silo, round and federation as the first; nothing may follow the last one,
    and a stream that ends without a last chunk is refused (the caller's upload context then rolls back).
    """
    round_, federation = first.round, first.federation
    drain_chunks(_prepend([first], rest), silo, round_, federation, add, finish)


def _prepend(pending: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    """The items of ``pending``, then those of ``rest``; nothing here keeps an item once it is handed over."""
    while pending:
        yield pending.pop()
    yield from rest


def drain_chunks(
    chunks: Iterator[Any],
    silo: str,
    round_: int,
    federation: str,
    add: Callable[[Any], None],
    finish: Callable[[], None],
) -> None:
    """:func:`drain_upload` over an iterator of every chunk, each released before the next one is received.

    With N silos streaming at once, holding the previous chunk while gRPC receives and parses the next would
    keep two chunks per stream in memory instead of one.
    """
    chunk: Any = next(chunks, None)
    while chunk is not None:
        if (chunk.silo, chunk.round, chunk.federation) != (silo, round_, federation):
            raise InvalidInput(
                "every chunk of an upload must name the same silo, round and federation"
            )
        add(chunk)
        last = bool(chunk.last)
        chunk = None  # released before the next receive
        if last:
            if next(chunks, None) is not None:
                raise InvalidInput("chunks after the last one")
            finish()
            return
        chunk = next(chunks, None)
    raise InvalidInput("upload ended without its last chunk")


class _Servicer:
    """Caller identity, federation check and error mapping shared by the coordinator's services."""

    def __init__(
        self,
        rounds: RoundService,
        *,
        revoked: frozenset[str],
        insecure: bool,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._rounds = rounds
        self._revoked = revoked
        self._insecure = insecure
        self._max_message_bytes = max_message_bytes

    # identity --------------------------------------------------------------------------------------
    def _caller(self, context: grpc.ServicerContext, claimed: str | None = None) -> str:
        if self._insecure:
            metadata = dict(context.invocation_metadata())
            silo = str(metadata.get(INSECURE_SILO_HEADER, ""))
        else:
            # grpc-stubs types this as Mapping[str, bytes]; gRPC actually returns lists of bytes
            auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
            silo = silo_identity(
                auth, federation=self._rounds.settings.federation, revoked=self._revoked
            )
        if silo not in self._rounds.roster.members:
            raise Unauthorized(f"{silo!r} is not on the roster")
        if claimed is not None and claimed != silo:
            raise Unauthorized(f"the certificate identifies {silo}; it cannot act as {claimed!r}")
        return silo

    def _federation(self, federation: str) -> None:
        if federation != self._rounds.settings.federation:
            raise NotFound(f"unknown federation {federation!r}")

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except Exception as exc:
            _abort(context, exc)


class FederationServicer(_Servicer, pb_grpc.FederationServicer):
    """Thin adapter from gRPC calls to the round service."""

    @staticmethod
    def _wait(seconds: float) -> float:
        return max(0.0, min(seconds, MAX_WAIT_SECONDS))

    # rpcs ------------------------------------------------------------------------------------------
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        def run() -> pb.JoinResponse:
            self._caller(context, request.silo)
            self._federation(request.federation)
            view_round = len(self._rounds.store.rounds(request.federation))
            return pb.JoinResponse(
                federation=request.federation,
                roster_fingerprint=self._rounds.roster.fingerprint(),
                rounds=self._rounds.settings.rounds,
                current_round=view_round,
                max_message_bytes=self._max_message_bytes,
            )

        return self._call(context, run)

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        def run() -> pb.RoundInfo:
            self._caller(context)
            self._federation(request.federation)
            view = self._rounds.view(after=request.after, wait=self._wait(request.wait_seconds))
            info = pb.RoundInfo(
                state=pb.ROUND_STATE_FINISHED if view.finished else pb.ROUND_STATE_OPEN,
                stage=view.stage.value,
                rounds=view.rounds,
                stage_deadline_unix=view.stage_deadline,
            )
            config_to_pb(view.config, info)
            if self._rounds.silo_dp_plan is not None:
                info.silo_dp.CopyFrom(plan_to_pb(self._rounds.silo_dp_plan))
            return info

        return self._call(context, run)

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        def run() -> tuple[bytes, bytes]:
            self._caller(context)
            self._federation(request.federation)
            return self._rounds.model_bytes(request.round)

        data, digest = self._call(context, run)
        yield from model_chunks(data, digest, self._max_message_bytes)

    def AdvertiseKeys(
        self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.advertisement.silo)
            self._federation(request.federation)
            self._rounds.advertise(
                silo, request.round, advertisement_from_pb(request.advertisement)
            )
            return pb.Ack()

        return self._call(context, run)

    def GetAdvertisements(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.AdvertisementSet:
        def run() -> pb.AdvertisementSet:
            self._caller(context, request.silo)
            self._federation(request.federation)
            ads = self._rounds.advertisements(request.round, self._wait(request.wait_seconds))
            return pb.AdvertisementSet(advertisements=[advertisement_to_pb(a) for a in ads])

        return self._call(context, run)

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.sender)
            self._federation(request.federation)
            self._rounds.share_keys(silo, request.round, share_keys_from_pb(request))
            return pb.Ack()

        return self._call(context, run)

    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        def run() -> pb.Inbox:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            shares = self._rounds.inbox(silo, request.round, self._wait(request.wait_seconds))
            return pb.Inbox(shares=[share_to_pb(s) for s in shares])

        return self._call(context, run)

    def UploadMaskedInput(
        self, request_iterator: Iterable[pb.MaskedChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            chunks = iter(request_iterator)
            pending = [next(chunks, None)]
            first = pending[0]
            if first is None:
                raise InvalidInput("empty upload")
            silo = self._caller(context, first.silo)
            self._federation(first.federation)
            round_, federation = first.round, first.federation
            attestation = bytes(first.attestation)
            signature = bytes(first.attestation_signature)
            # from here on only ``pending`` holds the first chunk, until drain_chunks takes it
            del first
            with self._rounds.upload(
                silo, round_, attestation=attestation, signature=signature
            ) as upload:
                drain_chunks(
                    _prepend(pending, chunks),
                    silo,
                    round_,
                    federation,
                    lambda c: upload.add(c.offset, u32_view(c.values)),
                    upload.finish,
                )
            return pb.Ack()

        return self._call(context, run)

    def GetSurvivors(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.SurvivorSet:
        def run() -> pb.SurvivorSet:
            self._caller(context, request.silo)
            self._federation(request.federation)
            return pb.SurvivorSet(
                survivors=list(
                    self._rounds.survivors(request.round, self._wait(request.wait_seconds))
                )
            )

        return self._call(context, run)

    def SignSurvivors(
        self, request: pb.SignSurvivorsRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._rounds.sign_survivors(
                silo, request.round, SurvivorSignature(silo, bytes(request.signature))
            )
            return pb.Ack()

        return self._call(context, run)

    def GetUnmaskRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.UnmaskRequest:
        def run() -> pb.UnmaskRequest:
            self._caller(context, request.silo)
            self._federation(request.federation)
            return unmask_request_to_pb(
                self._rounds.unmask_request(request.round, self._wait(request.wait_seconds))
            )

        return self._call(context, run)

    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._rounds.unmask(silo, request.round, unmask_response_from_pb(request))
            return pb.Ack()

        return self._call(context, run)

    def GetResult(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        def run() -> pb.RoundResult:
            self._caller(context, request.silo)
            self._federation(request.federation)
            outcome = self._rounds.result(request.round, self._wait(request.wait_seconds))
            state = {
                RoundStatus.COMPLETED: pb.ROUND_STATE_COMPLETED,
                RoundStatus.ABORTED: pb.ROUND_STATE_ABORTED,
            }.get(outcome.status, pb.ROUND_STATE_OPEN)
            return pb.RoundResult(
                round=outcome.round,
                state=state,
                survivors=list(outcome.survivors),
                dropped=list(outcome.dropped),
                new_model_hash=outcome.new_model_hash,
                reason=outcome.reason,
            )

        return self._call(context, run)


class AuditServicer(_Servicer, pb_grpc.AuditServicer):
    """Read-only access to the audit ledger for roster members (live monitoring and checkpoint witnessing)."""

    def _ledger_call(
        self, context: grpc.ServicerContext, federation: str, fn: Callable[[], R]
    ) -> R:
        def run() -> R:
            self._caller(context)
            self._federation(federation)
            try:
                return fn()
            except (LedgerError, ValueError, IndexError) as exc:
                raise InvalidInput(str(exc)) from exc

        return self._call(context, run)

    def GetCheckpoint(
        self, request: pb.CheckpointRequest, context: grpc.ServicerContext
    ) -> pb.Checkpoint:
        def run() -> pb.Checkpoint:
            checkpoint = self._rounds.audit.ledger.latest_checkpoint()
            if checkpoint is None:
                raise NotFound("no checkpoint has been signed yet")
            return pb.Checkpoint(note=checkpoint.text, size=checkpoint.size)

        return self._ledger_call(context, request.federation, run)

    def GetEntries(self, request: pb.EntriesRequest, context: grpc.ServicerContext) -> pb.Entries:
        def run() -> pb.Entries:
            ledger = self._rounds.audit.ledger
            end = min(request.end, ledger.size, request.start + MAX_ENTRIES_PER_CALL)
            if request.start > end:
                raise InvalidInput(
                    f"entry range [{request.start}, {request.end}) is empty or beyond the log"
                )
            budget = self._max_message_bytes - 16 * 1024
            out: list[bytes] = []
            for entry in ledger.entries(request.start, end):
                budget -= len(entry) + 8
                if budget < 0 and out:
                    break  # the caller continues from start + len(entries)
                out.append(entry)
            return pb.Entries(entries=out)

        return self._ledger_call(context, request.federation, run)

    def GetInclusionProof(
        self, request: pb.InclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.Proof:
        def run() -> pb.Proof:
            ledger = self._rounds.audit.ledger
            return pb.Proof(hashes=ledger.inclusion_proof(request.index, request.size))

        return self._ledger_call(context, request.federation, run)

    def GetConsistencyProof(
        self, request: pb.ConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.Proof:
        def run() -> pb.Proof:
            ledger = self._rounds.audit.ledger
            return pb.Proof(hashes=ledger.consistency_proof(request.old_size, request.new_size))

        return self._ledger_call(context, request.federation, run)


class _Undecodable:
    """Stands in for a request whose bytes are not a valid protobuf message (see :class:`_DecodeGuard`)."""


def _lenient(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception:  # protobuf raises DecodeError, or RuntimeWarning-like errors on garbage
            return _Undecodable()

    return parse


def _refuse_undecodable(request: object, context: grpc.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "malformed request: not a valid protobuf message"
        )


class _DecodeGuard(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Answers INVALID_ARGUMENT for undecodable requests (grpc itself would answer INTERNAL)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        changes: dict[str, object] = {
            "request_deserializer": _lenient(handler.request_deserializer)
        }
        if handler.unary_unary is not None:
            changes["unary_unary"] = _guard_unary(handler.unary_unary)
        if handler.unary_stream is not None:
            changes["unary_stream"] = _guard_unary(handler.unary_stream)
        if handler.stream_unary is not None:
            changes["stream_unary"] = _guard_stream(handler.stream_unary)
        if handler.stream_stream is not None:
            changes["stream_stream"] = _guard_stream(handler.stream_stream)
        # grpc's handlers are namedtuples; _replace keeps everything else as registered
        return handler._replace(**changes)


def _guard_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(request: object, context: grpc.ServicerContext) -> Any:
        _refuse_undecodable(request, context)
        return behaviour(request, context)

    return guarded


def _guard_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(requests: Iterator[object], context: grpc.ServicerContext) -> Any:
        def checked() -> Iterator[object]:
            for request in requests:
                _refuse_undecodable(request, context)
                yield request
                # not kept while the next request is received: one chunk per upload stream in memory, not two
                del request

        return behaviour(checked(), context)

    return guarded


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the consortium CA and this endpoint's certificate and private key."""

    ca: bytes
    cert: bytes
    key: bytes


STREAM_LOOKAHEAD_BYTES = 16 * 1024
"""HTTP/2 receive window of a stream before the application asks for its next message (gRPC's default: 64 KiB)."""


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC core channel arguments of the coordinator's server (see ``grpc_types.h`` in gRPC core).

    - ``grpc.max_receive_message_length`` / ``grpc.max_send_message_length``: the configured message limit.
    - ``grpc.http2.bdp_probe`` = 0: fixed flow-control windows. With bandwidth-delay-product probing every
      concurrent upload stream grows its window to megabytes of chunks buffered in the coordinator, so its
      memory would grow with the number of silos.
    - ``grpc.http2.lookahead_bytes`` = :data:`STREAM_LOOKAHEAD_BYTES`: how much of an upload stream gRPC
      buffers ahead of the handler. The window opens by one message when the handler asks for it, so a
      smaller lookahead only lowers what waits per stream while the handler is busy (a few vectors at 50
      silos) and leaves throughput unchanged.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_LOOKAHEAD_BYTES),
    ]


def create_server(
    rounds: RoundService,
    address: str,
    *,
    tls: TlsFiles | None,
    revoked: Iterable[str] = (),
    max_message_bytes: int = 4 << 20,
    insecure_debug_no_tls: bool = False,
    max_workers: int = 64,
) -> tuple[grpc.Server, int]:
    """Build (without starting) the coordinator's gRPC server; returns it and the bound port.

    mTLS is mandatory: the server requires a client certificate chained to the consortium CA. The only way
    around it is ``insecure_debug_no_tls=True``, for local debugging, which identifies callers by a header
    anyone can set.
    """
    if tls is None and not insecure_debug_no_tls:
        raise ValueError(
            "TLS material is required (insecure_debug_no_tls is for local debugging only)"
        )
    options = server_options(max_message_bytes)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=options,
        interceptors=[_DecodeGuard()],
    )
    refused = frozenset(revoked)
    insecure = tls is None
    pb_grpc.add_FederationServicer_to_server(
        FederationServicer(
            rounds, revoked=refused, insecure=insecure, max_message_bytes=max_message_bytes
        ),
        server,
    )
    pb_grpc.add_AuditServicer_to_server(
        AuditServicer(
            rounds, revoked=refused, insecure=insecure, max_message_bytes=max_message_bytes
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("coordinator.proto.v1.Federation", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("coordinator.proto.v1.Audit", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is None:
        log.warning(
            "INSECURE: serving without TLS; silo identities are unauthenticated (debug only)"
        )
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port
