"""The one two-way table between the coordinator's exceptions and gRPC status codes.

The server turns an exception into ``(status code, public message)`` with :func:`to_status`; the SDK turns a
``grpc.RpcError`` back into the same exception class with :func:`from_rpc_error`. A privacy refusal travels
as PERMISSION_DENIED with a structured detail (the trailing metadata key :data:`ERROR_KIND_KEY` names the
exception class), so the SDK never parses a message to tell it apart from other authorisation failures.

Notes:
    Messages that leave the server name stages, silos and counts, never payloads, keys or shares (Flower's
    ``supercore/error`` does the same). Anything unexpected becomes INTERNAL with a generic message and the
    details go to the local log only.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

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
from secagg import RoundAborted

__all__ = ["ERROR_CATALOG", "ERROR_KIND_KEY", "from_rpc_error", "to_status"]

ERROR_KIND_KEY = "secagg-error-kind"
"""Trailing metadata key naming the exception class of a refusal whose status code alone is ambiguous."""

ERROR_CATALOG: Mapping[type[Exception], tuple[grpc.StatusCode, type[CoordinatorError]]] = {
    # order matters: subclasses before their bases
    PrivacyRefused: (grpc.StatusCode.PERMISSION_DENIED, PrivacyRefused),
    Unauthorized: (grpc.StatusCode.PERMISSION_DENIED, Unauthorized),
    NotFound: (grpc.StatusCode.NOT_FOUND, NotFound),
    StageError: (grpc.StatusCode.FAILED_PRECONDITION, StageError),
    DuplicateSubmission: (grpc.StatusCode.ALREADY_EXISTS, DuplicateSubmission),
    InvalidInput: (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
    RoundAborted: (grpc.StatusCode.ABORTED, Aborted),
    Aborted: (grpc.StatusCode.ABORTED, Aborted),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
    TimeoutError: (grpc.StatusCode.DEADLINE_EXCEEDED, CoordinatorError),
}
"""Server exception -> (public status, the SDK exception it maps back to)."""

_BY_KIND: Mapping[str, type[CoordinatorError]] = {
    kind.__name__: kind for _, kind in ERROR_CATALOG.values() if kind is not CoordinatorError
}
_BY_CODE: Mapping[grpc.StatusCode, type[CoordinatorError]] = {
    grpc.StatusCode.PERMISSION_DENIED: Unauthorized,
    grpc.StatusCode.UNAUTHENTICATED: Unauthorized,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: StageError,
    grpc.StatusCode.ALREADY_EXISTS: DuplicateSubmission,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DATA_LOSS: AuditFailure,
}


def to_status(exc: Exception) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None:
    """The public status, message and trailing metadata for ``exc``; ``None`` for an unexpected exception."""
    for kind, (code, mapped) in ERROR_CATALOG.items():
        if isinstance(exc, kind):
            return code, str(exc), ((ERROR_KIND_KEY, mapped.__name__),)
    return None


def from_rpc_error(exc: grpc.RpcError) -> CoordinatorError:
    """The SDK exception for a failed call: the class named in its trailing metadata, else by status code."""
    if not isinstance(exc, grpc.Call):
        return CoordinatorError(str(exc) or "gRPC call failed")
    code = exc.code()
    details = exc.details() or str(code)
    named = dict(exc.trailing_metadata() or ()).get(ERROR_KIND_KEY)
    kind = _BY_KIND.get(str(named)) if named is not None else None
    if kind is None or _code_of(kind) is not code:
        kind = _BY_CODE.get(code, CoordinatorError)
    error = kind(details)
    error.__cause__ = exc
    return error


def _code_of(kind: type[CoordinatorError]) -> grpc.StatusCode | None:
    for code, mapped in ERROR_CATALOG.values():
        if mapped is kind:
            return code
    return None
