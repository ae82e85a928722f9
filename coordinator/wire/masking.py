"""The only translation between protobuf wire types and the frozen dataclasses used everywhere else."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from coordinator.errors import InvalidInput
from coordinator.proto.v1 import coordinator_pb2 as pb
from secagg import (
    Advertisement,
    EncryptedShare,
    Quantizer,
    RoundConfig,
    ShareKeys,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.masking.messages import COMMITMENT_BYTES

__all__ = [
    "advertisement_from_pb",
    "advertisement_to_pb",
    "config_from_pb",
    "config_to_pb",
    "share_from_pb",
    "share_to_pb",
    "share_keys_from_pb",
    "u32_from_bytes",
    "unmask_request_from_pb",
    "unmask_request_to_pb",
    "unmask_response_from_pb",
    "unmask_response_to_pb",
]

_U32 = np.dtype("<u4")


def u32_from_bytes(data: bytes) -> npt.NDArray[np.uint32]:
    """Little-endian uint32 coordinates; refuses a length that is not a multiple of 4."""
    if len(data) % 4:
        raise InvalidInput("vector chunk length is not a multiple of 4 bytes")
    return np.frombuffer(data, dtype=_U32).astype(np.uint32)


def advertisement_to_pb(ad: Advertisement) -> pb.Advertisement:
    return pb.Advertisement(
        silo=ad.silo,
        enc_public=ad.enc_public,
        mask_public=ad.mask_public,
        signature=ad.signature,
        seed_commitment=ad.seed_commitment,
    )


def advertisement_from_pb(msg: pb.Advertisement) -> Advertisement:
    if len(msg.enc_public) != 32 or len(msg.mask_public) != 32 or len(msg.signature) != 64:
        raise InvalidInput("advertisement keys must be 32 bytes and the signature 64")
    if len(msg.seed_commitment) != COMMITMENT_BYTES:
        raise InvalidInput(f"advertisement seed commitment must be {COMMITMENT_BYTES} bytes")
    return Advertisement(
        msg.silo,
        bytes(msg.enc_public),
        bytes(msg.mask_public),
        bytes(msg.signature),
        seed_commitment=bytes(msg.seed_commitment),
    )


def share_to_pb(share: EncryptedShare) -> pb.EncryptedShare:
    return pb.EncryptedShare(
        sender=share.sender, recipient=share.recipient, ciphertext=share.ciphertext
    )


def share_from_pb(msg: pb.EncryptedShare) -> EncryptedShare:
    return EncryptedShare(msg.sender, msg.recipient, bytes(msg.ciphertext))


def share_keys_from_pb(msg: pb.ShareKeysRequest) -> ShareKeys:
    return ShareKeys(msg.sender, tuple(share_from_pb(s) for s in msg.shares))


def unmask_request_to_pb(request: UnmaskRequest) -> pb.UnmaskRequest:
    return pb.UnmaskRequest(
        survivors=list(request.survivors),
        dropped=list(request.dropped),
        signatures=[
            pb.SurvivorSignature(silo=s.silo, signature=s.signature) for s in request.signatures
        ],
    )


def unmask_request_from_pb(msg: pb.UnmaskRequest) -> UnmaskRequest:
    return UnmaskRequest(
        tuple(msg.survivors),
        tuple(msg.dropped),
        tuple(SurvivorSignature(s.silo, bytes(s.signature)) for s in msg.signatures),
    )


def unmask_response_to_pb(
    federation: str, round_: int, response: UnmaskResponse
) -> pb.UnmaskShares:
    return pb.UnmaskShares(
        federation=federation,
        round=round_,
        silo=response.silo,
        self_mask_shares=[pb.Share(peer=p, share=s) for p, s in response.self_mask_shares.items()],
        mask_key_shares=[pb.Share(peer=p, share=s) for p, s in response.mask_key_shares.items()],
    )


def unmask_response_from_pb(msg: pb.UnmaskShares) -> UnmaskResponse:
    def shares(items: list[pb.Share]) -> MappingProxyType[str, bytes]:
        out = {s.peer: bytes(s.share) for s in items}
        if len(out) != len(items):
            raise InvalidInput("repeated peer in unmask shares")
        return MappingProxyType(out)

    return UnmaskResponse(
        msg.silo, shares(list(msg.self_mask_shares)), shares(list(msg.mask_key_shares))
    )


def config_to_pb(config: RoundConfig, info: pb.RoundInfo) -> None:
    """Fill the round parameters of ``info`` from ``config``."""
    q = config.quantizer
    info.federation = config.federation
    info.round = config.round
    info.model_hash = config.model_hash
    info.vector_length = config.vector_length
    info.quantization.CopyFrom(pb.Quantization(clip=q.clip, bits=q.bits, max_silos=q.max_silos))
    info.n = config.n
    info.threshold = config.threshold
    info.collusion = config.collusion
    info.min_cohort = config.min_cohort
    info.graph_degree = config.graph_degree


def config_from_pb(info: pb.RoundInfo) -> RoundConfig:
    """The round parameters announced by the coordinator (validated by ``RoundConfig`` itself)."""
    q = info.quantization
    return RoundConfig(
        federation=info.federation,
        round=info.round,
        model_hash=bytes(info.model_hash),
        vector_length=info.vector_length,
        quantizer=Quantizer(clip=q.clip, bits=q.bits, max_silos=q.max_silos),
        n=info.n,
        threshold=info.threshold,
        collusion=info.collusion,
        min_cohort=info.min_cohort,
        graph_degree=info.graph_degree,
    )
