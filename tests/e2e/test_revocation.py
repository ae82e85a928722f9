"""Revocation over mTLS: a silo the CA revokes is refused at its next call; a forged list changes nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.errors import PKIError
from coordinator.pki import Revocations, load_certificate, read_passphrase
from coordinator.pki.enrol import revoke
from coordinator.pki.revocation import next_crl
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.e2e.harness import Consortium, refused, running_coordinator, secure_channel, settings

pytestmark = pytest.mark.e2e


def join(coord_address: str, consortium: Consortium, silo: str) -> int:
    with secure_channel(coord_address, consortium.silo_tls(silo)) as channel:
        return int(
            pb_grpc.FederationStub(channel)
            .Join(pb.JoinRequest(federation=consortium.federation, silo=silo))
            .rounds
        )


def test_a_revoked_silo_is_refused_at_its_next_call_and_a_forged_list_is_not_taken(
    tmp_path: Path,
) -> None:
    consortium = Consortium.create(tmp_path / "pki", silos=["a", "b", "c"])
    ca_dir = consortium.paths.root
    crl = tmp_path / "coordinator-crl.pem"
    # The CA publishes an empty list first (revoking nobody is not possible: revoke c, then check a and b).
    revoke(ca_dir, "c", crl, passphrase=read_passphrase())
    ca_cert = load_certificate(consortium.paths.ca_cert)
    revocations = Revocations(crl=crl, ca_cert=ca_cert)
    config = settings(n=3, length=64, threshold=2, min_cohort=2)
    with running_coordinator(consortium, tmp_path / "c.db", config, revoked=revocations) as coord:
        assert join(coord.address, consortium, "a") == 1
        assert join(coord.address, consortium, "b") == 1
        with pytest.raises(grpc.RpcError, match="revoked"):
            join(coord.address, consortium, "c")

        # The CA revokes a; the operator copies the new list over the coordinator's file; no restart.
        new_list = revoke(ca_dir, "a", tmp_path / "crl-2.pem", passphrase=read_passphrase())
        crl.write_bytes(new_list.read_bytes())
        channel = secure_channel(coord.address, consortium.silo_tls("a"))
        with channel:
            stub = pb_grpc.FederationStub(channel)
            message = refused(
                coord,
                grpc.StatusCode.PERMISSION_DENIED,
                lambda: stub.Join(pb.JoinRequest(federation=consortium.federation, silo="a")),
            )
        assert "revoked" in message
        assert join(coord.address, consortium, "b") == 1

        # A list signed by another key that would un-revoke a and c: refused, the loaded list stays.
        rogue_key = ec.generate_private_key(ec.SECP256R1())
        forged = next_crl(ca_cert, rogue_key, [], number=99, now=ca_cert.not_valid_before_utc)
        crl.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
        for silo in ("a", "c"):
            with pytest.raises(grpc.RpcError, match="revoked"):
                join(coord.address, consortium, silo)
        assert join(coord.address, consortium, "b") == 1

    # At start-up a forged list is refused outright, with one line.
    with pytest.raises(PKIError) as exc:
        Revocations(crl=crl, ca_cert=ca_cert)
    message = str(exc.value)
    assert "\n" not in message and "not signed by the consortium CA" in message
