"""Server interceptors: undecodable requests get INVALID_ARGUMENT instead of INTERNAL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc


class _Undecodable:
    """Stands in for a request whose bytes are not a valid protobuf message (see :class:`DecodeGuard`)."""


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


class DecodeGuard(grpc.ServerInterceptor):  # type: ignore[type-arg]
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
