"""What the coordinator's server side and the silo SDK agree on, with no grpc: round status, model hash, chunk
sizes, TLS material, the insecure-debug identity header and the ledger origin.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INSECURE_SILO_HEADER",
    "FloatVector",
    "RoundReport",
    "RoundStatus",
    "TlsFiles",
    "chunk_words",
    "ledger_origin",
    "model_bytes_view",
    "model_hash",
]

FloatVector = npt.NDArray[np.float32]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default receive limit; vectors are streamed in chunks that stay below it."""

CHUNK_HEADROOM = 16 * 1024
"""Bytes kept free in a chunk message for protobuf framing, ids, the attestation and signatures."""

MAX_CHUNK_WORDS = 1 << 14
"""64 KiB per streamed chunk (upload and download) when nothing is known of the vector or the cohort.

With N silos streaming at once, the coordinator holds a few copies of one chunk per stream (gRPC's receive
buffer, the Python bytes, the parsed protobuf message), so its peak memory grows with N x chunk size: 1 MiB
chunks cost about 40 vectors of 1M parameters at N = 50 (``bench/bench_coordinator.py``), 64 KiB chunks a few.
Smaller chunks cost per-message CPU: 16 KiB doubled the 50-silo round time on two cores.
"""

LARGE_CHUNK_WORDS = 1 << 18
"""1 MiB: the largest chunk :func:`chunk_words` picks from the vector and the cohort (below the 4 MiB limit)."""

STREAM_SHARE = 4
"""The chunks of all N streams together are at most 1 / ``STREAM_SHARE`` of a vector (:func:`chunk_words`)."""

INSECURE_SILO_HEADER = "x-secagg-insecure-debug-silo"
"""With ``insecure_debug_no_tls`` only, the header that names the caller (anyone can set it: debug only)."""


def chunk_words(max_message_bytes: int, *, vector_words: int = 0, streams: int = 0) -> int:
    """4-byte words per streamed chunk so a chunk message stays below ``max_message_bytes``.

    Without ``vector_words`` and ``streams``: at most 64 KiB (:data:`MAX_CHUNK_WORDS`). With them (the vector's
    length and how many silos stream it at once, the round's ``n``): ``vector_words / (STREAM_SHARE * streams)``
    words, at least 64 KiB and at most 1 MiB. Every message costs the coordinator a fixed amount of Python and
    gRPC work (about 0.3 ms on this machine's cores, ``bench/bench_coordinator.py --profile``), which 64 KiB
    chunks of 10 x 4M parameters pay 2,450 times a round each way; while the chunks in flight on all N streams,
    a few copies each, stay within one vector, so the coordinator's peak memory keeps growing with the vector,
    not with N x chunk size. At 50 silos x 1M that is the 64 KiB floor, as before; at 10 x 4M, 400 KB.
    """
    limit = max(1, (max_message_bytes - CHUNK_HEADROOM) // 4)
    words = MAX_CHUNK_WORDS
    if vector_words > 0 and streams > 0:
        words = max(
            MAX_CHUNK_WORDS, min(LARGE_CHUNK_WORDS, vector_words // (STREAM_SHARE * streams))
        )
    return min(words, limit)


def model_bytes_view(model: FloatVector) -> memoryview:
    """The model's float32 little-endian bytes as a view: no vector-sized copy to hash or store it."""
    return np.ascontiguousarray(model, dtype="<f4").data.cast("B")


def model_hash(model: FloatVector) -> bytes:
    """SHA-256 of the model's float32 little-endian bytes (hashed in place, not copied)."""
    return hashlib.sha256(model_bytes_view(model)).digest()


def ledger_origin(federation: str) -> str:
    """The ledger origin (checkpoint first line) of a federation."""
    return f"secagg/federation/{federation}"


class RoundStatus(StrEnum):
    """Where a round ended up."""

    OPEN = "open"
    COMPLETED = "completed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the consortium CA and this endpoint's certificate and private key."""

    ca: bytes
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class RoundReport:
    """How a round ended: what the coordinator records and what each silo is told (``GetResult``).

    ``new_model`` is the new global model a completed round produced, as the silo SDK downloaded it and checked
    it against ``new_model_hash``; ``None`` for an aborted round and in the coordinator's own records.
    """

    round: int
    status: RoundStatus
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    new_model_hash: bytes = b""
    reason: str = ""
    new_model: FloatVector | None = field(default=None, repr=False, compare=False)
