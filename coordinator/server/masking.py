"""Masking mode at the gRPC edge: the thin ``Federation`` servicer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from coordinator.common import RoundStatus
from coordinator.errors import (
    InvalidInput,
)
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.server.base import (
    MAX_WAIT_SECONDS,
    _prepend,
    _Servicer,
    drain_chunks,
    model_chunks,
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


class FederationServicer(_Servicer, pb_grpc.FederationServicer):
    """Thin adapter from gRPC calls to the round service."""

    @staticmethod
    def _wait(seconds: float) -> float:
        return max(0.0, min(seconds, MAX_WAIT_SECONDS))

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
            if self._rounds.silo_dp_plan is not None:
                info.silo_dp.CopyFrom(plan_to_pb(self._rounds.silo_dp_plan))
            return info

        return self._call(context, run)

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        def run() -> tuple[bytes, bytes]:
            self._caller(context)
            self._federation(request.federation)
            return self._rounds.model_bytes(request.round)

        data, digest = self._call(context, run)
        yield from model_chunks(data, digest, self._max_message_bytes)

    def AdvertiseKeys(
        self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.advertisement.silo)
            self._federation(request.federation)
            self._rounds.advertise(
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
            ads = self._rounds.advertisements(request.round, self._wait(request.wait_seconds))
            return pb.AdvertisementSet(advertisements=[advertisement_to_pb(a) for a in ads])

        return self._call(context, run)

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.sender)
            self._federation(request.federation)
            self._rounds.share_keys(silo, request.round, share_keys_from_pb(request))
            return pb.Ack()

        return self._call(context, run)

    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        def run() -> pb.Inbox:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            shares = self._rounds.inbox(silo, request.round, self._wait(request.wait_seconds))
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
            with self._rounds.upload(
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
                    self._rounds.survivors(request.round, self._wait(request.wait_seconds))
                )
            )

        return self._call(context, run)

    def SignSurvivors(
        self, request: pb.SignSurvivorsRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._rounds.sign_survivors(
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
                self._rounds.unmask_request(request.round, self._wait(request.wait_seconds))
            )

        return self._call(context, run)

    def Unmask(self, request: pb.UnmaskShares, context: grpc.ServicerContext) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._rounds.unmask(silo, request.round, unmask_response_from_pb(request))
            return pb.Ack()

        return self._call(context, run)

    def GetResult(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        def run() -> pb.RoundResult:
            self._caller(context, request.silo)
            self._federation(request.federation)
            outcome = self._rounds.result(request.round, self._wait(request.wait_seconds))
            state = {
                RoundStatus.COMPLETED: pb.ROUND_STATE_COMPLETED,
                RoundStatus.ABORTED: pb.ROUND_STATE_ABORTED,
            }.get(outcome.status, pb.ROUND_STATE_OPEN)
            return pb.RoundResult(
                round=outcome.round,
                state=state,
                survivors=list(outcome.survivors),
                dropped=list(outcome.dropped),
                new_model_hash=outcome.new_model_hash,
                reason=outcome.reason,
            )

        return self._call(context, run)
