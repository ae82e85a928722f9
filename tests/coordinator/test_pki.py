"""The development PKI: real certificates, chain and extension checks, key files, identity, and real mTLS."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.errors import PKIError, Unauthorized
from coordinator.pki import (
    ConsortiumPaths,
    certificate_fingerprint,
    create_consortium,
    issue_certificate,
    load_certificate,
    load_ed25519_private,
    load_private_key,
    silo_identity,
    spiffe_id,
    tls_key_pem,
)
from secagg import InvalidSignature, Roster
from tests.coordinator.conftest import FEDERATION, SILOS

# --- helpers ---------------------------------------------------------------------------------------------


def _ca(paths: ConsortiumPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = load_private_key(paths.ca_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return load_certificate(paths.ca_cert), key


def _context(cert_pem: bytes) -> dict[str, list[bytes]]:
    """The auth context gRPC builds for a peer presenting ``cert_pem`` (same keys, bytes values)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [str(a.value).encode() for a in cns],
        "x509_subject_alternative_name": [
            str(v).encode() for v in sans.get_values_for_type(x509.UniformResourceIdentifier)
        ],
        "x509_pem_cert": [cert_pem],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
    }


def _verifier_store(paths: ConsortiumPaths) -> PolicyBuilder:
    return (
        PolicyBuilder()
        .store(Store([load_certificate(paths.ca_cert)]))
        .time(dt.datetime.now(dt.UTC))
    )


# --- layout, files and modes -----------------------------------------------------------------------------


def test_every_file_is_written_with_the_right_mode(consortium: ConsortiumPaths) -> None:
    private = set(consortium.private_files())
    assert len(private) == 4 + 2 * len(SILOS)
    for path in consortium.files():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path in private else 0o644), path
    for path in private:
        assert b"PRIVATE KEY" in path.read_bytes()
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert list(consortium.silos) == sorted(SILOS)


def test_load_describes_an_existing_consortium(consortium: ConsortiumPaths) -> None:
    assert ConsortiumPaths.load(consortium.root) == consortium


def test_load_refuses_an_incomplete_consortium(consortium: ConsortiumPaths, tmp_path: Path) -> None:
    consortium.silos["silo-b"].signing_key.unlink()
    with pytest.raises(PKIError, match=r"incomplete consortium, missing .*silo-b/signing\.key"):
        ConsortiumPaths.load(consortium.root)
    with pytest.raises(PKIError, match="not a consortium directory"):
        ConsortiumPaths.load(tmp_path / "nowhere")


def test_an_existing_consortium_is_never_overwritten(consortium: ConsortiumPaths) -> None:
    before = {p: p.read_bytes() for p in consortium.files()}
    with pytest.raises(PKIError, match="refusing to overwrite an existing consortium"):
        create_consortium(consortium.root, federation=FEDERATION, silos=SILOS)
    assert {p: p.read_bytes() for p in consortium.files()} == before


def test_a_directory_holding_any_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("someone else's CA")
    with pytest.raises(PKIError, match="is not empty"):
        create_consortium(tmp_path, federation=FEDERATION, silos=SILOS)
    assert (tmp_path / "ca.pem").read_text() == "someone else's CA"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"federation": "Bad Fed", "silos": SILOS}, "invalid federation"),
        ({"federation": FEDERATION, "silos": ("a", "B")}, "invalid silo id 'B'"),
        ({"federation": FEDERATION, "silos": ("a", "a")}, "distinct"),
        ({"federation": FEDERATION, "silos": ()}, "at least one silo"),
        ({"federation": FEDERATION, "silos": SILOS, "hosts": ("bad host!",)}, "invalid host"),
        ({"federation": FEDERATION, "silos": SILOS, "hosts": ()}, "at least one host"),
        ({"federation": FEDERATION, "silos": SILOS, "validity_days": 0}, "validity_days"),
    ],
)
def test_invalid_arguments_write_nothing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    target = tmp_path / "c"
    with pytest.raises(ValueError, match=message):
        create_consortium(target, **kwargs)  # type: ignore[arg-type]
    assert not target.exists()


# --- certificates ----------------------------------------------------------------------------------------


def test_ca_is_a_leaf_only_p256_authority(consortium: ConsortiumPaths) -> None:
    ca = load_certificate(consortium.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    ca.verify_directly_issued_by(ca)  # self-signed


def test_coordinator_certificate_chains_and_names_its_hosts(consortium: ConsortiumPaths) -> None:
    cert = load_certificate(consortium.coordinator_cert)
    cert.verify_directly_issued_by(load_certificate(consortium.ca_cert))
    for host in (DNSName("localhost"), IPAddress(ipaddress.ip_address("127.0.0.1"))):
        verified = _verifier_store(consortium).build_server_verifier(host).verify(cert, [])
        assert verified[-1] == load_certificate(consortium.ca_cert)
    with pytest.raises(VerificationError):
        _verifier_store(consortium).build_server_verifier(DNSName("example.com")).verify(cert, [])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_silo_certificates_chain_and_carry_their_spiffe_id(consortium: ConsortiumPaths) -> None:
    ca = load_certificate(consortium.ca_cert)
    for silo, paths in consortium.silos.items():
        cert = load_certificate(paths.cert)
        assert load_certificate(paths.ca_cert) == ca
        verified = _verifier_store(consortium).build_client_verifier().verify(cert, [])
        assert verified.subjects is not None
        assert x509.UniformResourceIdentifier(spiffe_id(FEDERATION, silo)) in verified.subjects
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == silo
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        # A client certificate must not pass as a server certificate (EKU), whatever the name.
        with pytest.raises(VerificationError):
            _verifier_store(consortium).build_server_verifier(DNSName("localhost")).verify(cert, [])


def test_a_rogue_ca_certificate_does_not_chain(
    consortium: ConsortiumPaths, rogue_consortium: ConsortiumPaths
) -> None:
    impostor = load_certificate(rogue_consortium.silos["silo-a"].cert)
    with pytest.raises(VerificationError):
        _verifier_store(consortium).build_client_verifier().verify(impostor, [])
    with pytest.raises(CryptoInvalidSignature):
        impostor.verify_directly_issued_by(load_certificate(consortium.ca_cert))


def test_validity_follows_the_injected_clock(tmp_path: Path) -> None:
    now = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    paths = create_consortium(
        tmp_path / "c", federation=FEDERATION, silos=SILOS, validity_days=7, now=now
    )
    ca = load_certificate(paths.ca_cert)
    leaf = load_certificate(paths.silos["silo-a"].cert)
    assert ca.not_valid_before_utc == now - dt.timedelta(minutes=5)
    assert ca.not_valid_after_utc == now + dt.timedelta(days=7)
    assert leaf.not_valid_after_utc == now + dt.timedelta(days=7)
    # A leaf never outlives its CA, even when asked to.
    ca_key = load_private_key(paths.ca_key)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert_pem, _ = issue_certificate(
        ca,
        ca_key,
        common_name="x",
        server=False,
        uris=["spiffe://x/silo/x"],
        validity_days=99,
        now=now,
    )
    assert x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc == ca.not_valid_after_utc
    with pytest.raises(ValueError, match="timezone-aware"):
        issue_certificate(
            ca, ca_key, common_name="x", server=True, hosts=["h"], now=now.replace(tzinfo=None)
        )


def test_issue_certificate_refuses_nameless_certificates(consortium: ConsortiumPaths) -> None:
    ca, ca_key = _ca(consortium)
    with pytest.raises(ValueError, match="server certificate needs at least one host"):
        issue_certificate(ca, ca_key, common_name="coordinator", server=True)
    with pytest.raises(ValueError, match="at least one subject alternative name"):
        issue_certificate(ca, ca_key, common_name="silo-a", server=False)
    with pytest.raises(ValueError, match="common_name"):
        issue_certificate(ca, ca_key, common_name="", server=False, uris=["spiffe://a/silo/b"])


def test_certificate_fingerprint_is_sha256_of_der(consortium: ConsortiumPaths) -> None:
    pem = consortium.coordinator_cert.read_bytes()
    # Known answer computed without cryptography: the PEM body is base64 of the DER encoding.
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    expected = hashlib.sha256(base64.b64decode(body)).hexdigest()
    assert certificate_fingerprint(pem) == expected
    assert certificate_fingerprint(pem.decode()) == expected
    assert certificate_fingerprint(load_certificate(consortium.coordinator_cert)) == expected
    assert certificate_fingerprint(consortium.ca_cert.read_bytes()) != expected
    with pytest.raises(ValueError, match="PEM"):
        certificate_fingerprint(b"not a certificate")


# --- roster and Ed25519 keys -----------------------------------------------------------------------------


def test_roster_verifies_under_the_consortium_key(consortium: ConsortiumPaths) -> None:
    roster = Roster.loads(consortium.roster.read_text())
    pinned = bytes.fromhex(consortium.consortium_public_key.read_text().strip())
    roster.verify(pinned)
    assert roster.federation == FEDERATION
    assert pinned == load_ed25519_private(consortium.consortium_key).public_key().public_bytes_raw()
    for silo, paths in consortium.silos.items():
        signing = load_ed25519_private(paths.signing_key)
        assert roster.key(silo) == signing.public_key().public_bytes_raw()
    with pytest.raises(InvalidSignature):
        roster.verify(Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def test_audit_public_key_matches_the_audit_key(consortium: ConsortiumPaths) -> None:
    audit = load_ed25519_private(consortium.audit_key)
    assert consortium.audit_public_key.read_text().strip() == (
        audit.public_key().public_bytes_raw().hex()
    )


def test_key_loaders_refuse_wrong_files_without_echoing_them(consortium: ConsortiumPaths) -> None:
    with pytest.raises(PKIError, match="not an Ed25519 private key") as wrong_type:
        load_ed25519_private(consortium.coordinator_key)
    assert "BEGIN" not in str(wrong_type.value)
    not_a_key = consortium.root / "roster-copy.key"
    not_a_key.write_bytes(consortium.roster.read_bytes())
    not_a_key.chmod(0o600)
    with pytest.raises(PKIError, match="not a PEM private key") as not_key:
        load_private_key(not_a_key)
    assert FEDERATION not in str(not_key.value).replace(str(not_a_key), "")
    with pytest.raises(PKIError, match="cannot read private key"):
        load_private_key(consortium.root / "missing.key")
    with pytest.raises(PKIError, match="not a PEM certificate"):
        load_certificate(consortium.ca_key)
    with pytest.raises(PKIError, match="cannot read certificate"):
        load_certificate(consortium.root / "missing.pem")


# --- identity from gRPC's auth context -------------------------------------------------------------------


def test_silo_identity_reads_the_spiffe_id(consortium: ConsortiumPaths) -> None:
    for silo, paths in consortium.silos.items():
        context = _context(paths.cert.read_bytes())
        assert silo_identity(context) == silo
        assert silo_identity(context, federation=FEDERATION) == silo


def test_silo_identity_refusals(consortium: ConsortiumPaths) -> None:
    ca, ca_key = _ca(consortium)
    silo_a = consortium.silos["silo-a"].cert.read_bytes()

    def refused(context: dict[str, list[bytes]], message: str, **kwargs: object) -> None:
        with pytest.raises(Unauthorized, match=message):
            silo_identity(context, **kwargs)  # type: ignore[arg-type]

    refused({"transport_security_type": [b"ssl"]}, "no client certificate")
    refused({"x509_pem_cert": [silo_a, silo_a]}, "no client certificate")
    refused({"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nAAAA\n"]}, "does not parse")
    refused(_context(silo_a), "another federation", federation="otherfed")
    refused(_context(silo_a), "revoked", revoked={certificate_fingerprint(silo_a)})
    # The coordinator's own certificate (serverAuth) cannot act as a silo.
    refused(_context(consortium.coordinator_cert.read_bytes()), "not a client")

    def minted(common_name: str, uris: list[str]) -> dict[str, list[bytes]]:
        cert, _ = issue_certificate(ca, ca_key, common_name=common_name, server=False, uris=uris)
        return _context(cert)

    # CA-signed, but its CN names another silo than its URI.
    refused(minted("silo-b", [spiffe_id(FEDERATION, "silo-a")]), "CN and URI name different silos")
    refused(
        minted("silo-a", [spiffe_id(FEDERATION, "silo-a"), spiffe_id(FEDERATION, "silo-b")]),
        "exactly one spiffe",
    )
    refused(minted("silo-a", ["https://example.com/silo-a"]), "exactly one spiffe")
    refused(minted("silo-a", [f"spiffe://{FEDERATION}/coordinator"]), "is not spiffe://")
    refused(minted("Silo-A", [f"spiffe://{FEDERATION}/silo/Silo-A"]), "is not spiffe://")
    cert_pem, _ = issue_certificate(
        ca, ca_key, common_name="silo-a", server=False, hosts=["silo-a"]
    )
    refused(_context_without_uri(cert_pem), "exactly one spiffe")


def _context_without_uri(cert_pem: bytes) -> dict[str, list[bytes]]:
    return {"x509_pem_cert": [cert_pem]}


# --- real mutual TLS over gRPC ---------------------------------------------------------------------------


class _IdentifyingHealth(health.HealthServicer):
    """The standard health servicer, recording who each caller authenticated as."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[str] = []
        self.contexts: list[dict[str, list[bytes]]] = []

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        # grpc-stubs types this as Mapping[str, bytes]; gRPC really returns lists of bytes values.
        auth = cast(dict[str, list[bytes]], dict(context.auth_context()))
        self.contexts.append(auth)
        self.callers.append(silo_identity(auth, federation=FEDERATION))
        return super().Check(request, context)


@pytest.fixture
def mtls_server(consortium: ConsortiumPaths) -> Iterator[tuple[int, _IdentifyingHealth]]:
    servicer = _IdentifyingHealth()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(tls_key_pem(consortium.coordinator_key), consortium.coordinator_cert.read_bytes())],
        root_certificates=consortium.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None)


def _check(
    target: str, *, ca: bytes, key: bytes | None = None, cert: bytes | None = None
) -> health_pb2.HealthCheckResponse:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    with grpc.secure_channel(target, credentials) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=20
        )


@pytest.mark.e2e
def test_mtls_handshake_identifies_each_silo(
    consortium: ConsortiumPaths, mtls_server: tuple[int, _IdentifyingHealth]
) -> None:
    port, servicer = mtls_server
    ca = consortium.ca_cert.read_bytes()
    for target in (f"localhost:{port}", f"127.0.0.1:{port}"):  # DNS and IP SANs
        for silo, paths in consortium.silos.items():
            response = _check(
                target, ca=ca, key=tls_key_pem(paths.key), cert=paths.cert.read_bytes()
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            assert servicer.callers[-1] == silo
    # What gRPC really puts in the auth context: the assumption silo_identity is built on.
    context = servicer.contexts[-1]
    assert context["x509_pem_cert"] == [consortium.silos["silo-c"].cert.read_bytes()]
    assert context["x509_common_name"] == [b"silo-c"]
    assert context["transport_security_type"] == [b"ssl"]


@pytest.mark.e2e
def test_mtls_refuses_a_rogue_ca_client_certificate(
    consortium: ConsortiumPaths,
    rogue_consortium: ConsortiumPaths,
    mtls_server: tuple[int, _IdentifyingHealth],
) -> None:
    port, servicer = mtls_server
    impostor = rogue_consortium.silos["silo-a"]  # claims to be silo-a, signed by another CA
    with pytest.raises(grpc.RpcError) as refused:
        _check(
            f"localhost:{port}",
            ca=consortium.ca_cert.read_bytes(),
            key=tls_key_pem(impostor.key),
            cert=impostor.cert.read_bytes(),
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.callers == []


@pytest.mark.e2e
def test_mtls_refuses_a_client_without_certificate(
    consortium: ConsortiumPaths, mtls_server: tuple[int, _IdentifyingHealth]
) -> None:
    port, servicer = mtls_server
    with pytest.raises(grpc.RpcError) as refused:
        _check(f"localhost:{port}", ca=consortium.ca_cert.read_bytes())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.callers == []


@pytest.mark.e2e
def test_a_silo_refuses_a_coordinator_outside_its_consortium(
    consortium: ConsortiumPaths,
    rogue_consortium: ConsortiumPaths,
    mtls_server: tuple[int, _IdentifyingHealth],
) -> None:
    port, servicer = mtls_server
    silo = rogue_consortium.silos["silo-a"]
    with pytest.raises(grpc.RpcError) as refused:
        # The silo pins the rogue CA; the real coordinator's certificate does not chain to it.
        _check(
            f"localhost:{port}",
            ca=rogue_consortium.ca_cert.read_bytes(),
            key=tls_key_pem(silo.key),
            cert=silo.cert.read_bytes(),
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.callers == []


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_pki_init_prints_paths_and_fingerprint_but_no_key_material(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "dev"
    result = runner.invoke(
        app, ["pki", "init", str(target), "--silos", "a,b, c", "--federation", "fed"]
    )
    assert result.exit_code == 0, result.output
    paths = ConsortiumPaths.load(target)
    assert list(paths.silos) == ["a", "b", "c"]
    roster = Roster.loads(paths.roster.read_text())
    assert roster.fingerprint() in result.stdout
    assert str(paths.roster) in result.stdout
    assert "THROWAWAY DEVELOPMENT" in result.stderr
    everything = result.stdout + result.stderr
    assert "PRIVATE KEY" not in everything
    for key_file in paths.private_files():
        secret = load_private_key(key_file)
        if isinstance(secret, Ed25519PrivateKey):
            raw = secret.private_bytes_raw().hex()
        else:
            assert isinstance(secret, ec.EllipticCurvePrivateKey)
            raw = f"{secret.private_numbers().private_value:x}"
        assert raw not in everything
        body = b"".join(
            line for line in key_file.read_bytes().splitlines() if not line.startswith(b"-----")
        )
        assert body.decode() not in everything

    again = runner.invoke(app, ["pki", "init", str(target), "--silos", "a,b,c"])
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.stderr


def test_cli_pki_init_rejects_bad_silo_ids(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pki", "init", str(tmp_path / "x"), "--silos", "a,Bad"])
    assert result.exit_code == 2
    assert re.search(r"invalid silo id\s+'Bad'", result.stderr)
    assert not (tmp_path / "x").exists()
