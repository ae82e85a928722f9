"""Paillier mode at the gRPC edge: the thin servicer, server construction and the running coordinator."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import grpc

from coordinator.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    TlsFiles,
)
from coordinator.config import LimitsConfig, ServeConfig
from coordinator.errors import (
    InvalidInput,
)
from coordinator.pki.paillier import load_signed_public_key
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import paillier_pb2 as ppb
from coordinator.proto.v1 import paillier_pb2_grpc as ppb_grpc
from coordinator.rounds.paillier import PaillierRounds
from coordinator.server.aio import AioCall, AioServer
from coordinator.server.app import bind_server, revocations, tls_files
from coordinator.server.base import (
    ServicerBase,
    acked,
    drain_chunks_async,
    drain_upload,
    refuse_empty,
)
from coordinator.wire.paillier import (
    challenge_from_pb,
    commitment_from_pb,
    fold_from_pb,
    fold_requests_to_pb,
    openings_to_pb,
    partial_from_pb,
    request_to_pb,
)

log = logging.getLogger(__name__)


class PaillierServicer(ServicerBase, ppb_grpc.PaillierFederationServicer):
    """Thin adapter from gRPC calls to :class:`PaillierRounds` (identity and errors from ``ServicerBase``)."""

    def __init__(
        self,
        service: PaillierRounds,
        *,
        revoked: frozenset[str] = frozenset(),
        insecure: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        # ServicerBase reads only ``settings.federation`` and ``roster`` from the service it is given
        super().__init__(
            service,
            revoked=revoked,
            insecure=insecure,
            max_message_bytes=max_message_bytes,
        )
        self._service = service

    @property
    def _width(self) -> int:
        return self._service.public_key.ciphertext_bytes

    def Join(
        self, request: pb.JoinRequest, context: grpc.ServicerContext
    ) -> ppb.PaillierJoinResponse:
        key = self._service.public_key
        return self._serve(
            context,
            request,
            lambda silo: ppb.PaillierJoinResponse(
                **self._joined(request.federation, silo),
                key_fingerprint=key.fingerprint(),
                threshold=key.threshold,
            ),
        )

    def GetRound(
        self, request: pb.GetRoundRequest, context: grpc.ServicerContext
    ) -> ppb.PaillierRoundInfo:
        def run(_: str) -> ppb.PaillierRoundInfo:
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

        return self._serve(context, request, run, claimed=None)

    def UploadContribution(
        self, request_iterator: Iterable[ppb.ContributionChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        chunks = iter(request_iterator)
        first = next(chunks, None)
        if first is None:
            return self._call(context, refuse_empty)

        def run(silo: str) -> pb.Ack:
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

        return self._serve(context, first, run)

    async def aio_UploadContribution(
        self, chunks: AsyncIterator[ppb.ContributionChunk], call: AioCall
    ) -> pb.Ack:
        """:meth:`UploadContribution` on the asyncio server: read with ``async for``, each chunk folded in a
        worker, so no thread waits on the network."""
        first = await call.receive(chunks)
        if first is None:
            return await call.run(lambda ctx: self._call(ctx, refuse_empty))

        def open_upload(silo: str) -> tuple[str, Any]:
            if not first.HasField("commitment"):
                raise InvalidInput("the first chunk must carry the signed commitment")
            return silo, self._service.contribution(
                silo,
                first.round,
                commitment_from_pb(first.commitment),
                attestation=bytes(first.attestation),
                signature=bytes(first.attestation_signature),
            )

        silo, upload = await call.run(lambda ctx: self._serve(ctx, first, open_upload))
        try:

            async def add(chunk: ppb.ContributionChunk) -> None:
                await call.run(
                    lambda ctx: self._call(
                        ctx, lambda: upload.add(int(chunk.chunk_index), bytes(chunk.ciphertexts))
                    )
                )

            async def finish() -> None:
                await call.run(lambda ctx: self._call(ctx, upload.finish))

            await drain_chunks_async(first, call, chunks, silo, add, finish)
            return pb.Ack()
        finally:
            await call.run(lambda _: upload.__exit__(None, None, None))

    @property
    def buffered_stream_bytes(self) -> int:
        """What the asyncio server reads of ``SubmitPartialDecryption`` before handing it over: a partial
        decryption of the whole vector (one ciphertext-width value per coordinate) and its framing."""
        return self._service.settings.vector_length * self._width * 2 + (1 << 20)

    def GetDecryptionRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[ppb.DecryptionRequestPart]:
        wait = self._wait(request.wait_seconds)
        found = self._serve(
            context,
            request,
            lambda silo: self._service.decryption_request(silo, request.round, wait),
        )
        yield from request_to_pb(found, width=self._width, per_part=self._service.chunk_ciphertexts)

    def PostChallenge(
        self, request: ppb.SpotCheckChallenge, context: grpc.ServicerContext
    ) -> pb.Ack:
        challenge = challenge_from_pb(request)
        return self._serve(
            context,
            request,
            acked(lambda silo: self._service.challenge(silo, request.round, challenge)),
        )

    def GetFoldRequests(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> ppb.FoldRequests:
        wait = self._wait(request.wait_seconds)

        def run(silo: str) -> ppb.FoldRequests:
            digest, requests = self._service.fold_requests(silo, request.round, wait)
            return fold_requests_to_pb(digest, requests)

        return self._serve(context, request, run)

    def SubmitFolds(self, request: ppb.FoldAnswers, context: grpc.ServicerContext) -> pb.Ack:
        def run(silo: str) -> None:
            answers = [fold_from_pb(a) for a in request.answers]
            self._service.folds(silo, request.round, answers)

        return self._serve(context, request, acked(run))

    def OpenSpotChecks(
        self, request: ppb.SpotCheckChallenge, context: grpc.ServicerContext
    ) -> Iterator[ppb.SpotCheckOpenings]:
        challenge = challenge_from_pb(request)
        wait = self._wait(request.wait_seconds)
        response = self._serve(
            context,
            request,
            lambda silo: self._service.open_spot_checks(silo, request.round, challenge, wait),
        )
        yield from openings_to_pb(response, budget=self._max_message_bytes // 2)

    def SubmitPartialDecryption(
        self, request_iterator: Iterable[ppb.PartialDecryptionPart], context: grpc.ServicerContext
    ) -> pb.Ack:
        parts = iter(request_iterator)
        first = next(parts, None)
        if first is None:
            return self._call(context, refuse_empty)
        # the settings' vector length bounds the ciphertexts per silo; the exact count is checked later
        limit = self._service.settings.vector_length

        def run(silo: str) -> None:
            message = partial_from_pb(first, parts, width=self._width, limit=limit)
            self._service.partial_decryption(silo, first.round, message)

        return self._serve(context, first, acked(run))

    def RefuseDecryption(
        self, request: ppb.DecryptionRefusal, context: grpc.ServicerContext
    ) -> pb.Ack:
        def refuse(silo: str) -> None:
            digest = bytes(request.request_digest)
            self._service.refuse(silo, request.round, digest, request.reason)

        return self._serve(context, request, acked(refuse))


def create_paillier_server(
    service: PaillierRounds,
    address: str,
    *,
    tls: TlsFiles,
    revoked: Iterable[str] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    limits: LimitsConfig | None = None,
    servicer: PaillierServicer | None = None,
) -> tuple[AioServer, int]:
    """Build (without starting) the Paillier-mode gRPC server; returns it and the bound port.

    mTLS is mandatory (no insecure variant). ``servicer`` replaces the default one (tests substitute a lying
    coordinator). See :func:`~coordinator.server.app.bind_server`.
    """

    def add(server: Any, shared: dict[str, Any]) -> str:
        ppb_grpc.add_PaillierFederationServicer_to_server(
            servicer or PaillierServicer(service, **shared), server
        )
        return "coordinator.proto.v1.PaillierFederation"

    return bind_server(
        service,
        address,
        add,
        tls=tls,
        revoked=revoked,
        max_message_bytes=max_message_bytes,
        limits=limits,
    )


def build(config: ServeConfig, **driver: Any) -> tuple[PaillierRounds, AioServer, int]:
    """The Paillier-mode driver and its server for ``secagg serve`` (the registry's ``server`` plug-in).

    The federation's threshold is the key's ``t`` (``[rounds] threshold`` is the masking-mode Shamir threshold
    and is not used here). ``insecure_debug_no_tls`` is refused: Paillier mode always uses mTLS.

    Raises:
        ValueError: the configuration asks for no TLS.
        PKIError: the joint public key is not signed by the consortium key for this federation.
    """
    tls = tls_files(config.tls)
    if tls is None or config.paillier_public_key is None:
        raise ValueError("Paillier mode requires mTLS; insecure_debug_no_tls is not supported")
    # the coordinator, too, serves only the key the consortium signed (silos check it again at load)
    public_key = load_signed_public_key(
        config.paillier_public_key,
        federation=config.federation,
        consortium_key=config.consortium_public_key,
    )
    settings = dataclasses.replace(
        driver.pop("settings"), threshold=public_key.threshold, silo_dp=None
    )
    service = PaillierRounds(
        settings=settings,
        public_key=public_key,
        max_message_bytes=config.max_message_bytes,
        **driver,
    )
    server, port = create_paillier_server(
        service,
        config.listen,
        tls=tls,
        revoked=revocations(config),
        max_message_bytes=config.max_message_bytes,
        limits=config.limits,
    )
    return service, server, port
