"""The coordinator's gRPC server on asyncio: waiting calls hold no thread, and each silo's share is bounded.

Every servicer keeps its synchronous handlers (one code path, also usable on a threaded ``grpc.server``);
:class:`AioBridge` serves them on ``grpc.aio``:

- a unary call runs its handler in the :class:`~coordinator.server.fair.FairExecutor` (``[limits] workers``
  threads, a queue per silo served round-robin) with a small context adapter (:class:`SyncContext`);
- a long poll runs there in :func:`~coordinator.rounds.polls.without_waiting` mode: when it would wait, the
  worker is released and the call awaits the driver's next state change on the event loop
  (:meth:`RoundDriver.on_change <coordinator.rounds.driver.RoundDriver.on_change>`), then runs again, and
  at its deadline answers as the threaded poll does;
- a server stream (a model download, a decryption request) takes each message from the handler's generator in
  a worker and writes it from the loop, so a slow reader holds no thread; a message the generator yields as
  bytes is taken as already serialized (the model download's chunks);
- a client stream (an upload) is read with ``async for``: the servicer's ``aio_<Method>`` (when it is defined
  where the synchronous method is, or below) hands each chunk to a worker; otherwise the stream is read into
  memory up to the servicer's ``buffered_stream_bytes`` and handed to the synchronous handler in one go.

Before any of this each call is admitted (:class:`Admission`): the caller is identified from its mTLS
certificate, and a call beyond ``calls_per_silo``, ``streams_per_silo`` or ``max_concurrent_rpcs`` is refused at
once with RESOURCE_EXHAUSTED. Undecodable requests get INVALID_ARGUMENT (lenient deserializers), not INTERNAL.

Notes:
    A member silo could park many long polls on a thread-per-call server and starve everyone else (issue 18:
    100 parked ``GetRound`` polls made another silo's ``Join`` time out). Here a parked call costs a coroutine,
    and what one silo may park is bounded by its own limits, so it cannot use up the global bound.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NoReturn, TypeVar, cast

import grpc

from coordinator.config import LimitsConfig
from coordinator.errors import InvalidInput, Overloaded
from coordinator.metrics import Metrics
from coordinator.rounds.polls import WouldWait, without_waiting
from coordinator.server.fair import FairExecutor
from coordinator.wire.errors import to_status

__all__ = [
    "Admission",
    "AioBridge",
    "AioCall",
    "AioServer",
    "Collector",
    "SyncContext",
    "shared_loop",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

UNIDENTIFIED = ""
"""The admission key of callers that are not a roster silo (they share one silo's limits until refused)."""

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def shared_loop() -> asyncio.AbstractEventLoop:
    """The process's one event loop for gRPC servers, running in a daemon thread (started on first use).

    One loop for every server in the process: gRPC's asyncio layer binds to the loop it first runs on.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="grpc-aio-loop", daemon=True)
            thread.start()
            _loop = loop
        return _loop


def on_loop(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run ``coro`` on the shared loop from another thread and return its result."""

    async def run() -> T:
        return await coro

    return asyncio.run_coroutine_threadsafe(run(), shared_loop()).result(timeout)


# -- decoding ----------------------------------------------------------------------------------------------------
class Undecodable:
    """Stands in for a request whose bytes are not a valid protobuf message (answered INVALID_ARGUMENT)."""


MALFORMED = "malformed request: not a valid protobuf message"


def lenient(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """``deserialize``, returning :class:`Undecodable` instead of raising (gRPC would answer INTERNAL)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception:  # protobuf raises DecodeError, or RuntimeWarning-like errors on garbage
            return Undecodable()

    return parse


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serialize``, except that a message a server stream yields already serialized (bytes) goes as it is."""
    if serialize is None:
        return None

    def out(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    return out


# -- the context a synchronous handler sees ----------------------------------------------------------------------
class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class SyncContext:
    """The part of ``grpc.ServicerContext`` the servicers use, for a handler running in a worker thread.

    The caller's identity and metadata are read on the loop beforehand; ``abort`` ends the handler, and the
    bridge aborts the call on the loop with the same status (and the trailing metadata set before it).
    """

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._auth = context.auth_context()
        self._metadata = tuple(context.invocation_metadata() or ())
        self._peer = context.peer()
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()

    def auth_context(self) -> Any:
        return self._auth

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def is_active(self) -> bool:
        return True

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Aborted(code, details)


# -- admission ---------------------------------------------------------------------------------------------------
class Admission:
    """Counts calls in flight per silo and in all; refuses beyond ``[limits]``. Used on the loop thread only."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self._calls: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        self._total = 0

    def admit(self, silo: str, *, stream: bool) -> None:
        """Count a new call of ``silo``.

        Raises:
            Overloaded: the call is beyond a limit (nothing counted).
        """
        limits, who = self.limits, silo or "this caller"
        if self._total >= limits.max_concurrent_rpcs:
            raise Overloaded(
                f"the coordinator has max_concurrent_rpcs ({limits.max_concurrent_rpcs}) calls in flight: "
                "retry later, or raise [limits] max_concurrent_rpcs in serve.toml"
            )
        if self._calls[silo] >= limits.calls_per_silo:
            raise Overloaded(
                f"{who} has calls_per_silo ({limits.calls_per_silo}) calls in flight: wait for one to end "
                "before the next, or raise [limits] calls_per_silo in serve.toml"
            )
        if stream and self._streams[silo] >= limits.streams_per_silo:
            raise Overloaded(
                f"{who} has streams_per_silo ({limits.streams_per_silo}) streams in flight: wait for one to "
                "end before the next, or raise [limits] streams_per_silo in serve.toml"
            )
        self._total += 1
        self._calls[silo] += 1
        if stream:
            self._streams[silo] += 1

    def release(self, silo: str, *, stream: bool) -> None:
        """A call admitted with :meth:`admit` has ended."""
        self._total -= 1
        self._calls[silo] -= 1
        if self._calls[silo] == 0:
            del self._calls[silo]
        if stream:
            self._streams[silo] -= 1
            if self._streams[silo] == 0:
                del self._streams[silo]

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet ended."""
        return self._total


# -- state changes -----------------------------------------------------------------------------------------------
class _Changes:
    """The driver's state changes, seen on the loop: a version number and the calls awaiting the next one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.version = 0
        self._waiters: set[asyncio.Future[None]] = set()

    def notify_threadsafe(self) -> None:
        """The driver's listener: runs in the notifying thread, schedules the wake-up on the loop."""
        self._loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self.version += 1
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def until(self, seen: int, ready: Callable[[], bool], deadline: float) -> None:
        """Return after a change since version ``seen`` that makes ``ready`` true, or at ``deadline``."""
        while True:
            if self.version != seen:
                seen = self.version
                if _hint(ready):
                    return
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            waiter = self._loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                self._waiters.discard(waiter)


def _hint(ready: Callable[[], bool]) -> bool:
    """``ready()`` read without the driver's lock: a hint only (the worker checks it again under the lock)."""
    try:
        return bool(ready())
    except Exception:  # a state read mid-change: let the worker decide
        return True


# -- one call ----------------------------------------------------------------------------------------------------
_END = object()


class AioCall:
    """One admitted call as a servicer's ``aio_<Method>`` sees it: run steps in a worker, read the stream."""

    def __init__(
        self, bridge: AioBridge, key: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._bridge = bridge
        self.key = key
        self.context = context
        self.sync = cast(grpc.ServicerContext, SyncContext(context))
        """What the synchronous handlers are given as their context (a :class:`SyncContext`)."""

    async def run(self, fn: Callable[[grpc.ServicerContext], T]) -> T:
        """``fn(context)`` in a worker (no long-poll waiting); an abort there aborts this call."""

        def step() -> T:
            with without_waiting(expired=True):
                return fn(self.sync)

        return await self._aborting(self._bridge.submit(self.key, step))

    async def poll(self, fn: Callable[[grpc.ServicerContext], T]) -> T:
        """``fn(context)`` in a worker; while it would wait for a state change, await the change here."""
        changes, loop = self._bridge.changes, asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            seen = changes.version
            expired = deadline is not None and loop.time() >= deadline

            def step(expired: bool = expired) -> T:
                with without_waiting(expired=expired):
                    return fn(self.sync)

            try:
                return await self._aborting(self._bridge.submit(self.key, step))
            except WouldWait as wait:
                if deadline is None:
                    deadline = loop.time() + wait.seconds
                await changes.until(seen, wait.ready, deadline)

    async def receive(self, requests: AsyncIterator[Any]) -> Any:
        """The stream's next message, ``None`` at its end; an undecodable one aborts the call."""
        message = await anext(requests, None)
        if isinstance(message, Undecodable):
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
        return message

    async def fail(self, exc: Exception) -> NoReturn:
        """End the call with ``exc`` through the one error table, counted as a refusal."""
        status = to_status(exc)
        assert status is not None, "fail() takes one of the catalogued errors"
        code, message, trailer = status
        self._bridge.metrics.refused(code.name)
        self.context.set_trailing_metadata(trailer)
        await self.context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def _aborting(self, work: Future[T]) -> T:
        try:
            return await asyncio.wrap_future(work)
        except _Aborted as aborted:
            trailing = cast(SyncContext, self.sync).trailing
            if trailing:
                self.context.set_trailing_metadata(trailing)
            await self.context.abort(aborted.code, aborted.details)
            raise AssertionError("unreachable: abort raises") from None  # pragma: no cover


# -- the bridge --------------------------------------------------------------------------------------------------
class Collector:
    """Stands in for a server in a generated ``add_*Servicer_to_server``: keeps the method handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[object]) -> None:
        """Ignored: the generated code registers the same handlers by name as well."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = dict(handlers)


def _defined_in(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def _async_override(behaviour: Callable[..., Any]) -> Callable[..., Any] | None:
    """The servicer's ``aio_<Method>`` for a synchronous ``behaviour``, if a subclass did not replace the latter."""
    owner, name = getattr(behaviour, "__self__", None), getattr(behaviour, "__name__", "")
    if owner is None or not name:
        return None
    override = getattr(owner, f"aio_{name}", None)
    sync_home, aio_home = _defined_in(type(owner), name), _defined_in(type(owner), f"aio_{name}")
    if override is None or sync_home is None or aio_home is None:
        return None
    return override if issubclass(aio_home, sync_home) else None


DEFAULT_BUFFERED_STREAM_BYTES = 64 << 20
"""How much of a client stream is read into memory for a servicer without an ``aio_<Method>`` for it."""


class AioBridge:
    """Serves synchronous servicers on ``grpc.aio`` with admission, a fair worker pool and non-blocking polls.

    Args:
        limits: the ``[limits]`` table.
        identify: the caller's silo from its context (raises for a caller that is no silo).
        metrics: where refusals are counted.
        listen: registers a state-change listener with the round driver; returns its remover.
    """

    def __init__(
        self,
        *,
        limits: LimitsConfig,
        identify: Callable[[grpc.aio.ServicerContext[Any, Any]], str],
        metrics: Metrics,
        listen: Callable[[Callable[[], None]], Callable[[], None]],
    ) -> None:
        self.loop = shared_loop()
        self.admission = Admission(limits)
        self.metrics = metrics
        self.changes = _Changes(self.loop)
        self._identify = identify
        self._executor = FairExecutor(limits.workers)
        self._unlisten = listen(self.changes.notify_threadsafe)

    def submit(self, key: Hashable, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` as work of silo ``key``."""
        return self._executor.submit(key, fn)

    def close(self) -> None:
        """Stop listening to the driver and stop the workers (after the server stopped)."""
        self._unlisten()
        self._executor.shutdown(timeout=5.0)

    def handlers(
        self, add: Callable[[Any, Any], object], servicer: object
    ) -> list[grpc.GenericRpcHandler[Any, Any]]:
        """The ``grpc.aio`` handlers of ``servicer`` as a generated ``add_*Servicer_to_server`` registers it."""
        collector = Collector()
        add(servicer, collector)
        return self.collected(collector)

    def collected(self, collector: Collector) -> list[grpc.GenericRpcHandler[Any, Any]]:
        """The ``grpc.aio`` handlers for what ``collector`` received."""
        return [
            grpc.method_handlers_generic_handler(
                service, {name: self._adapt(h) for name, h in methods.items()}
            )
            for service, methods in collector.services.items()
        ]

    # admission ------------------------------------------------------------------------------------------------
    def _key(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        try:
            return self._identify(context)
        except Exception:  # no silo: refused by the handler; admitted (or not) under one shared key
            return UNIDENTIFIED

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], *, stream: bool) -> str:
        key = self._key(context)
        try:
            self.admission.admit(key, stream=stream)
        except Overloaded as exc:
            status = to_status(exc)
            assert status is not None
            code, message, trailer = status
            self.metrics.refused(code.name)
            context.set_trailing_metadata(trailer)
            await context.abort(code, message)
        return key

    # adapters -------------------------------------------------------------------------------------------------
    def _adapt(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = lenient(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream), deserialize, _passing_bytes(serialize)
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary), deserialize, serialize
            )
        raise ValueError("bidirectional streams are not served by the coordinator")

    def _unary(self, behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        native = inspect.iscoroutinefunction(behaviour)

        async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            key = await self._admit(context, stream=False)
            try:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
                if native:
                    return await behaviour(request, context)
                call = AioCall(self, key, context)
                return await call.poll(lambda ctx: behaviour(request, ctx))
            finally:
                self.admission.release(key, stream=False)

        return serve

    def _unary_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
        native = inspect.iscoroutinefunction(behaviour)

        async def serve(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            key = await self._admit(context, stream=True)
            try:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
                if native:
                    await behaviour(request, context)
                    return
                call = AioCall(self, key, context)

                def first(ctx: grpc.ServicerContext) -> tuple[Any, Iterator[Any]]:
                    messages = iter(behaviour(request, ctx))
                    return next(messages, _END), messages

                message, messages = await call.poll(first)
                try:
                    while message is not _END:
                        await context.write(message)
                        message = None  # not kept while the next one is made
                        message = await call.run(lambda _: next(messages, _END))
                finally:
                    close = getattr(messages, "close", None)
                    if close is not None:
                        close()
            finally:
                self.admission.release(key, stream=True)

        return serve

    def _stream_unary(self, behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        override = _async_override(behaviour)
        budget = getattr(
            getattr(behaviour, "__self__", None),
            "buffered_stream_bytes",
            DEFAULT_BUFFERED_STREAM_BYTES,
        )

        async def serve(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            key = await self._admit(context, stream=True)
            try:
                call = AioCall(self, key, context)
                if override is not None:
                    return await override(requests, call)
                buffered: list[Any] = []
                left = int(budget)
                while (message := await call.receive(requests)) is not None:
                    left -= message.ByteSize()
                    if left < 0:
                        await call.fail(
                            InvalidInput(f"the stream is longer than {int(budget)} bytes")
                        )
                    buffered.append(message)
                return await call.run(lambda ctx: behaviour(iter(buffered), ctx))
            finally:
                self.admission.release(key, stream=True)

        return serve


# -- the server --------------------------------------------------------------------------------------------------
class AioServer:
    """A ``grpc.aio`` server on the shared loop, driven from threads like a ``grpc.Server``.

    ``start()`` serves; ``stop(grace)`` cancels the calls in flight after ``grace`` seconds, stops the workers
    and returns a set event (``stop(g).wait()`` as with ``grpc.Server``).
    """

    def __init__(self, server: grpc.aio.Server, bridge: AioBridge) -> None:
        self._server = server
        self.bridge = bridge
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start serving."""
        on_loop(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop serving (idempotent); returns an event that is set once the server and its workers stopped."""
        if not self._stopped.is_set():
            try:
                on_loop(self._server.stop(grace))
            finally:
                self.bridge.close()
                self._stopped.set()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stopped (or ``timeout`` passed); True once stopped."""
        return self._stopped.wait(timeout)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet ended (for tests and diagnostics)."""
        return self.bridge.admission.in_flight
