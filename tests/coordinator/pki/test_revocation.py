"""secagg pki revoke: a CA-signed, numbered X.509 CRL; rollbacks and forgeries never loosen what is enforced."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.errors import PKIError
from coordinator.pki import PASSPHRASE_ENV, Revocations, load_certificate
from coordinator.pki.enrol import install, revoke
from coordinator.pki.revocation import crl_number, load_crl
from tests.coordinator.pki.test_enrol import PASSPHRASE, World, make_ca


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, make_ca(tmp_path))


def issued_cert(world: World, name: str) -> x509.Certificate:
    org = world.org(name)
    issued = world.sign(org, f"{name}.issued.json")
    install(org.directory, issued)
    return load_certificate(org.cert)


def test_revoke_writes_a_numbered_crl_the_ca_signed(world: World) -> None:
    ca = load_certificate(world.ca.ca_cert)
    a, b = issued_cert(world, "a"), issued_cert(world, "b")
    first = revoke(world.ca.directory, "a", world.root / "crl-1.pem", passphrase=PASSPHRASE)
    crl = load_crl(first, ca)
    assert crl_number(crl) == 1
    assert [r.serial_number for r in crl] == [a.serial_number]
    second = revoke(world.ca.directory, "b", world.root / "crl-2.pem", passphrase=PASSPHRASE)
    crl = load_crl(second, ca)
    assert crl_number(crl) == 2
    assert sorted(r.serial_number for r in crl) == sorted([a.serial_number, b.serial_number])
    assert load_crl(world.ca.crl, ca) == crl
    with pytest.raises(PKIError, match="'a' is already revoked"):
        revoke(world.ca.directory, "a", passphrase=PASSPHRASE)
    with pytest.raises(PKIError, match="'z' is not enrolled"):
        revoke(world.ca.directory, "z", passphrase=PASSPHRASE)


def test_an_older_list_copied_over_the_current_one_does_not_un_revoke(world: World) -> None:
    ca = load_certificate(world.ca.ca_cert)
    a, b = issued_cert(world, "a"), issued_cert(world, "b")
    first = revoke(world.ca.directory, "a", world.root / "crl-1.pem", passphrase=PASSPHRASE)
    second = revoke(world.ca.directory, "b", world.root / "crl-2.pem", passphrase=PASSPHRASE)
    served = world.root / "served.pem"
    served.write_bytes(second.read_bytes())
    revocations = Revocations(crl=served, ca_cert=ca)
    assert revocations.revokes(b, "0" * 64)
    served.write_bytes(first.read_bytes())  # number 1 after number 2: a rollback
    assert revocations.revokes(b, "0" * 64) and revocations.revokes(a, "0" * 64)
    with pytest.raises(PKIError, match="not signed by the consortium CA"):
        Revocations(crl=served, ca_cert=load_certificate(make_ca(world.root / "x").ca_cert))


def test_the_revoke_command_is_one_line_and_needs_the_ca_passphrase(
    world: World, tmp_path: Path
) -> None:
    issued_cert(world, "a")
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    args = ["pki", "revoke", str(world.ca.directory), "--id", "a"]
    result = CliRunner().invoke(app, args, env={PASSPHRASE_ENV: str(passphrase)})
    assert result.exit_code == 0, result.output
    assert "--remove a" in result.stdout and "revocation_list" in result.stdout
    again = CliRunner().invoke(app, args, env={PASSPHRASE_ENV: str(passphrase)})
    assert again.exit_code == 1
    assert again.stderr.strip() == "error: 'a' is already revoked"
