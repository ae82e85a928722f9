"""Authorization over mTLS: identity comes from the client certificate, a silo can act only as itself, and
certificates that are foreign, revoked, missing or not a silo's are refused."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.common import TlsFiles
from coordinator.pki import (
    certificate_fingerprint,
    issue_certificate,
    load_certificate,
    load_private_key,
    spiffe_id,
)
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.wire.masking import advertisement_to_pb
from secagg import Advertisement, SecAggClient
from secagg.hazmat.keys import sign
from secagg.masking.messages import advertisement_payload
from tests.e2e.harness import (
    Consortium,
    Coordinator,
    ManualSilo,
    exact,
    expected_model,
    in_threads,
    integer_update,
    refused,
    running_coordinator,
    secure_channel,
    settings,
)

pytestmark = pytest.mark.e2e

LENGTH = 500
UNITS = {s: integer_update(40 + i, LENGTH) for i, s in enumerate("abc")}


def finish_round(trio: Consortium, coord: Coordinator) -> None:
    """The honest silos complete the round: nothing refused before left a trace in its state."""

    def silo(s: str) -> object:
        with trio.sdk(s, coord.address) as client:
            return list(client.run(lambda ctx: exact(UNITS[s]), max_rounds=1))

    in_threads(*[lambda s=s: silo(s) for s in trio.silos])
    (record,) = coord.rounds()
    assert record.survivors == ("a", "b", "c")
    assert np.array_equal(
        coord.model(1), expected_model(np.zeros(LENGTH, np.float32), list(UNITS.values()))
    )


def stub_with(coord: Coordinator, tls: TlsFiles) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
    channel = secure_channel(coord.address, tls)
    return channel, pb_grpc.FederationStub(channel)


def minted(trio: Consortium, *, common_name: str, uri: str, server: bool = False) -> TlsFiles:
    """A certificate issued by the consortium's own CA (a CA compromise or mis-issuance scenario)."""
    ca_cert = load_certificate(trio.paths.ca_cert)
    ca_key = load_private_key(trio.paths.ca_key)
    cert, key = issue_certificate(
        ca_cert,
        ca_key,  # type: ignore[arg-type]
        common_name=common_name,
        server=server,
        hosts=("localhost",) if server else (),
        uris=(uri,),
    )
    return TlsFiles(trio.paths.ca_cert.read_bytes(), cert, key)


@pytest.fixture
def coord(trio: Consortium, tmp_path: Path) -> Iterator[Coordinator]:
    config = settings(n=3, length=LENGTH, threshold=2, min_cohort=3)
    with running_coordinator(trio, tmp_path / "c.db", config) as coordinator:
        yield coordinator


def test_a_silo_cannot_act_as_another(trio: Consortium, coord: Coordinator) -> None:
    """a's connection naming b in any request is PERMISSION_DENIED, even with b's genuine advertisement."""
    with ManualSilo(trio, "a", coord.address) as a, ManualSilo(trio, "b", coord.address) as b:
        config = a.open_round()
        b.open_round()
        assert b.client is not None
        b_ad = advertisement_to_pb(b.client.advertise())  # made and signed by b itself
        stub, fed = a.stub, trio.federation
        as_b = pb.StageRequest(federation=fed, round=0, silo="b", wait_seconds=0)
        calls = {
            "Join": lambda: stub.Join(pb.JoinRequest(federation=fed, silo="b")),
            "AdvertiseKeys": lambda: stub.AdvertiseKeys(
                pb.AdvertiseKeysRequest(federation=fed, round=0, advertisement=b_ad)
            ),
            "ShareKeys": lambda: stub.ShareKeys(
                pb.ShareKeysRequest(federation=fed, round=0, sender="b")
            ),
            "UploadMaskedInput": lambda: stub.UploadMaskedInput(
                iter(
                    [pb.MaskedChunk(federation=fed, round=0, silo="b", values=bytes(4), last=True)]
                )
            ),
            "SignSurvivors": lambda: stub.SignSurvivors(
                pb.SignSurvivorsRequest(federation=fed, round=0, silo="b", signature=bytes(64))
            ),
            "Unmask": lambda: stub.Unmask(pb.UnmaskShares(federation=fed, round=0, silo="b")),
            "GetAdvertisements": lambda: stub.GetAdvertisements(as_b),
            "GetInbox": lambda: stub.GetInbox(as_b),
            "GetSurvivors": lambda: stub.GetSurvivors(as_b),
            "GetUnmaskRequest": lambda: stub.GetUnmaskRequest(as_b),
            "GetResult": lambda: stub.GetResult(as_b),
        }
        for name, call in calls.items():
            message = refused(coord, grpc.StatusCode.PERMISSION_DENIED, call)
            assert "cannot act as" in message, name

        # b's own connection may submit b's advertisement; a roster member signing with a key that is not
        # its roster key is refused as invalid input
        b.stub.AdvertiseKeys(pb.AdvertiseKeysRequest(federation=fed, round=0, advertisement=b_ad))
        impostor = SecAggClient(
            silo="a", signing_key=trio.signing_key("a"), roster=trio.roster, config=config
        ).advertise()
        wrong_key = Ed25519PrivateKey.generate()
        resigned = Advertisement(
            "a",
            impostor.enc_public,
            impostor.mask_public,
            sign(
                wrong_key,
                advertisement_payload(
                    config,
                    "a",
                    impostor.enc_public,
                    impostor.mask_public,
                    seed_commitment=impostor.seed_commitment,
                ),
            ),
            seed_commitment=impostor.seed_commitment,
        )
        message = refused(
            coord,
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: stub.AdvertiseKeys(
                pb.AdvertiseKeysRequest(
                    federation=fed, round=0, advertisement=advertisement_to_pb(resigned)
                )
            ),
        )
        assert "does not verify" in message  # refused for the wrong key, not for its shape
        # the round goes on with everyone acting as themselves, by hand from here (b has advertised)
        a.advertise()
        with ManualSilo(trio, "c", coord.address) as c:
            c.advertise()
            for silo in (a, b, c):
                silo.share_keys()
            for silo in (a, b, c):
                silo.masked_input(exact(UNITS[silo.silo]))
            for silo in (a, b, c):
                silo.sign_survivors()
            for silo in (a, b, c):
                silo.unmask()
            assert c.result().state == pb.ROUND_STATE_COMPLETED
    assert np.array_equal(
        coord.model(1), expected_model(np.zeros(LENGTH, np.float32), list(UNITS.values()))
    )


def test_refused_certificates(trio: Consortium, coord: Coordinator, tmp_path: Path) -> None:
    """Foreign CA and no client certificate fail the handshake; CA-issued non-members are PERMISSION_DENIED."""
    join = pb.JoinRequest(federation=trio.federation, silo="a")

    foreign = Consortium.create(tmp_path / "foreign", silos=["a", "b", "c"])
    foreign_a = foreign.silo_tls("a")
    # trust the real coordinator, but present a certificate from another consortium's CA
    channel, stub = stub_with(
        coord, TlsFiles(trio.paths.ca_cert.read_bytes(), foreign_a.cert, foreign_a.key)
    )
    with channel:
        refused(coord, grpc.StatusCode.UNAVAILABLE, lambda: stub.Join(join, timeout=5))

    channel, stub = stub_with(coord, TlsFiles(trio.paths.ca_cert.read_bytes(), b"", b""))
    with channel:
        refused(coord, grpc.StatusCode.UNAVAILABLE, lambda: stub.Join(join, timeout=5))

    cases = {  # expected public message -> a certificate the consortium CA really issued
        "not on the roster": minted(trio, common_name="mallory", uri=spiffe_id("fed", "mallory")),
        "another federation": minted(trio, common_name="a", uri=spiffe_id("other", "a")),
        "name different silos": minted(trio, common_name="b", uri=spiffe_id("fed", "a")),
    }
    for why, tls in cases.items():
        channel, stub = stub_with(coord, tls)
        with channel:
            message = refused(coord, grpc.StatusCode.PERMISSION_DENIED, partial(stub.Join, join))
        assert why in message

    finish_round(trio, coord)


def test_server_certificate_is_not_a_silo_identity(trio: Consortium, coord: Coordinator) -> None:
    """A serverAuth certificate naming silo a (right CA, right URI) is not accepted as a client."""
    tls = minted(trio, common_name="a", uri=spiffe_id("fed", "a"), server=True)
    channel, stub = stub_with(coord, tls)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.Join(pb.JoinRequest(federation="fed", silo="a"), timeout=5)
    error = info.value
    assert isinstance(error, grpc.Call)
    # gRPC's TLS stack already checks the extended key usage in the handshake (the coordinator's own clientAuth
    # check in silo_identity is defence in depth behind it)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_revoked_certificate_is_permission_denied(trio: Consortium, tmp_path: Path) -> None:
    revoked = certificate_fingerprint(trio.paths.silos["a"].cert.read_bytes())
    config = settings(n=3, length=LENGTH, threshold=2, min_cohort=3)
    with running_coordinator(trio, tmp_path / "c.db", config, revoked=[revoked]) as coord:
        channel, stub = stub_with(coord, trio.silo_tls("a"))
        with channel:
            message = refused(
                coord,
                grpc.StatusCode.PERMISSION_DENIED,
                lambda: stub.Join(pb.JoinRequest(federation="fed", silo="a")),
            )
        assert "revoked" in message
        # b is unaffected
        channel, stub = stub_with(coord, trio.silo_tls("b"))
        with channel:
            assert stub.Join(pb.JoinRequest(federation="fed", silo="b")).rounds == 1
