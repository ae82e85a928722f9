"""The ``Audit`` service: checkpoints, entries and proofs for roster members, and their witness statements.

Everything but ``PublishStatement`` is read-only. ``GetRoster`` serves the governed roster versions (a running silo
catches up from the version it pins) and ``GetRevocationList`` the CA-signed CRL the coordinator enforces; silos
verify both against their own pins, so the coordinator can withhold them but not forge them. Statements are the silos' signed views of the log (DESIGN 7,
fork detection); the coordinator keeps each silo's latest in memory and refuses any not signed by the
caller's roster key, so it can withhold statements but not forge them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audits import Ledger, LedgerError
from audits.witness import WitnessStatement, statement_payload
from coordinator.errors import (
    InvalidInput,
    NotFound,
)
from coordinator.pki import Revocations
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.server.base import MAX_ENTRIES_PER_CALL, R, ServicerBase


class AuditServicer(ServicerBase, pb_grpc.AuditServicer):
    """Access to the audit ledger for roster members (live monitoring, checkpoint witnessing, statements)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statements: dict[str, pb.WitnessStatement] = {}
        self._statements_lock = threading.Lock()

    def _ledger(self, context: grpc.ServicerContext) -> Ledger:
        """The ledger served to this caller (one ledger; a seam for tests of a forking coordinator)."""
        return self._rounds.audit.ledger

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
            checkpoint = self._ledger(context).latest_checkpoint()
            if checkpoint is None:
                raise NotFound("no checkpoint has been signed yet")
            return pb.Checkpoint(note=checkpoint.text, size=checkpoint.size)

        return self._ledger_call(context, request.federation, run)

    def GetEntries(self, request: pb.EntriesRequest, context: grpc.ServicerContext) -> pb.Entries:
        def run() -> pb.Entries:
            ledger = self._ledger(context)
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
            ledger = self._ledger(context)
            return pb.Proof(hashes=ledger.inclusion_proof(request.index, request.size))

        return self._ledger_call(context, request.federation, run)

    def GetConsistencyProof(
        self, request: pb.ConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.Proof:
        def run() -> pb.Proof:
            ledger = self._ledger(context)
            return pb.Proof(hashes=ledger.consistency_proof(request.old_size, request.new_size))

        return self._ledger_call(context, request.federation, run)

    def PublishStatement(
        self, request: pb.WitnessStatement, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            statement = WitnessStatement(
                request.federation, silo, request.note, bytes(request.signature)
            )
            try:
                Ed25519PublicKey.from_public_bytes(self._rounds.roster.key(silo)).verify(
                    statement.signature,
                    statement_payload(statement.federation, silo, statement.note),
                )
            except (InvalidSignature, ValueError) as exc:
                raise InvalidInput(f"the statement is not signed by {silo}'s roster key") from exc
            stored = pb.WitnessStatement()
            stored.CopyFrom(request)
            with self._statements_lock:
                self._statements[silo] = stored
            return pb.Ack()

        return self._call(context, run)

    def GetStatements(
        self, request: pb.StatementsRequest, context: grpc.ServicerContext
    ) -> pb.Statements:
        def run() -> pb.Statements:
            with self._statements_lock:
                statements = [self._statements[s] for s in sorted(self._statements)]
            return pb.Statements(statements=statements)

        return self._ledger_call(context, request.federation, run)

    def GetRoster(
        self, request: pb.RosterRequest, context: grpc.ServicerContext
    ) -> pb.RosterVersions:
        def run() -> pb.RosterVersions:
            governance = self._rounds.governance
            if governance is None:
                return pb.RosterVersions()
            return pb.RosterVersions(
                versions=[v.dumps() for v in governance.chain(since=request.since)]
            )

        return self._ledger_call(context, request.federation, run)

    def GetRevocationList(
        self, request: pb.RevocationListRequest, context: grpc.ServicerContext
    ) -> pb.RevocationList:
        def run() -> pb.RevocationList:
            revoked = self._revoked
            pem = revoked.current_pem() if isinstance(revoked, Revocations) else b""
            return pb.RevocationList(crl=pem, certificates=self._rounds.certificates)

        return self._ledger_call(context, request.federation, run)
