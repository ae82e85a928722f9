"""A silo's held revocation list: only the pinned CA's, never older; and its check of peers' certificates."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.errors import PKIError
from coordinator.pki.enrol import OrgPaths, install, revoke
from coordinator.pki.held import HeldRevocations
from coordinator.pki.revocation import next_crl
from tests.coordinator.pki.test_enrol import PASSPHRASE, World, make_ca, one_line


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, make_ca(tmp_path))


@pytest.fixture
def silos(world: World) -> dict[str, OrgPaths]:
    orgs = {name: world.org(name) for name in ("a", "b")}
    for name, org in orgs.items():
        install(org.directory, world.sign(org, f"{name}.issued.json"))
    return orgs


def held(world: World, tmp_path: Path) -> HeldRevocations:
    return HeldRevocations(tmp_path / "state" / "revocations.pem", world.ca.ca_cert.read_bytes())


def forged_crl(world: World, *, number: int) -> bytes:
    """A CRL naming the consortium CA as issuer, signed by a key the forger made."""
    ca_cert = x509.load_pem_x509_certificate(world.ca.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    crl = next_crl(ca_cert, key, [], number=number, now=_dt.datetime.now(_dt.UTC))
    return crl.public_bytes(serialization.Encoding.PEM)


def test_the_cas_list_is_held_and_a_forged_or_older_one_is_refused(
    world: World, silos: dict[str, OrgPaths], tmp_path: Path
) -> None:
    holder = held(world, tmp_path)
    first = revoke(world.ca.directory, "a", tmp_path / "crl-1.pem", passphrase=PASSPHRASE)
    second = revoke(world.ca.directory, "b", tmp_path / "crl-2.pem", passphrase=PASSPHRASE)
    assert holder.offer(second.read_bytes())
    assert holder.number == 2 and holder.path.read_bytes() == second.read_bytes()
    # forged: another key, a higher number (it would un-revoke everyone); refused, the held list stays
    with pytest.raises(PKIError) as exc:
        holder.offer(forged_crl(world, number=9))
    assert "not signed by the consortium CA (forged?); refused" in one_line(exc)
    # older: the CA's own list number 1 (a rollback that would un-revoke b)
    with pytest.raises(PKIError) as exc:
        holder.offer(first.read_bytes())
    assert "has CRL number 1, older than the held 2" in one_line(exc)
    assert holder.number == 2 and holder.path.read_bytes() == second.read_bytes()
    # a restart reads the held list again, verified
    assert held(world, tmp_path).serials == holder.serials
    # positive control: the order the CA issued them in is accepted
    fresh = HeldRevocations(tmp_path / "fresh.pem", world.ca.ca_cert.read_bytes())
    assert fresh.offer(first.read_bytes()) and fresh.offer(second.read_bytes())


def test_a_held_list_that_does_not_verify_is_refused_at_load(world: World, tmp_path: Path) -> None:
    path = tmp_path / "state" / "revocations.pem"
    path.parent.mkdir()
    path.write_bytes(forged_crl(world, number=1))
    with pytest.raises(PKIError, match="forged"):
        HeldRevocations(path, world.ca.ca_cert.read_bytes())


def test_peers_are_checked_by_their_own_certificate_once_a_list_revokes_anything(
    world: World, silos: dict[str, OrgPaths], tmp_path: Path
) -> None:
    holder = held(world, tmp_path)
    a, b = (silos[n].cert.read_bytes() for n in ("a", "b"))
    federation = world.federation
    assert holder.peer_problem(federation, "b", None) is None  # nothing revoked: nothing refused
    holder.offer(revoke(world.ca.directory, "a", passphrase=PASSPHRASE).read_bytes())
    assert holder.peer_problem(federation, "b", b) is None
    problem = holder.peer_problem(federation, "a", a)
    assert (
        problem is not None and "the certificate of peer 'a'" in problem and "is revoked" in problem
    )
    # a coordinator cannot pass another member's (unrevoked) certificate off as a's, nor withhold a's
    assert "names another member" in str(holder.peer_problem(federation, "a", b))
    assert "no certificate of peer 'a'" in str(holder.peer_problem(federation, "a", None))
