"""Masking mode at the gRPC edge: the thin ``Federation`` servicer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, TlsFiles
from coordinator.config import ServeConfig
from coordinator.errors import (
    InvalidInput,
)
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.masking import MaskingRounds
from coordinator.server.app import bind_server, tls_files
from coordinator.server.base import (
    ServicerBase,
    _prepend,
    drain_chunks,
    u32_view,
)
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    config_to_pb,
    share_keys_from_pb,
    share_to_pb,
    unmask_request_to_pb,
    unmask_response_from_pb,
)
from coordinator.wire.silo_dp import plan_to_pb
from secagg import SurvivorSignature


class FederationServicer(ServicerBase, pb_grpc.FederationServicer):
    """Thin adapter from gRPC calls to :class:`~coordinator.rounds.masking.MaskingRounds`."""

    def __init__(self, rounds: MaskingRounds, **options: Any) -> None:
        super().__init__(rounds, **options)
        self._masking = rounds

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
            if self._masking.silo_dp_plan is not None:
                info.silo_dp.CopyFrom(plan_to_pb(self._masking.silo_dp_plan))
            return info

        return self._call(context, run)

    def AdvertiseKeys(
        self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.advertisement.silo)
            self._federation(request.federation)
            self._masking.advertise(
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
            ads = self._masking.advertisements(request.round, self._wait(request.wait_seconds))
            return pb.AdvertisementSet(advertisements=[advertisement_to_pb(a) for a in ads])

        return self._call(context, run)

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.sender)
            self._federation(request.federation)
            self._masking.share_keys(silo, request.round, share_keys_from_pb(request))
            return pb.Ack()

        return self._call(context, run)

    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        def run() -> pb.Inbox:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            shares = self._masking.inbox(silo, request.round, self._wait(request.wait_seconds))
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
            with self._masking.upload(
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
                    self._masking.survivors(request.round, self._wait(request.wait_seconds))
                )
            )

        return self._call(context, run)

    def SignSurvivors(
        self, request: pb.SignSurvivorsRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._masking.sign_survivors(
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
                self._masking.unmask_request(request.round, self._wait(request.wait_seconds))
            )

        return self._call(context, run)

    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._masking.unmask(silo, request.round, unmask_response_from_pb(request))
            return pb.Ack()

        return self._call(context, run)


def create_server(
    rounds: MaskingRounds,
    address: str,
    *,
    tls: TlsFiles | None,
    revoked: Iterable[str] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    insecure_debug_no_tls: bool = False,
    max_workers: int = 64,
) -> tuple[grpc.Server, int]:
    """Build (without starting) the masking-mode gRPC server; returns it and the bound port (see
    :func:`~coordinator.server.app.bind_server`)."""

    def add(server: grpc.Server, shared: dict[str, Any]) -> str:
        pb_grpc.add_FederationServicer_to_server(FederationServicer(rounds, **shared), server)
        return "coordinator.proto.v1.Federation"

    return bind_server(
        rounds,
        address,
        add,
        tls=tls,
        revoked=revoked,
        max_message_bytes=max_message_bytes,
        insecure_debug_no_tls=insecure_debug_no_tls,
        max_workers=max_workers,
    )


def build(config: ServeConfig, **driver: Any) -> tuple[MaskingRounds, grpc.Server, int]:
    """The masking-mode driver and its server for ``secagg serve`` (the registry's ``server`` plug-in)."""
    rounds = MaskingRounds(**driver)
    server, port = create_server(
        rounds,
        config.listen,
        tls=tls_files(config.tls),
        revoked=config.revoked_certificates,
        max_message_bytes=config.max_message_bytes,
        insecure_debug_no_tls=config.insecure_debug_no_tls,
    )
    return rounds, server, port
