"""Paillier mode at the gRPC edge: the thin servicer, server construction and the running coordinator."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from audits import CheckpointSigner
from coordinator._malloc import tune_allocator
from coordinator.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    RoundStatus,
    TlsFiles,
    ledger_origin,
)
from coordinator.config import ServeConfig
from coordinator.errors import (
    InvalidInput,
)
from coordinator.pki import load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.proto.v1 import paillier_pb2 as ppb
from coordinator.proto.v1 import paillier_pb2_grpc as ppb_grpc
from coordinator.rounds.audit import AuditTrail
from coordinator.rounds.driver import FederationSettings, RoundService
from coordinator.rounds.paillier import PaillierRoundService
from coordinator.server.app import server_options
from coordinator.server.audit import AuditServicer
from coordinator.server.base import MAX_WAIT_SECONDS, _Servicer, drain_upload, model_chunks
from coordinator.server.interceptors import _DecodeGuard
from coordinator.store import SQLiteStore
from coordinator.wire.paillier import (
    commitment_from_pb,
    openings_to_pb,
    partial_from_pb,
    request_to_pb,
)
from secagg.hazmat.paillier import ThresholdPublicKey
from secagg.paillier import (
    DecryptionRequest,
    SpotCheckChallenge,
    SpotCheckResponse,
)

log = logging.getLogger(__name__)


_STAGE_STATE = {
    RoundStatus.COMPLETED: pb.ROUND_STATE_COMPLETED,
    RoundStatus.ABORTED: pb.ROUND_STATE_ABORTED,
}


# ----------------------------------------------------------------------------------------------------------------
# Servicer


class PaillierServicer(_Servicer, ppb_grpc.PaillierFederationServicer):
    """Thin adapter from gRPC calls to :class:`PaillierRoundService` (identity and errors from ``_Servicer``)."""

    def __init__(
        self,
        service: PaillierRoundService,
        *,
        revoked: frozenset[str] = frozenset(),
        insecure: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        # _Servicer reads only ``settings.federation`` and ``roster`` from the service it is given
        super().__init__(
            cast(RoundService, service),
            revoked=revoked,
            insecure=insecure,
            max_message_bytes=max_message_bytes,
        )
        self._service = service

    @staticmethod
    def _wait(seconds: float) -> float:
        return max(0.0, min(seconds, MAX_WAIT_SECONDS))

    @property
    def _width(self) -> int:
        return self._service.public_key.ciphertext_bytes

    def Join(
        self, request: pb.JoinRequest, context: grpc.ServicerContext
    ) -> ppb.PaillierJoinResponse:
        def run() -> ppb.PaillierJoinResponse:
            self._caller(context, request.silo)
            self._federation(request.federation)
            s = self._service
            return ppb.PaillierJoinResponse(
                federation=request.federation,
                roster_fingerprint=s.roster.fingerprint(),
                rounds=s.settings.rounds,
                current_round=len(s.store.rounds(request.federation)),
                max_message_bytes=self._max_message_bytes,
                key_fingerprint=s.public_key.fingerprint(),
                threshold=s.public_key.threshold,
            )

        return self._call(context, run)

    def GetRound(
        self, request: pb.GetRoundRequest, context: grpc.ServicerContext
    ) -> ppb.PaillierRoundInfo:
        def run() -> ppb.PaillierRoundInfo:
            self._caller(context)
            self._federation(request.federation)
            view = self._service.view(after=request.after, wait=self._wait(request.wait_seconds))
            s, c = self._service.settings, view.config
            return ppb.PaillierRoundInfo(
                federation=c.federation_id,
                round=c.round_number,
                state=pb.ROUND_STATE_FINISHED if view.finished else pb.ROUND_STATE_OPEN,
                stage=view.stage.value,
                model_hash=view.model_hash,
                vector_length=c.vector_length,
                quantization=pb.Quantization(
                    clip=s.clip, bits=c.value_bits, max_silos=c.max_contributors
                ),
                n=len(self._service.roster.members),
                threshold=self._service.public_key.threshold,
                collusion=s.collusion,
                min_cohort=c.min_cohort,
                rounds=view.rounds,
                stage_deadline_unix=view.stage_deadline,
                session_id=c.session_id,
                key_fingerprint=self._service.public_key.fingerprint(),
                spot_checks=c.spot_checks,
                chunk_ciphertexts=c.chunk_ciphertexts,
                session_nonce=view.session_nonce,
            )

        return self._call(context, run)

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        def run() -> tuple[bytes, bytes]:
            self._caller(context)
            self._federation(request.federation)
            return self._service.model_bytes(request.round)

        data, digest = self._call(context, run)
        yield from model_chunks(data, digest, self._max_message_bytes)

    def UploadContribution(
        self, request_iterator: Iterable[ppb.ContributionChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            chunks = iter(request_iterator)
            first = next(chunks, None)
            if first is None:
                raise InvalidInput("empty upload")
            silo = self._caller(context, first.silo)
            self._federation(first.federation)
            if not first.HasField("commitment"):
                raise InvalidInput("the first chunk must carry the signed commitment")
            with self._service.contribution(
                silo,
                first.round,
                commitment_from_pb(first.commitment),
                attestation=bytes(first.attestation),
                signature=bytes(first.attestation_signature),
            ) as upload:
                drain_upload(
                    first,
                    chunks,
                    silo,
                    lambda c: upload.add(int(c.chunk_index), bytes(c.ciphertexts)),
                    upload.finish,
                )
            return pb.Ack()

        return self._call(context, run)

    def GetDecryptionRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[ppb.DecryptionRequestPart]:
        def run() -> tuple[DecryptionRequest, int]:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            found = self._service.decryption_request(
                silo, request.round, self._wait(request.wait_seconds)
            )
            return found, self._service.chunk_ciphertexts

        decryption_request, per_part = self._call(context, run)
        yield from request_to_pb(decryption_request, width=self._width, per_part=per_part)

    def OpenSpotChecks(
        self, request: ppb.SpotCheckChallenge, context: grpc.ServicerContext
    ) -> Iterator[ppb.SpotCheckOpenings]:
        def run() -> SpotCheckResponse:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            challenge = SpotCheckChallenge(
                request_digest=bytes(request.request_digest),
                positions=tuple(int(p) for p in request.positions),
            )
            return self._service.open_spot_checks(silo, request.round, challenge)

        response = self._call(context, run)
        yield from openings_to_pb(response, budget=self._max_message_bytes // 2)

    def SubmitPartialDecryption(
        self, request_iterator: Iterable[ppb.PartialDecryptionPart], context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            parts = iter(request_iterator)
            first = next(parts, None)
            if first is None:
                raise InvalidInput("empty partial decryption")
            silo = self._caller(context, first.silo)
            self._federation(first.federation)
            limit = (
                self._service.settings.vector_length
            )  # >= ciphertexts per silo; exact check below
            message = partial_from_pb(first, parts, width=self._width, limit=limit)
            self._service.partial_decryption(silo, first.round, message)
            return pb.Ack()

        return self._call(context, run)

    def RefuseDecryption(
        self, request: ppb.DecryptionRefusal, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._service.refuse(silo, request.round, bytes(request.request_digest), request.reason)
            return pb.Ack()

        return self._call(context, run)

    def GetResult(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        def run() -> pb.RoundResult:
            self._caller(context, request.silo)
            self._federation(request.federation)
            outcome = self._service.result(request.round, self._wait(request.wait_seconds))
            return pb.RoundResult(
                round=outcome.round,
                state=_STAGE_STATE.get(outcome.status, pb.ROUND_STATE_OPEN),
                survivors=list(outcome.survivors),
                dropped=list(outcome.dropped),
                new_model_hash=outcome.new_model_hash,
                reason=outcome.reason,
            )

        return self._call(context, run)


def create_paillier_server(
    service: PaillierRoundService,
    address: str,
    *,
    tls: TlsFiles,
    revoked: Iterable[str] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 64,
    servicer: PaillierServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Build (without starting) the Paillier-mode gRPC server; returns it and the bound port.

    mTLS is mandatory (no insecure variant): the server requires a client certificate chained to the
    consortium CA. It also serves the read-only ``Audit`` service (for silos witnessing checkpoints) and
    standard health checking. ``servicer`` replaces the default one (tests substitute a lying coordinator).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=server_options(max_message_bytes),  # the masking-mode server's options (see there)
        interceptors=[_DecodeGuard()],
    )
    refused = frozenset(revoked)
    ppb_grpc.add_PaillierFederationServicer_to_server(
        servicer or PaillierServicer(service, revoked=refused, max_message_bytes=max_message_bytes),
        server,
    )
    pb_grpc.add_AuditServicer_to_server(
        AuditServicer(
            cast(RoundService, service),  # reads only ``audit`` and ``settings.federation``
            revoked=refused,
            insecure=False,
            max_message_bytes=max_message_bytes,
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(
        "coordinator.proto.v1.PaillierFederation", health_pb2.HealthCheckResponse.SERVING
    )
    health_servicer.set("coordinator.proto.v1.Audit", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port


# ----------------------------------------------------------------------------------------------------------------
# Runner


@dataclass
class PaillierCoordinator:
    """A running Paillier-mode coordinator: the round service, the gRPC server, its port and its store."""

    service: PaillierRoundService
    server: grpc.Server
    port: int
    store: SQLiteStore

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and close the store and the ledger."""
        self.service.stop()
        self.server.stop(grace).wait()
        self.store.close()
        self.service.audit.close()


def start_paillier_coordinator(
    config: ServeConfig, paillier_public_key: Path
) -> PaillierCoordinator:
    """Build and start the Paillier-mode coordinator described by ``config`` (rounds begin at once).

    The federation's threshold is the key's ``t`` (``[rounds] threshold`` is the masking-mode Shamir threshold
    and is not used here). ``insecure_debug_no_tls`` is refused: Paillier mode always uses mTLS.

    Raises:
        ValueError: the configuration asks for no TLS.
    """
    if config.tls is None:
        raise ValueError("Paillier mode requires mTLS; insecure_debug_no_tls is not supported")
    tune_allocator()  # before the gRPC server's threads exist (see coordinator._malloc)
    public_key = ThresholdPublicKey.from_json(paillier_public_key.read_bytes())
    roster = config.load_roster()
    r = config.rounds
    settings = FederationSettings(
        federation=config.federation,
        rounds=r.count,
        vector_length=config.model.size,
        clip=r.clip,
        bits=r.bits,
        threshold=public_key.threshold,
        collusion=r.collusion,
        min_cohort=r.min_cohort,
        deadlines=config.deadlines,
        privacy=config.privacy,
    )
    if config.model.initial is not None:
        initial = np.load(config.model.initial, allow_pickle=False).astype(np.float32)
    else:
        initial = np.zeros(config.model.size, dtype=np.float32)
    store = SQLiteStore(config.storage)
    origin = ledger_origin(config.federation)
    signer = CheckpointSigner(load_ed25519_private(config.audit_key), key_name=origin)
    audit = AuditTrail.open(config.storage, federation=config.federation, signer=signer)
    service = PaillierRoundService(
        settings=settings,
        roster=roster,
        store=store,
        initial_model=initial,
        audit=audit,
        public_key=public_key,
        max_message_bytes=config.max_message_bytes,
    )
    tls = TlsFiles(
        config.tls.ca.read_bytes(), config.tls.cert.read_bytes(), config.tls.key.read_bytes()
    )
    server, port = create_paillier_server(
        service,
        config.listen,
        tls=tls,
        revoked=config.revoked_certificates,
        max_message_bytes=config.max_message_bytes,
    )
    server.start()
    service.start()
    return PaillierCoordinator(service, server, port, store)
