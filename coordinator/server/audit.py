"""The read-only ``Audit`` service: checkpoints, entries and proofs for roster members."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from audits import LedgerError
from coordinator.errors import (
    InvalidInput,
    NotFound,
)
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.server.base import MAX_ENTRIES_PER_CALL, R, ServicerBase


class AuditServicer(ServicerBase, pb_grpc.AuditServicer):
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
