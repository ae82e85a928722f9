"""Bad input over the wire: each case gets its documented status (``ERROR_CATALOG``) and changes no state.

Three silos step through one round in lock-step (each ``ManualSilo`` call returns as soon as the stage it
waits on has closed). Silo ``a`` misbehaves at every stage before behaving; after each refusal the store must
be byte-for-byte unchanged, and at the end the round must release the exact sum of the honest updates, which
proves the refused input did not touch the in-memory running sum either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    share_to_pb,
    unmask_request_from_pb,
    unmask_response_to_pb,
)
from secagg import SecAggClient
from tests.e2e.harness import (
    Consortium,
    Coordinator,
    ManualSilo,
    exact,
    expected_model,
    integer_update,
    refused,
    running_coordinator,
    settings,
)

pytestmark = pytest.mark.e2e

LENGTH = 1000
MAX_MESSAGE = 64 * 1024
UNITS = {s: integer_update(20 + i, LENGTH) for i, s in enumerate("abc")}


def chunk(silo: ManualSilo, offset: int, values: bytes, *, last: bool) -> pb.MaskedChunk:
    return pb.MaskedChunk(
        federation=silo.federation,
        round=silo.round,
        silo=silo.silo,
        offset=offset,
        values=values,
        last=last,
    )


def stream(*chunks: pb.MaskedChunk) -> Iterator[pb.MaskedChunk]:
    yield from chunks


@pytest.fixture
def coord(trio: Consortium, tmp_path: Path) -> Iterator[Coordinator]:
    config = settings(n=3, length=LENGTH, threshold=2, min_cohort=3)
    with running_coordinator(
        trio, tmp_path / "c.db", config, max_message_bytes=MAX_MESSAGE
    ) as coordinator:
        yield coordinator


def test_every_bad_input_is_refused_and_the_round_still_completes(
    trio: Consortium, coord: Coordinator
) -> None:
    a, b, c = (ManualSilo(trio, s, coord.address) for s in trio.silos)
    config = a.open_round()
    assert config.round == 0

    # -- stage 1: advertisements ---------------------------------------------------------------------------
    assert a.client is not None
    honest = advertisement_to_pb(a.client.advertise())

    def advertise(ad: pb.Advertisement, *, federation: str = "fed", round_: int = 0) -> object:
        return a.stub.AdvertiseKeys(
            pb.AdvertiseKeysRequest(federation=federation, round=round_, advertisement=ad)
        )

    wrong_stage = pb.ShareKeysRequest(federation="fed", round=0, sender="a")
    refused(coord, grpc.StatusCode.FAILED_PRECONDITION, lambda: a.stub.ShareKeys(wrong_stage))
    refused(coord, grpc.StatusCode.NOT_FOUND, lambda: advertise(honest, federation="other"))
    refused(coord, grpc.StatusCode.NOT_FOUND, lambda: advertise(honest, round_=7))
    short_key = pb.Advertisement()
    short_key.CopyFrom(honest)
    short_key.enc_public = honest.enc_public[:31]
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: advertise(short_key))
    forged = pb.Advertisement()
    forged.CopyFrom(honest)
    forged.signature = bytes([honest.signature[0] ^ 1]) + honest.signature[1:]
    message = refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: advertise(forged))
    assert "does not verify" in message
    assert honest.signature.hex() not in message and forged.signature.hex() not in message
    # a correctly signed advertisement made for another round (a replay) does not verify for this one
    other_round = SecAggClient(
        silo="a",
        signing_key=trio.signing_key("a"),
        roster=trio.roster,
        config=type(config)(**{**config.__dict__, "round": 5}),
    )
    replay = advertisement_to_pb(other_round.advertise())
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: advertise(replay))
    oversized = pb.Advertisement()
    oversized.CopyFrom(honest)
    oversized.signature = bytes(MAX_MESSAGE + 1)
    refused(coord, grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: advertise(oversized))

    advertise(honest)
    refused(coord, grpc.StatusCode.ALREADY_EXISTS, lambda: advertise(honest))
    b.advertise()
    c.advertise()

    # -- stage 2: shares --------------------------------------------------------------------------------------
    ads = a.stub.GetAdvertisements(a.stage_request())
    shares = a.client.share_keys([advertisement_from_pb(x) for x in ads.advertisements])

    def share(items: list[pb.EncryptedShare]) -> object:
        return a.stub.ShareKeys(
            pb.ShareKeysRequest(federation="fed", round=0, sender="a", shares=items)
        )

    all_shares = [share_to_pb(s) for s in shares.shares]
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: share(all_shares[:1]))
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: share(all_shares + all_shares[:1]))
    share(all_shares)
    refused(coord, grpc.StatusCode.ALREADY_EXISTS, lambda: share(all_shares))
    b.share_keys()
    c.share_keys()

    # -- stage 3: masked input ---------------------------------------------------------------------------------
    masked = a.mask(exact(UNITS["a"])).astype("<u4")
    head, tail = masked[:600].tobytes(), masked[600:].tobytes()

    def upload(*chunks: pb.MaskedChunk) -> object:
        return a.stub.UploadMaskedInput(stream(*chunks))

    too_long = np.append(masked, np.uint32(7)).astype("<u4").tobytes()
    refused(
        coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: upload(chunk(a, 0, too_long, last=True))
    )
    # too long in the second chunk: the first one, already added to the running sum, is rolled back
    refused(
        coord,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: upload(chunk(a, 0, head, last=False), chunk(a, 600, tail + b"\0\0\0\0", last=True)),
    )
    refused(
        coord,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: upload(chunk(a, 0, head, last=False), chunk(a, 600, tail[:-4], last=True)),
    )
    refused(
        coord,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: upload(chunk(a, 0, head[:-1], last=True)),  # not a multiple of 4 bytes
    )
    refused(
        coord,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: upload(chunk(a, 0, head, last=False), chunk(a, 604, tail[4:], last=True)),  # a gap
    )
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: upload(chunk(a, 0, head, last=False)))
    refused(
        coord,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        lambda: upload(chunk(a, 0, head, last=False), chunk(a, 600, bytes(MAX_MESSAGE), last=True)),
    )
    other = chunk(a, 600, tail, last=True)
    other.round = 1
    refused(
        coord,
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: upload(chunk(a, 0, head, last=False), other),  # chunks must agree on the round
    )
    upload(chunk(a, 0, head, last=False), chunk(a, 600, tail, last=True))
    refused(coord, grpc.StatusCode.ALREADY_EXISTS, lambda: upload(chunk(a, 0, head, last=True)))
    b.masked_input(exact(UNITS["b"]))
    c.masked_input(exact(UNITS["c"]))

    # -- stage 4: survivor signatures ----------------------------------------------------------------------------
    survivors = list(a.stub.GetSurvivors(a.stage_request()).survivors)
    signature = a.client.sign_survivors(survivors).signature

    def sign(value: bytes) -> object:
        return a.stub.SignSurvivors(
            pb.SignSurvivorsRequest(federation="fed", round=0, silo="a", signature=value)
        )

    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: sign(bytes(64)))
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: sign(signature[:10]))
    sign(signature)
    refused(coord, grpc.StatusCode.ALREADY_EXISTS, lambda: sign(signature))
    b.sign_survivors()
    c.sign_survivors()

    # -- stage 5: unmask -------------------------------------------------------------------------------------------
    request = unmask_request_from_pb(a.stub.GetUnmaskRequest(a.stage_request()))
    response = a.client.unmask(request)
    honest_unmask = unmask_response_to_pb("fed", 0, response)
    repeated = pb.UnmaskShares()
    repeated.CopyFrom(honest_unmask)
    repeated.self_mask_shares.append(honest_unmask.self_mask_shares[0])
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: a.stub.Unmask(repeated))
    missing = pb.UnmaskShares()
    missing.CopyFrom(honest_unmask)
    del missing.self_mask_shares[-1]
    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: a.stub.Unmask(missing))
    a.stub.Unmask(honest_unmask)
    refused(coord, grpc.StatusCode.ALREADY_EXISTS, lambda: a.stub.Unmask(honest_unmask))
    b.unmask()
    c.unmask()

    result = a.result()
    assert result.state == pb.ROUND_STATE_COMPLETED
    assert list(result.survivors) == ["a", "b", "c"]
    assert np.array_equal(
        coord.model(1), expected_model(np.zeros(LENGTH, np.float32), list(UNITS.values()))
    )
    # a submission for a round that is over
    refused(coord, grpc.StatusCode.FAILED_PRECONDITION, lambda: advertise(honest))
    for silo in (a, b, c):
        silo.close()


def test_unknown_round_downloads_and_polls_are_not_found(
    trio: Consortium, coord: Coordinator
) -> None:
    with ManualSilo(trio, "a", coord.address) as a:
        a.open_round()
        refused(
            coord,
            grpc.StatusCode.NOT_FOUND,
            lambda: list(a.stub.DownloadModel(pb.DownloadModelRequest(federation="fed", round=9))),
        )
        refused(
            coord,
            grpc.StatusCode.NOT_FOUND,
            lambda: list(a.stub.DownloadModel(pb.DownloadModelRequest(federation="x", round=0))),
        )
        unknown = pb.StageRequest(federation="fed", round=9, silo="a", wait_seconds=0.5)
        refused(coord, grpc.StatusCode.NOT_FOUND, lambda: a.stub.GetAdvertisements(unknown))
        refused(coord, grpc.StatusCode.NOT_FOUND, lambda: a.stub.GetInbox(unknown))
        refused(
            coord,
            grpc.StatusCode.NOT_FOUND,
            lambda: a.stub.GetRound(pb.GetRoundRequest(federation="fed", after=9)),
        )
        refused(
            coord,
            grpc.StatusCode.NOT_FOUND,
            lambda: a.stub.Join(pb.JoinRequest(federation="other", silo="a")),
        )


def test_result_of_a_round_beyond_the_plan_is_not_found(
    trio: Consortium, coord: Coordinator
) -> None:
    with ManualSilo(trio, "a", coord.address) as a:
        a.open_round()
        unknown = pb.StageRequest(federation="fed", round=9, silo="a", wait_seconds=0.2)
        refused(coord, grpc.StatusCode.NOT_FOUND, lambda: a.stub.GetResult(unknown))


def test_malformed_unmask_share_is_refused_at_submission(
    trio: Consortium, coord: Coordinator
) -> None:
    silos = [ManualSilo(trio, s, coord.address) for s in trio.silos]
    for step in ("advertise", "share_keys"):
        for silo in silos:
            getattr(silo, step)()
    for silo in silos:
        silo.masked_input(exact(UNITS[silo.silo]))
    for silo in silos:
        silo.sign_survivors()
    a = silos[0]
    assert a.client is not None
    request = unmask_request_from_pb(a.stub.GetUnmaskRequest(a.stage_request()))
    good = unmask_response_to_pb("fed", 0, a.client.unmask(request))
    bad = pb.UnmaskShares()
    bad.CopyFrom(good)
    bad.self_mask_shares[0].share = b"\x01" * 10  # a Shamir share is 66 bytes
    try:
        refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: a.stub.Unmask(bad))
        a.stub.Unmask(good)  # the refusal changed nothing: the correct shares are still accepted
    finally:
        for silo in silos[1:]:
            silo.unmask()
        outcome = a.result()
        for silo in silos:
            silo.close()
    assert outcome.state == pb.ROUND_STATE_COMPLETED, outcome.reason


def test_undecodable_request_is_invalid_argument(trio: Consortium, coord: Coordinator) -> None:
    with ManualSilo(trio, "a", coord.address) as a:
        raw = a.channel.unary_unary(
            "/coordinator.proto.v1.Federation/AdvertiseKeys",
            request_serializer=lambda data: data,
            response_deserializer=pb.Ack.FromString,
        )
        refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: raw(b"\x0a\xff\xff\xff\xff"))
