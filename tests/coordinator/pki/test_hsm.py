"""Keys in a PKCS#11 token: a real SoftHSM2 token signs certificates, CRLs, rosters and checkpoints.

Every test here runs against SoftHSM2 (Debian package ``softhsm2``, which ``scripts/system-deps.sh`` installs):
the suite makes its own token in a temporary directory (``SOFTHSM2_CONF``, ``softhsm2-util --init-token``).
Without SoftHSM2 or the ``hsm`` extra the tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audits import CheckpointSigner, verify_checkpoint
from coordinator.errors import PKIError
from coordinator.pki import certificate_fingerprint, load_certificate, tls_key_pem
from coordinator.pki.enrol import (
    CaPaths,
    OrgPaths,
    ca_init,
    governor_init,
    install,
    issue,
    propose,
    publish,
    read_request,
    request,
    revoke,
    sign_roster,
)
from coordinator.pki.governance import RosterVersion
from coordinator.pki.revocation import load_crl
from coordinator.pki.signer import (
    MODULE_ENV,
    PIN_ENV,
    Pkcs11Uri,
    generate_token_key,
    load_signer,
)

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
FEDERATION = "fed"
PASSPHRASE = b"test passphrase of every party here"
TOKEN = "secagg"


@dataclass(frozen=True)
class SoftHsm:
    """One SoftHSM2 token made for this test session."""

    root: Path
    pin_file: Path

    def uri(self, label: str) -> str:
        return f"pkcs11:token={TOKEN};object={label};type=private"


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    util = shutil.which("softhsm2-util")
    if util is None or not SOFTHSM_MODULE.is_file():
        pytest.skip(
            "SKIPPED LOUDLY: SoftHSM2 is not installed (Debian package softhsm2; run "
            "scripts/system-deps.sh as root): the PKCS#11 key custody tests did not run"
        )
    pytest.importorskip("pkcs11", reason="SKIPPED LOUDLY: the hsm extra (python-pkcs11) is missing")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin = secrets.token_hex(8)
    pin_file = root / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    # SoftHSM reads SOFTHSM2_CONF once, when the library is initialised: it stays set for the session.
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            secrets.token_hex(8),
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield SoftHsm(root, pin_file)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def token(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    """The session token, with the module and PIN file named as an operator would (environment)."""
    monkeypatch.setenv(MODULE_ENV, str(SOFTHSM_MODULE))
    monkeypatch.setenv(PIN_ENV, str(softhsm.pin_file))
    return softhsm


def label(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


def one_line(exc: pytest.ExceptionInfo[PKIError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


# --- URIs (no token needed) --------------------------------------------------------------------------------


def test_a_pkcs11_uri_names_token_object_and_module() -> None:
    uri = Pkcs11Uri.parse(
        "pkcs11:token=my%20token;object=ca;id=%01%ff;type=private"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/secagg/pin"
    )
    assert (uri.token, uri.object, uri.id) == ("my token", "ca", b"\x01\xff")
    assert (uri.module_path, uri.pin_source) == (
        "/usr/lib/softhsm/libsofthsm2.so",
        "/etc/secagg/pin",
    )
    assert Pkcs11Uri.parse(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("pkcs11:token=t;object=ca?pin-value=1234", "must not carry the PIN"),
        ("pkcs11:token=t;objet=ca", "unsupported PKCS#11 URI attribute 'objet'"),
        ("pkcs11:object=ca", "names no token"),
        ("pkcs11:token=t", "names no key"),
        ("pkcs11:token=t;object=ca;type=public", "private key"),
        ("pkcs11:token=t;object=a;object=b", "twice"),
        ("file:/ca.key", "not a PKCS#11 URI"),
    ],
)
def test_a_malformed_or_pin_carrying_uri_is_refused(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Pkcs11Uri.parse(text)


# --- keys in the token -------------------------------------------------------------------------------------


def test_a_generated_token_key_is_sensitive_and_never_leaves_the_token(token: SoftHsm) -> None:
    import pkcs11

    name = label("ca")
    signer = generate_token_key(token.uri(name), algorithm="ecdsa-p256")
    library = pkcs11.lib(str(SOFTHSM_MODULE))
    with library.get_token(token_label=TOKEN).open(
        user_pin=token.pin_file.read_text().strip()
    ) as session:
        key = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=name)
        assert key[pkcs11.Attribute.SENSITIVE] is True
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        assert key[pkcs11.Attribute.TOKEN] is True
    with pytest.raises(PKIError, match="cannot leave its token"):
        signer.ec_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    # An existing key is never replaced.
    with pytest.raises(PKIError) as exc:
        generate_token_key(token.uri(name), algorithm="ecdsa-p256")
    assert "already exists" in one_line(exc)


def test_token_signatures_verify_with_the_public_key_for_both_algorithms(token: SoftHsm) -> None:
    ecdsa = generate_token_key(token.uri(label("ca")), algorithm="ecdsa-p256")
    ed25519 = generate_token_key(token.uri(label("gov")), algorithm="ed25519")
    data = b"bytes to sign"
    public = ecdsa.public_key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(ecdsa.sign(data), data, ec.ECDSA(hashes.SHA256()))  # DER, as X.509 expects
    ed25519.public_key.verify(ed25519.sign(data), data)  # type: ignore[call-arg]
    assert len(ed25519.public_bytes_raw()) == 32


# --- the CA in a token -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HsmWorld:
    root: Path
    ca: CaPaths
    governors: list[Path]


def hsm_world(root: Path, token: SoftHsm) -> HsmWorld:
    """A CA whose CA and consortium keys are in the token, and three governors (two of them in the token)."""
    governors = []
    for i in range(3):
        key = token.uri(label(f"gov{i}")) if i < 2 else None
        governors.append(
            governor_init(root / f"gov-{i}", passphrase=None if key else PASSPHRASE, key=key).parent
        )
    ca = ca_init(
        root / "ca",
        federation=FEDERATION,
        governors=[bytes.fromhex((g / "governor.pub").read_text().strip()) for g in governors],
        quorum=2,
        passphrase=None,
        ca_key=token.uri(label("ca")),
        consortium_key=token.uri(label("consortium")),
    )
    return HsmWorld(root, ca, governors)


def enrol(world: HsmWorld, name: str, role: str, **kwargs: object) -> OrgPaths:
    paths, _ = request(
        world.root / name,
        member=name,
        role=role,  # type: ignore[arg-type]
        federation=FEDERATION,
        passphrase=PASSPHRASE,
        hosts=("localhost", "127.0.0.1") if role == "coordinator" else (),
        **kwargs,  # type: ignore[arg-type]
    )
    issued = issue(
        world.ca.directory,
        read_request(world.ca.directory, paths.request),
        world.root / f"{name}.issued.json",
        passphrase=None,
    )
    install(paths.directory, issued)
    return paths


def test_an_hsm_backed_ca_keeps_no_key_file_and_its_certificate_names_the_token_key(
    tmp_path: Path, token: SoftHsm
) -> None:
    world = hsm_world(tmp_path, token)
    assert not world.ca.ca_key.exists() and not world.ca.consortium_key.exists()
    uri = (world.ca.directory / "ca.key.uri").read_text().strip()
    assert uri.startswith("pkcs11:") and "pin" not in uri
    ca_cert = load_certificate(world.ca.ca_cert)
    signer = load_signer(world.ca.ca_key, algorithm="ecdsa-p256")  # found through ca.key.uri
    assert ca_cert.public_key() == signer.public_key
    ca_cert.verify_directly_issued_by(ca_cert)  # self-signed by the token


@pytest.mark.e2e
def test_an_hsm_backed_ca_issues_certificates_that_install_accepts_and_complete_mtls(
    tmp_path: Path, token: SoftHsm
) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    world = hsm_world(tmp_path, token)
    coordinator = enrol(world, "coordinator", "coordinator")
    silo = enrol(world, "silo-a", "silo")
    # install verified each chain (RFC 5280 path validation under the role's policy) before writing it.
    assert coordinator.cert.is_file() and silo.cert.is_file()
    ca = world.ca.ca_cert.read_bytes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(tls_key_pem(coordinator.key, PASSPHRASE), coordinator.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=True,
        ),
    )
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=tls_key_pem(silo.key, PASSPHRASE),
            certificate_chain=silo.cert.read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=20
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=None)


def test_an_hsm_backed_ca_signs_a_crl_and_the_federation_file(
    tmp_path: Path, token: SoftHsm
) -> None:
    world = hsm_world(tmp_path, token)
    silo = enrol(world, "silo-a", "silo")
    version = world.root / "v1.json"
    propose(world.ca.directory, version, passphrase=None)  # consortium key in the token
    for governor in world.governors[:2]:
        sign_roster(governor, version, passphrase=None)  # both governor keys in the token
    federation = publish(
        world.ca.directory, world.root / "federation.json", roster_version=version, passphrase=None
    )
    assert "installed roster version 1" in install(silo.directory, federation)
    crl_path = revoke(world.ca.directory, "silo-a", passphrase=None)
    crl = load_crl(crl_path, load_certificate(world.ca.ca_cert))  # verifies the token's signature
    serial = load_certificate(silo.cert).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_an_hsm_backed_governor_signature_verifies_and_counts_for_the_quorum(
    tmp_path: Path, token: SoftHsm
) -> None:
    world = hsm_world(tmp_path, token)
    enrol(world, "silo-a", "silo")
    governance = json.loads(world.ca.governance.read_text())
    governors = [bytes.fromhex(g) for g in governance["governors"]]
    consortium = bytes.fromhex(governance["consortium_public_key"])
    path = world.root / "v1.json"
    propose(world.ca.directory, path, passphrase=None)
    signed = sign_roster(world.governors[0], path, passphrase=None)  # the token governor
    assert signed.valid_signers(governors) == [governors[0]]
    with pytest.raises(PKIError, match="1 valid governor signature"):  # one is not a quorum
        signed.verify(
            consortium_key=consortium, governors=governors, quorum=2, federation=FEDERATION
        )
    sign_roster(world.governors[2], path, passphrase=PASSPHRASE)  # a file governor completes it
    RosterVersion.load(path).verify(
        consortium_key=consortium, governors=governors, quorum=2, federation=FEDERATION
    )


def test_an_hsm_backed_audit_key_signs_checkpoints_the_pinned_key_verifies(
    tmp_path: Path, token: SoftHsm
) -> None:
    world = hsm_world(tmp_path, token)
    coordinator = enrol(world, "coordinator", "coordinator", audit_key=token.uri(label("audit")))
    assert not coordinator.audit_key.exists()
    reference = coordinator.directory / "audit.key.uri"
    pinned = bytes.fromhex(coordinator.audit_public_key.read_text().strip())
    # What the coordinator does with serve.toml's audit_key = ".../audit.key.uri".
    key = load_signer(reference, algorithm="ed25519").ed25519_key()
    checkpoint = CheckpointSigner(key, key_name="fed.example/ledger").sign(
        origin="fed.example/ledger", size=3, root=bytes(32)
    )
    verified = verify_checkpoint(
        checkpoint.text, pinned, "fed.example/ledger", key_name="fed.example/ledger"
    )
    assert verified.size == 3
    # The CA checked the audit key's proof of possession (made by the token) when it issued.
    record = json.loads((world.ca.members / "coordinator.json").read_text())
    assert record["audit_key"] == pinned.hex()


# --- attacks and mistakes: one line each, nothing issued -----------------------------------------------------


def test_a_wrong_pin_is_one_line_and_issues_nothing(
    tmp_path: Path, token: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = hsm_world(tmp_path, token)
    org, _ = request(
        tmp_path / "silo-a",
        member="silo-a",
        role="silo",
        federation=FEDERATION,
        passphrase=PASSPHRASE,
    )
    checked = read_request(world.ca.directory, org.request)
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin\n")
    wrong.chmod(0o600)
    monkeypatch.setenv(PIN_ENV, str(wrong))
    with pytest.raises(PKIError) as exc:
        issue(world.ca.directory, checked, tmp_path / "issued.json", passphrase=None)
    assert one_line(exc).startswith(f"wrong PIN for token '{TOKEN}'")
    assert PIN_ENV in str(exc.value) and "not-the-pin" not in str(exc.value)
    assert not (tmp_path / "issued.json").exists()
    assert not (world.ca.members / "silo-a.json").exists()
    # Positive control: the same request issues with the right PIN.
    monkeypatch.setenv(PIN_ENV, str(token.pin_file))
    issue(world.ca.directory, checked, tmp_path / "issued.json", passphrase=None)


def test_a_pin_file_readable_by_others_is_refused(
    tmp_path: Path, token: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_pin = tmp_path / "pin"
    open_pin.write_text(token.pin_file.read_text())
    open_pin.chmod(0o644)
    monkeypatch.setenv(PIN_ENV, str(open_pin))
    with pytest.raises(PKIError) as exc:
        generate_token_key(token.uri(label("ca")), algorithm="ecdsa-p256")
    assert "readable by other users" in one_line(exc)


def test_a_missing_object_token_or_module_is_one_line(
    tmp_path: Path, token: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PKIError) as exc:
        load_signer(token.uri("no-such-key"), algorithm="ecdsa-p256")
    assert one_line(exc).startswith("no private key 'no-such-key' in token 'secagg'")
    with pytest.raises(PKIError) as exc:
        load_signer("pkcs11:token=no-such-token;object=ca", algorithm="ecdsa-p256")
    assert one_line(exc).startswith("no token 'no-such-token'")
    monkeypatch.delenv(MODULE_ENV)
    with pytest.raises(PKIError) as exc:
        load_signer(token.uri("ca"), algorithm="ecdsa-p256")
    assert MODULE_ENV in one_line(exc)
    monkeypatch.setenv(MODULE_ENV, str(tmp_path / "libnothing.so"))
    with pytest.raises(PKIError) as exc:
        load_signer(token.uri("ca"), algorithm="ecdsa-p256")
    assert "does not exist" in one_line(exc)


def test_a_token_key_of_the_wrong_algorithm_is_refused(token: SoftHsm) -> None:
    name = label("gov")
    generate_token_key(token.uri(name), algorithm="ed25519")
    with pytest.raises(PKIError) as exc:
        load_signer(token.uri(name), algorithm="ecdsa-p256")
    assert "an ecdsa-p256 key is needed" in one_line(exc)


def test_a_token_key_that_is_not_this_cas_key_issues_nothing(
    tmp_path: Path, token: SoftHsm
) -> None:
    world = hsm_world(tmp_path, token)
    org, _ = request(
        tmp_path / "silo-a",
        member="silo-a",
        role="silo",
        federation=FEDERATION,
        passphrase=PASSPHRASE,
    )
    checked = read_request(world.ca.directory, org.request)
    other = token.uri(label("other-ca"))
    impostor = generate_token_key(other, algorithm="ecdsa-p256")
    # Positive control: a certificate that key signs under this CA's name does not install.
    ca_cert = load_certificate(world.ca.ca_cert)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "silo-a")]))
        .issuer_name(ca_cert.subject)
        .public_key(checked.csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca_cert.not_valid_before_utc)
        .not_valid_after(ca_cert.not_valid_after_utc)
        .sign(impostor.ec_key(), hashes.SHA256())
    )
    with pytest.raises(InvalidSignature):
        forged.verify_directly_issued_by(ca_cert)
    with pytest.raises(PKIError) as exc:
        issue(world.ca.directory, checked, tmp_path / "issued.json", passphrase=None, ca_key=other)
    assert "is not the key of" in one_line(exc)
    assert not (tmp_path / "issued.json").exists()


def test_the_cli_makes_and_uses_token_keys_without_any_passphrase(
    tmp_path: Path, token: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from coordinator.cli import app
    from coordinator.pki import PASSPHRASE_ENV

    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)  # every key here is in the token
    runner = CliRunner()
    gov = runner.invoke(
        app, ["pki", "governor", "init", str(tmp_path / "gov"), "--key", token.uri(label("gov"))]
    )
    assert gov.exit_code == 0, gov.output
    ca_dir = tmp_path / "ca"
    init = runner.invoke(
        app,
        [
            *("pki", "ca", "init", str(ca_dir), "--federation", FEDERATION, "--governors", "1"),
            *("--quorum", "1", "--governor", str(tmp_path / "gov" / "governor.pub")),
            *("--ca-key", token.uri(label("ca")), "--consortium-key", token.uri(label("cons"))),
        ],
    )
    assert init.exit_code == 0, init.output
    fingerprint = certificate_fingerprint(load_certificate(ca_dir / "ca.pem"))
    assert fingerprint in init.output
    revoked = runner.invoke(app, ["pki", "revoke", str(ca_dir), "--id", "nobody"])
    assert revoked.exit_code == 1 and "'nobody' is not enrolled" in revoked.output
    # A hospital's request (its own keys, under its own passphrase), signed by the token CA with no passphrase.
    passphrase = tmp_path / "site-passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    monkeypatch.setenv(PASSPHRASE_ENV, str(passphrase))
    site = tmp_path / "site"
    made = runner.invoke(
        app,
        [
            "pki",
            "request",
            str(site),
            "--id",
            "st-anne",
            "--role",
            "silo",
            "--federation",
            FEDERATION,
        ],
    )
    assert made.exit_code == 0, made.output
    monkeypatch.delenv(PASSPHRASE_ENV)
    issued = tmp_path / "st-anne.issued.json"
    signed = runner.invoke(
        app, ["pki", "sign", str(ca_dir), str(site / "request.json"), "--out", str(issued), "--yes"]
    )
    assert signed.exit_code == 0, signed.output
    installed = runner.invoke(app, ["pki", "install", str(site), str(issued)])
    assert installed.exit_code == 0, installed.output
    assert load_certificate(site / "cert.pem").issuer == load_certificate(ca_dir / "ca.pem").subject


def test_the_coordinator_signs_its_ledger_with_the_token_audit_key_serve_toml_names(
    tmp_path: Path, token: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path ``secagg serve`` takes: serve.toml's audit_key names ``audit.key.uri``; the ledger's
    checkpoints are signed in the token (:func:`coordinator.rounds.audit.open_audit_trail`)."""
    from coordinator.common import ledger_origin
    from coordinator.config import ServeConfig, write_demo_configs
    from coordinator.pki import PASSPHRASE_ENV, create_consortium
    from coordinator.rounds.audit import open_audit_trail

    consortium = create_consortium(tmp_path / "pki", federation=FEDERATION, silos=["a", "b", "c"])
    monkeypatch.setenv(PASSPHRASE_ENV, str(consortium.passphrase_file))
    reference = tmp_path / "audit.key.uri"
    signer = generate_token_key(token.uri(label("audit")), algorithm="ed25519")
    reference.write_text(str(signer.uri) + "\n")
    serve, _ = write_demo_configs(
        consortium, tmp_path / "cfg", model_size=3, coordinator="127.0.0.1:1", rounds=1
    )
    text = serve.read_text()
    assert text.count(f'audit_key = "{os.path.relpath(consortium.audit_key, serve.parent)}"') == 1
    serve.write_text(
        text.replace(
            f'audit_key = "{os.path.relpath(consortium.audit_key, serve.parent)}"',
            f'audit_key = "{reference}"',
        )
    )
    trail = open_audit_trail(ServeConfig.load(serve))
    try:
        assert trail.signer.public_key == signer.public_bytes_raw()
        checkpoint = trail.checkpoint()
    finally:
        trail.close()
    origin = ledger_origin(FEDERATION)
    verify_checkpoint(checkpoint.text, signer.public_bytes_raw(), origin)
    # Positive control: the file key the demo consortium made does not verify it.
    from audits import VerificationError

    with pytest.raises(VerificationError):
        verify_checkpoint(
            checkpoint.text, bytes.fromhex(consortium.audit_public_key.read_text()), origin
        )
