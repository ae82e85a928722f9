"""Masking mode at the gRPC edge: the thin ``Federation`` servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, cast

import grpc

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, TlsFiles
from coordinator.config import LimitsConfig, ServeConfig
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.masking import MaskingRounds
from coordinator.rounds.roster import governed_roster
from coordinator.server.aio import AioCall, AioServer
from coordinator.server.app import bind_server, revocations, tls_files
from coordinator.server.base import (
    ServicerBase,
    StreamHeader,
    _prepend,
    acked,
    drain_chunks,
    drain_chunks_async,
    refuse_empty,
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

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        def run(silo: str) -> pb.JoinResponse:
            answer = pb.JoinResponse(**self._joined(request.federation, silo))
            # the verified leaf of the caller's handshake: silos check their peers against their own CRL
            auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
            self._masking.saw_certificate(silo, b"".join(auth.get("x509_pem_cert") or ()))
            return answer

        return self._serve(context, request, run)

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        def run(_: str) -> pb.RoundInfo:
            view = self._rounds.view(after=request.after, wait=self._wait(request.wait_seconds))
            info = pb.RoundInfo(
                state=pb.ROUND_STATE_FINISHED if view.finished else pb.ROUND_STATE_OPEN,
                stage=view.stage.value,
                rounds=view.rounds,
                stage_deadline_unix=view.stage_deadline,
                roster_fingerprint=view.roster_fingerprint,
            )
            config_to_pb(view.config, info)
            if self._masking.silo_dp_plan is not None:
                info.silo_dp.CopyFrom(plan_to_pb(self._masking.silo_dp_plan))
            return info

        return self._serve(context, request, run, claimed=None)

    def AdvertiseKeys(
        self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        ad = request.advertisement
        return self._serve(
            context,
            request,
            acked(
                lambda silo: self._masking.advertise(silo, request.round, advertisement_from_pb(ad))
            ),
            claimed=ad.silo,
        )

    def GetAdvertisements(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.AdvertisementSet:
        wait = self._wait(request.wait_seconds)
        return self._serve(
            context,
            request,
            lambda _: pb.AdvertisementSet(
                advertisements=map(
                    advertisement_to_pb, self._masking.advertisements(request.round, wait)
                )
            ),
        )

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        return self._serve(
            context,
            request,
            acked(
                lambda silo: self._masking.share_keys(
                    silo, request.round, share_keys_from_pb(request)
                )
            ),
            claimed=request.sender,
        )

    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        wait = self._wait(request.wait_seconds)
        return self._serve(
            context,
            request,
            lambda silo: pb.Inbox(
                shares=map(share_to_pb, self._masking.inbox(silo, request.round, wait))
            ),
        )

    def UploadMaskedInput(
        self, request_iterator: Iterable[pb.MaskedChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        chunks = iter(request_iterator)
        pending = [next(chunks, None)]
        first = pending[0]
        if first is None:
            return self._call(context, refuse_empty)
        header = StreamHeader(first.federation, first.silo)
        round_, federation = first.round, first.federation
        attestation = bytes(first.attestation)
        signature = bytes(first.attestation_signature)
        # from here on only ``pending`` holds the first chunk, until drain_chunks takes it
        del first

        def run(silo: str) -> pb.Ack:
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

        return self._serve(context, header, run)

    async def aio_UploadMaskedInput(
        self, chunks: AsyncIterator[pb.MaskedChunk], call: AioCall
    ) -> pb.Ack:
        """:meth:`UploadMaskedInput` on the asyncio server: read with ``async for``, each chunk folded in a
        worker, so no thread waits on the network."""
        first = await call.receive(chunks)
        if first is None:
            return await call.run(lambda ctx: self._call(ctx, refuse_empty))
        header = StreamHeader(first.federation, first.silo)
        round_ = first.round
        attestation = bytes(first.attestation)
        signature = bytes(first.attestation_signature)
        opened = await call.run(
            lambda ctx: self._serve(
                ctx,
                header,
                lambda silo: (
                    silo,
                    self._masking.upload(
                        silo, round_, attestation=attestation, signature=signature
                    ),
                ),
            )
        )
        silo, upload = opened
        try:

            async def add(chunk: pb.MaskedChunk) -> None:
                await call.run(
                    lambda ctx: self._call(
                        ctx, lambda: upload.add(chunk.offset, u32_view(chunk.values))
                    )
                )

            async def finish() -> None:
                await call.run(lambda ctx: self._call(ctx, upload.finish))

            await drain_chunks_async(first, call, chunks, silo, add, finish)
            return pb.Ack()
        finally:
            await call.run(lambda _: upload.__exit__(None, None, None))

    def GetSurvivors(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.SurvivorSet:
        wait = self._wait(request.wait_seconds)
        return self._serve(
            context,
            request,
            lambda _: pb.SurvivorSet(survivors=self._masking.survivors(request.round, wait)),
        )

    def SignSurvivors(
        self, request: pb.SignSurvivorsRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        signature = bytes(request.signature)
        return self._serve(
            context,
            request,
            acked(
                lambda silo: self._masking.sign_survivors(
                    silo, request.round, SurvivorSignature(silo, signature)
                )
            ),
        )

    def GetUnmaskRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.UnmaskRequest:
        wait = self._wait(request.wait_seconds)
        return self._serve(
            context,
            request,
            lambda _: unmask_request_to_pb(self._masking.unmask_request(request.round, wait)),
        )

    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        return self._serve(
            context,
            request,
            acked(
                lambda silo: self._masking.unmask(
                    silo, request.round, unmask_response_from_pb(request)
                )
            ),
        )


def create_server(
    rounds: MaskingRounds,
    address: str,
    *,
    tls: TlsFiles | None,
    revoked: Iterable[str] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    insecure_debug_no_tls: bool = False,
    limits: LimitsConfig | None = None,
) -> tuple[AioServer, int]:
    """Build (without starting) the masking-mode gRPC server; returns it and the bound port (see
    :func:`~coordinator.server.app.bind_server`)."""

    def add(server: Any, shared: dict[str, Any]) -> str:
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
        limits=limits,
    )


def build(config: ServeConfig, **driver: Any) -> tuple[MaskingRounds, AioServer, int]:
    """The masking-mode driver and its server for ``secagg serve`` (the registry's ``server`` plug-in)."""
    rounds = MaskingRounds(**driver, governance=governed_roster(config))
    server, port = create_server(
        rounds,
        config.listen,
        tls=tls_files(config.tls),
        revoked=revocations(config),
        max_message_bytes=config.max_message_bytes,
        insecure_debug_no_tls=config.insecure_debug_no_tls,
        limits=config.limits,
    )
    return rounds, server, port
