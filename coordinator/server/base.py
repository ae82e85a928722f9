"""What every servicer shares: caller identity from the mTLS certificate, the federation check, error
translation, stream draining and model download chunks."""

from __future__ import annotations

import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn, TypeVar, cast

import grpc
import numpy as np
import numpy.typing as npt

from coordinator.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INSECURE_SILO_HEADER,
    chunk_words,
)
from coordinator.errors import (
    InvalidInput,
    NotFound,
    Unauthorized,
)
from coordinator.pki import silo_identity
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.rounds.driver import RoundDriver
from coordinator.rounds.polls import WouldWait
from coordinator.wire.errors import to_status
from coordinator.wire.rounds import outcome_to_pb

if TYPE_CHECKING:
    from coordinator.server.aio import AioCall

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_ENTRIES_PER_CALL = 1000


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    status = to_status(exc)
    if status is None:
        log.exception("internal error while serving a request")
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    code, message, trailer = status
    context.set_trailing_metadata(trailer)
    context.abort(code, message)


R = TypeVar("R")


_VALUES_TAG = bytes([(2 << 3) | 2])
"""The wire tag of ``ModelChunk.values``: field 2, length-delimited."""


def _varint(n: int) -> bytes:
    """Base-128 varint (Protocol Buffers encoding, "Base 128 Varints")."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def model_chunks(
    data: bytes, digest: bytes, max_message_bytes: int, *, streams: int = 0
) -> Iterator[bytes]:
    """A model (float32 little-endian bytes) as serialized ``ModelChunk`` messages below the message limit.

    ``streams``: how many silos download it at once (the roster's size); the chunks are then sized like the
    uploads' (:func:`~coordinator.common.chunk_words`), so a large model travels in fewer messages while all
    streams together still hold about a quarter of a vector in chunks.

    Notes:
        Each chunk is the small message of its offset, total and hash, followed by its values as field 2: one
        copy of the values per chunk, where slicing them, building the message and serializing it made three.
        Parsers accept fields in any order ("Field Order" in the Protocol Buffers encoding guide,
        https://protobuf.dev/programming-guides/encoding/#order), so the silos read the same message; the
        asyncio server passes bytes a server stream yields through its serializer
        (:mod:`coordinator.server.aio`).
    """
    step = chunk_words(max_message_bytes, vector_words=len(data) // 4, streams=streams) * 4
    view, total = memoryview(data), len(data) // 4
    for start in range(0, max(len(data), 1), step):
        values = view[start : start + step]
        header = pb.ModelChunk(offset=start // 4, total=total, model_hash=digest)
        yield b"".join((header.SerializeToString(), _VALUES_TAG, _varint(len(values)), values))


def u32_view(data: bytes) -> npt.NDArray[np.uint32]:
    """A read-only uint32 view of a chunk's little-endian bytes (no copy); refuses a ragged length.

    :func:`~coordinator.wire.masking.u32_from_bytes` returns a writable copy; an upload chunk is only read (added into
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


async def drain_chunks_async(
    first: Any,
    call: AioCall,
    chunks: AsyncIterator[Any],
    silo: str,
    add: Callable[[Any], Awaitable[None]],
    finish: Callable[[], Awaitable[None]],
) -> None:
    """:func:`drain_upload` for a stream read with ``async for``: each chunk is handed to ``add`` (a worker)
    and released before the next one is received; the same checks, refusals through ``call.fail``."""
    round_, federation = first.round, first.federation
    chunk: Any = first
    del first
    while chunk is not None:
        if (chunk.silo, chunk.round, chunk.federation) != (silo, round_, federation):
            await call.fail(
                InvalidInput(
                    "every chunk of an upload must name the same silo, round and federation"
                )
            )
        last = bool(chunk.last)
        await add(chunk)
        chunk = None  # released before the next receive
        if last:
            if await call.receive(chunks) is not None:
                await call.fail(InvalidInput("chunks after the last one"))
            await finish()
            return
        chunk = await call.receive(chunks)
    await call.fail(InvalidInput("upload ended without its last chunk"))


class StreamHeader(NamedTuple):
    """Who a client stream says it is from, kept so its first chunk need not be (one chunk per stream)."""

    federation: str
    silo: str


def refuse_empty() -> pb.Ack:
    """The answer to a client stream that sent no message at all."""
    raise InvalidInput("empty upload")


def acked(submit: Callable[[str], object]) -> Callable[[str], pb.Ack]:
    """A submission handler that answers ``Ack`` once ``submit(caller)`` has returned."""

    def run(silo: str) -> pb.Ack:
        submit(silo)
        return pb.Ack()

    return run


def caller_identity(
    context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
    *,
    federation: str,
    revoked: Collection[str],
    insecure: bool,
) -> str:
    """The silo a call comes from: its mTLS client certificate's identity (a debug header without TLS).

    Raises:
        Unauthorized: the certificate is not a silo's of ``federation``, or it is revoked.
    """
    if insecure:
        metadata = dict(context.invocation_metadata() or ())
        return str(metadata.get(INSECURE_SILO_HEADER, ""))
    # grpc-stubs types this as Mapping[str, bytes]; gRPC actually returns lists of bytes
    auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
    return silo_identity(auth, federation=federation, revoked=revoked)


class ServicerBase:
    """Caller identity, federation check, error mapping and the calls every mode's service answers alike."""

    def __init__(
        self,
        rounds: RoundDriver,
        *,
        revoked: Collection[str],
        insecure: bool,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._rounds = rounds
        self._revoked = revoked
        self._insecure = insecure
        self._max_message_bytes = max_message_bytes

    # identity --------------------------------------------------------------------------------------
    def _caller(self, context: grpc.ServicerContext, claimed: str | None = None) -> str:
        silo = caller_identity(
            context,
            federation=self._rounds.settings.federation,
            revoked=self._revoked,
            insecure=self._insecure,
        )
        if silo not in self._rounds.roster.members:
            raise Unauthorized(
                f"{silo!r} is not on the roster of federation {self._rounds.settings.federation!r}: ask the "
                "consortium to add it, or check `silo` in silo.toml"
            )
        if claimed is not None and claimed != silo:
            raise Unauthorized(f"the certificate identifies {silo}; it cannot act as {claimed!r}")
        return silo

    def _federation(self, federation: str) -> None:
        if federation != self._rounds.settings.federation:
            raise NotFound(f"unknown federation {federation!r}")

    def _serve(
        self,
        context: grpc.ServicerContext,
        request: Any,
        fn: Callable[[str], R],
        *,
        claimed: str | Literal["silo"] | None = "silo",
    ) -> R:
        """Identify the caller, check ``request.federation``, run ``fn(caller)`` and translate exceptions.

        The caller must be the silo the request names (``request.silo`` by default, ``claimed`` where the
        message names it elsewhere); ``claimed=None`` admits any roster member (reads that name no silo).
        """

        def run() -> R:
            silo = self._caller(context, request.silo if claimed == "silo" else claimed)
            self._federation(request.federation)
            return fn(silo)

        return self._call(context, run)

    def _joined(self, federation: str, silo: str) -> dict[str, Any]:
        """Record that ``silo`` joined; the fields every mode's ``Join`` answers: roster fingerprint, planned
        rounds, progress, limits."""
        r = self._rounds
        r.join(silo)
        return {
            "federation": federation,
            "roster_fingerprint": r.roster.fingerprint(),
            "rounds": r.settings.rounds,
            "current_round": len(r.store.rounds(federation)),
            "max_message_bytes": self._max_message_bytes,
        }

    def _call(self, context: grpc.ServicerContext, fn: Callable[[], R]) -> R:
        try:
            return fn()
        except WouldWait:  # not a refusal: the asyncio server awaits the change and calls again
            raise
        except Exception as exc:
            status = to_status(exc)
            self._rounds.metrics.refused("INTERNAL" if status is None else status[0].name)
            _abort(context, exc)

    @staticmethod
    def _wait(seconds: float) -> float:
        return max(0.0, min(seconds, MAX_WAIT_SECONDS))

    def DownloadModel(  # yields serialized ModelChunk bytes (the generated stubs type messages)
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        data, digest = self._serve(
            context, request, lambda _: self._rounds.model_bytes(request.round), claimed=None
        )
        self._rounds.metrics.sent_bytes.inc(len(data))
        streams = len(self._rounds.roster.members)
        yield from model_chunks(data, digest, self._max_message_bytes, streams=streams)

    def GetResult(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        wait = self._wait(request.wait_seconds)
        return self._serve(
            context,
            request,
            lambda _: outcome_to_pb(self._rounds.result(request.round, wait)),
        )
