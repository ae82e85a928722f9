"""Enrolment steps refuse bad input with one line that says what to do, and change nothing when they do."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.errors import PKIError
from coordinator.pki import (
    PASSPHRASE_ENV,
    certificate_fingerprint,
    load_certificate,
    load_private_key,
)
from coordinator.pki.enrol import (
    ENROLMENT_KEYS_OID,
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
from secagg import Roster

FEDERATION = "fed"
PASSPHRASE = b"test passphrase of every party here"


@dataclass(frozen=True)
class World:
    root: Path
    ca: CaPaths

    def org(self, name: str, *, federation: str = FEDERATION, role: str = "silo") -> OrgPaths:
        hosts = ("localhost",) if role == "coordinator" else ()
        paths, _ = request(
            self.root / name,
            member=name,
            role=role,  # type: ignore[arg-type]
            federation=federation,
            passphrase=PASSPHRASE,
            hosts=hosts,
        )
        return paths

    def governor(self, i: int) -> Path:
        return self.root / f"gov-{self.federation}-{i}"

    @property
    def federation(self) -> str:
        return json.loads(self.ca.governance.read_text())["federation"]

    def roster_version(
        self, out: str, *, signers: int = 2, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
    ) -> Path:
        """Propose the next roster version and have the first ``signers`` governors sign it."""
        path = self.root / out
        propose(self.ca.directory, path, passphrase=PASSPHRASE, add=add, remove=remove)
        for i in range(signers):
            sign_roster(self.governor(i), path, passphrase=PASSPHRASE)
        return path

    def publish(self, out: str, version: Path) -> Path:
        return publish(
            self.ca.directory, self.root / out, roster_version=version, passphrase=PASSPHRASE
        )

    def sign(self, org: OrgPaths, out: str) -> Path:
        return issue(
            self.ca.directory,
            read_request(self.ca.directory, org.request),
            self.root / out,
            passphrase=PASSPHRASE,
        )


def make_ca(root: Path, federation: str = FEDERATION) -> CaPaths:
    governors = [
        bytes.fromhex(
            governor_init(root / f"gov-{federation}-{i}", passphrase=PASSPHRASE).read_text().strip()
        )
        for i in range(3)
    ]
    return ca_init(
        root / f"ca-{federation}",
        federation=federation,
        governors=governors,
        quorum=2,
        passphrase=PASSPHRASE,
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, make_ca(tmp_path))


def one_line(exc: pytest.ExceptionInfo[PKIError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


def snapshot(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def forged_request(org: OrgPaths, edit: Callable[[dict[str, object]], None], *, out: Path) -> Path:
    """``org``'s request re-made by ``org`` itself (it holds its TLS key) with its key claims edited."""
    doc = json.loads(org.request.read_text())
    keys = {k: doc[k] for k in ("roster_key", "audit_key", "proofs")}
    edit(keys)
    tls_key = load_private_key(org.key, PASSPHRASE)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_csr(doc["csr"].encode())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, doc["id"])]))
        .add_extension(
            old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(ENROLMENT_KEYS_OID, json.dumps(keys).encode()),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
    )
    doc.update(keys, csr=csr.public_bytes(serialization.Encoding.PEM).decode())
    out.write_text(json.dumps(doc))
    return out


def test_a_request_signs_every_key_it_names_and_installs_into_a_verified_roster(
    world: World,
) -> None:
    coordinator, a, b = world.org("hub", role="coordinator"), world.org("a"), world.org("b")
    for org in (coordinator, a, b):
        install(org.directory, world.sign(org, f"{org.directory.name}.issued.json"))
    federation = world.publish("federation.json", world.roster_version("v1.json"))
    for org in (coordinator, a, b):
        install(org.directory, federation)
    roster = Roster.loads(a.roster.read_text())
    roster.verify(bytes.fromhex(world.ca.consortium_public_key.read_text().strip()))
    assert list(roster.members) == ["a", "b"]
    mine = load_private_key(a.signing_key, PASSPHRASE)
    assert isinstance(mine, Ed25519PrivateKey)
    assert roster.key("a") == mine.public_key().public_bytes_raw()
    assert b.audit_public_key.read_text() == coordinator.audit_public_key.read_text()
    assert load_certificate(a.ca_cert) == load_certificate(world.ca.ca_cert)


def test_a_wrong_proof_of_possession_is_refused_and_nothing_is_issued(world: World) -> None:
    victim, mallory = world.org("a"), world.org("mallory")
    victim_key = json.loads(victim.request.read_text())["roster_key"]

    def claim_victims_key(keys: dict[str, object]) -> None:
        keys["roster_key"] = victim_key  # mallory's own proof stays: it is over another key

    forged = forged_request(mallory, claim_victims_key, out=world.root / "forged.json")
    before = snapshot(world.ca.directory)
    result = CliRunner().invoke(
        app,
        [
            "pki",
            "sign",
            str(world.ca.directory),
            str(forged),
            "--out",
            str(world.root / "x"),
            "--yes",
        ],
    )
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message
    assert "proof of possession of the roster key does not verify" in message
    assert "ask the organisation for a new request" in message
    assert snapshot(world.ca.directory) == before and not (world.root / "x").exists()

    def corrupt_proof(keys: dict[str, object]) -> None:
        proofs = dict(keys["proofs"])  # type: ignore[call-overload]
        proofs["roster"] = "00" * 64
        keys["proofs"] = proofs

    with pytest.raises(PKIError, match="proof of possession of the roster key"):
        read_request(
            world.ca.directory, forged_request(victim, corrupt_proof, out=world.root / "f2")
        )


def test_a_silo_request_naming_a_host_is_refused(world: World) -> None:
    """A silo that asks for a DNS name could pose as the coordinator to other TLS clients."""
    org = world.org("a")
    doc = json.loads(org.request.read_text())
    old = x509.load_pem_x509_csr(doc["csr"].encode())
    tls_key = load_private_key(org.key, PASSPHRASE)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(old.subject)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("coordinator.example.org"),
                    *old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
                ]
            ),
            critical=False,
        )
        .add_extension(
            old.extensions.get_extension_for_oid(ENROLMENT_KEYS_OID).value, critical=False
        )
        .sign(tls_key, hashes.SHA256())
    )
    doc["csr"] = csr.public_bytes(serialization.Encoding.PEM).decode()
    (world.root / "host.json").write_text(json.dumps(doc))
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, world.root / "host.json")
    assert "a silo certificate names its SPIFFE id only, no host" in one_line(exc)


def test_a_request_whose_listed_keys_differ_from_its_csr_is_refused(world: World) -> None:
    org = world.org("a")
    doc = json.loads(org.request.read_text())
    doc["roster_key"] = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    (world.root / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, world.root / "edited.json")
    assert "differ from those its CSR signs" in one_line(exc)


def test_a_request_for_another_federation_is_refused_naming_the_right_one(world: World) -> None:
    stranger = world.org("a", federation="other")
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, stranger.request)
    assert "--federation fed" in one_line(exc)


def test_a_certificate_for_another_federation_is_not_installed(world: World) -> None:
    other = World(world.root, make_ca(world.root, "other"))
    theirs = other.org("a-other", federation="other")
    foreign = other.sign(theirs, "foreign.issued.json")
    mine = world.org("a")
    before = snapshot(mine.directory)
    with pytest.raises(PKIError) as exc:
        install(mine.directory, foreign)
    message = one_line(exc)
    assert "is for federation 'other'" in message and "ask the CA operator of 'fed'" in message
    assert snapshot(mine.directory) == before


def test_a_certificate_for_someone_else_or_from_another_ca_is_not_installed(world: World) -> None:
    a, b = world.org("a"), world.org("b")
    issued_b = world.sign(b, "b.issued.json")
    with pytest.raises(PKIError, match="was issued to silo 'b', not to this silo 'a'"):
        install(a.directory, issued_b)
    # A rogue CA of the same federation name issuing for a's id but its own key: not a's TLS key.
    impostor = World(world.root / "impostor", make_ca(world.root / "impostor"))
    impostor_a = impostor.org("a")
    with pytest.raises(PKIError, match="not for this organisation's TLS key"):
        install(a.directory, impostor.sign(impostor_a, "impostor-a.issued.json"))
    rogue = World(world.root / "rogue", make_ca(world.root / "rogue"))
    # a's own request signed by the rogue CA: refused when a pins the real CA's fingerprint out of band.
    rogue_issued = issue(
        rogue.ca.directory,
        read_request(rogue.ca.directory, a.request),
        world.root / "rogue-real-a.issued.json",
        passphrase=PASSPHRASE,
    )
    real = certificate_fingerprint(load_certificate(world.ca.ca_cert))
    with pytest.raises(PKIError) as exc:
        install(a.directory, rogue_issued, ca_fingerprint=real)
    assert "not the one you confirmed" in one_line(exc)
    install(a.directory, world.sign(a, "a.issued.json"), ca_fingerprint=real)
    # Once installed, the CA is pinned: a federation file from the rogue CA is refused.
    rogue_b = rogue.org("b")
    rogue.sign(rogue_b, "rogue-b.issued.json")
    rogue_federation = rogue.publish("rogue-federation.json", rogue.roster_version("rogue-v1.json"))
    with pytest.raises(PKIError, match="the CA differs from the one installed"):
        install(a.directory, rogue_federation)


def test_a_forged_roster_in_a_federation_file_is_refused(world: World) -> None:
    a = world.org("a")
    install(a.directory, world.sign(a, "a.issued.json"))
    federation = world.publish("federation.json", world.roster_version("v1.json"))
    doc = json.loads(federation.read_text())
    version = json.loads(doc["roster_version"])
    roster = json.loads(version["roster"])
    roster["members"]["z"] = "11" * 32
    version["roster"] = json.dumps(roster)
    doc["roster_version"] = json.dumps(version)
    (world.root / "forged-federation.json").write_text(json.dumps(doc))
    with pytest.raises(PKIError) as exc:
        install(a.directory, world.root / "forged-federation.json")
    assert "is not signed by the pinned consortium key" in one_line(exc)
    assert not a.roster.exists()


@pytest.mark.parametrize(
    "field",
    ["governors", "quorum", "consortium_public_key", "audit_public_key"],
)
def test_federation_keys_the_ca_did_not_sign_are_refused(world: World, field: str) -> None:
    hub, a = world.org("hub", role="coordinator"), world.org("a")
    for org in (hub, a):
        install(org.directory, world.sign(org, f"{org.directory.name}.issued.json"))
    doc = json.loads(world.publish("federation.json", world.roster_version("v1.json")).read_text())
    attacker = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    doc[field] = {
        "governors": [
            Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex() for _ in range(3)
        ],
        "quorum": 1,
        "consortium_public_key": attacker,
        "audit_public_key": attacker,
    }[field]
    (world.root / "swapped.json").write_text(json.dumps(doc))
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        install(a.directory, world.root / "swapped.json")
    assert "not signed by the pinned CA" in one_line(exc)
    assert snapshot(a.directory) == before


def test_a_second_coordinator_is_refused_until_the_first_is_revoked(world: World) -> None:
    world.sign(world.org("hub", role="coordinator"), "hub.issued.json")
    rival = world.org("hub-2", role="coordinator")
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, rival.request)
    assert "already has a coordinator ('hub'); revoke it first" in one_line(exc)
    revoke(world.ca.directory, "hub", passphrase=PASSPHRASE)
    assert read_request(world.ca.directory, rival.request).member == "hub-2"


def test_an_id_is_enrolled_once(world: World) -> None:
    world.sign(world.org("a"), "a.issued.json")
    again = World(world.root / "second", world.ca).org("a")
    with pytest.raises(PKIError, match="'a' is already enrolled"):
        read_request(world.ca.directory, again.request)


def test_sign_with_a_wrong_passphrase_or_an_open_ca_key_issues_nothing(
    world: World, tmp_path: Path
) -> None:
    org = world.org("a")
    wrong = tmp_path / "wrong-passphrase"
    wrong.write_text("not the CA passphrase\n")
    wrong.chmod(0o600)
    args = ["pki", "sign", str(world.ca.directory), str(org.request), "--yes", "--out"]
    before = snapshot(world.ca.directory)
    result = CliRunner().invoke(
        app, [*args, str(tmp_path / "i1")], env={PASSPHRASE_ENV: str(wrong)}
    )
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: wrong passphrase for")
    assert snapshot(world.ca.directory) == before and not (tmp_path / "i1").exists()

    world.ca.ca_key.chmod(0o644)
    right = tmp_path / "right-passphrase"
    right.write_bytes(PASSPHRASE + b"\n")
    right.chmod(0o600)
    result = CliRunner().invoke(
        app, [*args, str(tmp_path / "i2")], env={PASSPHRASE_ENV: str(right)}
    )
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and "readable by other users" in message and "chmod 600" in message
    assert not (tmp_path / "i2").exists()


def test_sign_asks_for_out_of_band_confirmation_unless_yes(world: World, tmp_path: Path) -> None:
    org = world.org("a")
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    out = tmp_path / "a.issued.json"
    args = ["pki", "sign", str(world.ca.directory), str(org.request), "--out", str(out)]
    env = {PASSPHRASE_ENV: str(passphrase)}
    refused = CliRunner().invoke(app, args, input="n\n", env=env)
    assert refused.exit_code == 1 and "not issued" in refused.stdout and not out.exists()
    assert "tls key" in refused.stdout and "roster key" in refused.stdout
    accepted = CliRunner().invoke(app, args, input="y\n", env=env)
    assert accepted.exit_code == 0, accepted.output
    assert out.exists()


def test_request_refuses_a_host_for_a_silo_and_a_coordinator_without_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a silo certificate names no host"):
        request(
            tmp_path / "s",
            member="s",
            role="silo",
            federation="f",
            passphrase=PASSPHRASE,
            hosts=["h"],
        )
    with pytest.raises(ValueError, match="needs at least one host"):
        request(
            tmp_path / "c", member="c", role="coordinator", federation="f", passphrase=PASSPHRASE
        )
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_ca_init_checks_the_quorum_and_the_governor_keys(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ValueError, match="between 1 and the 1 governors"):
        ca_init(tmp_path / "a", federation="f", governors=[key], quorum=2, passphrase=PASSPHRASE)
    with pytest.raises(ValueError, match="given twice"):
        ca_init(
            tmp_path / "b", federation="f", governors=[key, key], quorum=1, passphrase=PASSPHRASE
        )
