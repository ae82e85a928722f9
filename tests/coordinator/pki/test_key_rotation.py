"""Roster key rotation: a silo makes a new key beside its live one, the CA records it, K governors sign the version.

Attacks first, each next to its positive control: a rotation one governor signed is refused while the same
version with two signatures is pinned; a rotation naming a key the member never held is refused at ``sign`` while
the same re-made request with a key it holds is accepted; a version that re-keys a member to a key it did not ask
for is refused by that member (and only because of the key); a ``roster_changed`` entry with a flipped governor
signature, or one whose summary hides the rotation, is refused by the auditor's check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from audits.roster import RosterState
from coordinator.errors import PKIError
from coordinator.pki import load_ed25519_private, load_private_key
from coordinator.pki.enrol import (
    ENROLMENT_KEYS_OID,
    OrgPaths,
    PendingRotation,
    install,
    issue,
    propose,
    read_request,
    request,
    request_rotation,
    revoke,
    sign_roster,
)
from coordinator.pki.governance import RosterVersion, roster_changed_body
from tests.coordinator.pki.test_enrol import (
    FEDERATION,
    PASSPHRASE,
    World,
    make_ca,
    one_line,
    snapshot,
)
from tests.coordinator.pki.test_roster_updates import pin


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, make_ca(tmp_path))


@pytest.fixture
def members(world: World) -> dict[str, OrgPaths]:
    """Silos a and b enrolled and pinned to version 1."""
    orgs = {name: world.org(name) for name in ("a", "b")}
    for name, org in orgs.items():
        install(org.directory, world.sign(org, f"{name}.issued.json"))
    federation = world.publish("federation.json", world.roster_version("v1.json"))
    for org in orgs.values():
        install(org.directory, federation)
    return orgs


def public(path: Path) -> bytes:
    return load_ed25519_private(path, PASSPHRASE).public_key().public_bytes_raw()


def rotate(world: World, org: OrgPaths, name: str) -> Path:
    """``org`` asks for a rotation and the CA records it (what ``request --rotate`` and ``sign`` do)."""
    request_rotation(org.directory, member=name, federation=FEDERATION, passphrase=PASSPHRASE)
    return issue(
        world.ca.directory,
        read_request(world.ca.directory, org.rotation),
        world.root / f"{name}.rotation-issued.json",
        passphrase=PASSPHRASE,
    )


def rotation_version(world: World, out: str, silo: str, *, signers: int = 2) -> Path:
    path = world.root / out
    propose(world.ca.directory, path, passphrase=PASSPHRASE, rotate=(silo,))
    for i in range(signers):
        sign_roster(world.governor(i), path, passphrase=PASSPHRASE)
    return path


def remade(
    org: OrgPaths,
    edit: Callable[[dict[str, Any]], None],
    *,
    out: Path,
) -> Path:
    """``org``'s rotation request re-made by ``org`` itself (it holds its TLS key) with its key claims edited."""
    doc = json.loads(org.rotation.read_text())
    keys = {k: doc[k] for k in ("roster_key", "audit_key", "proofs", "rotation")}
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
    for k in ("roster_key", "audit_key", "proofs", "rotation"):
        doc.pop(k, None)
    doc.update(keys, csr=csr.public_bytes(serialization.Encoding.PEM).decode())
    out.write_text(json.dumps(doc))
    return out


def test_the_live_key_signs_until_a_version_k_governors_signed_lists_the_new_one(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a, b = members["a"], members["b"]
    live = a.signing_key.read_bytes()
    old_key = public(a.signing_key)
    request_rotation(a.directory, member="a", federation=FEDERATION, passphrase=PASSPHRASE)
    # the new key is beside the live one: encrypted, 0600, and the live key is untouched
    assert a.signing_key.read_bytes() == live
    assert stat.S_IMODE(a.next_signing_key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in a.next_signing_key.read_bytes()
    new_key = public(a.next_signing_key)
    assert json.loads(a.rotation.read_text())["roster_key"] == new_key.hex()
    checked = read_request(world.ca.directory, a.rotation)
    assert checked.rotation and checked.previous_roster_key == old_key
    assert checked.fingerprints()["roster key"] == hashlib.sha256(new_key).hexdigest()
    receipt = issue(world.ca.directory, checked, world.root / "a.rot.json", passphrase=PASSPHRASE)
    assert json.loads(receipt.read_text())["new_roster_key"] == new_key.hex()
    record = json.loads((world.ca.members / "a.json").read_text())
    assert (record["roster_key"], record["previous_roster_keys"]) == (
        new_key.hex(),
        [old_key.hex()],
    )
    v2 = rotation_version(world, "v2.json", "a")
    version = RosterVersion.load(v2)
    assert version.roster.members == {"a": new_key, "b": public(b.signing_key)}
    world.publish("federation-v2.json", v2)
    install(b.directory, v2)  # another member pins it like any version
    assert RosterVersion.load(b.roster_version).version == 2
    line = install(a.directory, v2)
    assert "the rotated roster key is now signing.key" in line
    # the rotated silo now signs with the key the version lists; nothing of the rotation is left pending
    assert public(a.signing_key) == new_key
    assert not a.next_signing_key.exists() and not a.rotation.exists()
    assert json.loads(a.request.read_text())["roster_key"] == new_key.hex()
    assert PendingRotation.at(a.signing_key) is None
    assert list(version.roster.members).index("a") == 0  # same id, same index


def test_a_rotation_one_governor_signed_is_refused_and_nothing_changes(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    rotate(world, a, "a")
    one = rotation_version(world, "v2-one.json", "a", signers=1)
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        install(a.directory, one)
    assert "1 valid governor signature(s) of the 2 required" in one_line(exc)
    with pytest.raises(PKIError, match="1 valid governor signature"):
        pin(a).accept([RosterVersion.load(one)], member="a", keys=[public(a.next_signing_key)])
    assert snapshot(a.directory) == before  # the live key, the pending key and the pins unchanged
    # positive control: the same version with a second governor's signature installs and completes the rotation
    sign_roster(world.governor(1), one, passphrase=PASSPHRASE)
    new_key = public(a.next_signing_key)
    install(a.directory, one)
    assert public(a.signing_key) == new_key


def test_a_rotation_to_a_key_the_member_never_held_is_refused_at_sign(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    request_rotation(a.directory, member="a", federation=FEDERATION, passphrase=PASSPHRASE)
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()

    def swap(keys: dict[str, Any]) -> None:
        keys["roster_key"] = stranger.hex()  # the proof stays the one made with a's own new key

    forged = remade(a, swap, out=world.root / "swapped.json")
    before = snapshot(world.ca.directory)
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, forged)
    assert "proof of possession of the roster key does not verify" in one_line(exc)
    assert snapshot(world.ca.directory) == before
    # positive control: the same re-making with the key a holds (and its proof) is accepted
    honest = remade(a, lambda keys: None, out=world.root / "remade.json")
    assert read_request(world.ca.directory, honest).roster_key == public(a.next_signing_key)


def test_sign_takes_an_enrolled_id_only_as_a_rotation_from_its_own_tls_key(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a, b = members["a"], members["b"]
    # a new enrolment under a's id, from another directory, is refused
    again, _ = request(
        world.root / "a-again",
        member="a",
        role="silo",
        federation=FEDERATION,
        passphrase=PASSPHRASE,
    )
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, again.request)
    assert "already enrolled" in one_line(exc) and "--rotate" in one_line(exc)
    request_rotation(a.directory, member="a", federation=FEDERATION, passphrase=PASSPHRASE)

    def unmark(keys: dict[str, Any]) -> None:
        del keys["rotation"]

    # the rotation mark is signed: without it the request is a second enrolment of an enrolled id
    with pytest.raises(PKIError, match="already enrolled"):
        read_request(world.ca.directory, remade(a, unmark, out=world.root / "unmarked.json"))
    # b asks for a rotation of a's key from its own directory (its own TLS key, a valid proof for its new key),
    # carrying its own certificate, then a's (public) certificate: both are refused
    impostor = world.root / "impostor"
    shutil.copytree(b.directory, impostor)
    mine = json.loads((impostor / "request.json").read_text())
    (impostor / "request.json").write_text(json.dumps(mine | {"id": "a"}))
    paths, _ = request_rotation(impostor, member="a", federation=FEDERATION, passphrase=PASSPHRASE)
    for certificate in (b.cert, a.cert):
        doc = json.loads(paths.rotation.read_text()) | {"certificate": certificate.read_text()}
        (world.root / "by-b.json").write_text(json.dumps(doc))
        with pytest.raises(PKIError) as exc:
            read_request(world.ca.directory, world.root / "by-b.json")
        assert "not signed by the TLS key this CA certified for 'a'" in one_line(exc)
    # a rotation for an id this CA never enrolled (c enrolled with another CA of the same name) is refused
    (world.root / "elsewhere").mkdir()
    elsewhere = World(world.root / "elsewhere", make_ca(world.root / "elsewhere"))
    c = elsewhere.org("c")
    install(c.directory, elsewhere.sign(c, "c.issued.json"))
    request_rotation(c.directory, member="c", federation=FEDERATION, passphrase=PASSPHRASE)
    with pytest.raises(PKIError) as exc:
        read_request(world.ca.directory, c.rotation)
    assert "a rotation request is for an enrolled silo, and 'c' is not one" in one_line(exc)
    revoke(world.ca.directory, "a", passphrase=PASSPHRASE)
    with pytest.raises(PKIError, match="'a' is revoked"):
        read_request(world.ca.directory, a.rotation)


def test_a_second_rotation_request_does_not_overwrite_the_pending_key(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    request_rotation(a.directory, member="a", federation=FEDERATION, passphrase=PASSPHRASE)
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        request_rotation(a.directory, member="a", federation=FEDERATION, passphrase=PASSPHRASE)
    assert "already in progress" in one_line(exc)
    with pytest.raises(PKIError, match="only a silo rotates its roster key, with its own id"):
        request_rotation(a.directory, member="b", federation=FEDERATION, passphrase=PASSPHRASE)
    assert snapshot(a.directory) == before
    with pytest.raises(PKIError, match="no new roster key is recorded"):
        propose(world.ca.directory, world.root / "v2.json", passphrase=PASSPHRASE, rotate=("b",))


def test_a_member_refuses_a_version_that_re_keys_it_to_a_key_it_does_not_hold(
    world: World, members: dict[str, OrgPaths]
) -> None:
    """The CA operator and K governors collude: they record a key for b that b never asked for."""
    b = members["b"]
    record_path = world.ca.members / "b.json"
    record = json.loads(record_path.read_text())
    intruder = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    record_path.write_text(json.dumps(record | {"roster_key": intruder.hex()}))
    v2 = RosterVersion.load(rotation_version(world, "v2.json", "b"))
    before = snapshot(b.directory)
    with pytest.raises(PKIError) as exc:
        pin(b).accept([v2], member="b", keys=[public(b.signing_key)])
    assert "lists 'b' with a roster key it does not hold" in one_line(exc)
    assert snapshot(b.directory) == before
    with pytest.raises(PKIError, match="with a roster key this silo holds"):
        install(b.directory, world.root / "v2.json")
    # positive control: the version itself is validly signed; only the key check refuses it
    assert pin(b).accept([v2], member="b").version == 2


def test_the_ledger_records_the_rotation_and_the_auditor_checks_it(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    old_key = public(a.signing_key)
    rotate(world, a, "a")
    new_key = public(a.next_signing_key)
    v1 = RosterVersion.load(world.root / "v1.json")
    v2 = RosterVersion.load(rotation_version(world, "v2.json", "a"))
    governance = json.loads(world.ca.governance.read_text())
    governors = [bytes.fromhex(g) for g in governance["governors"]]
    body = roster_changed_body(v1, v2, governors)
    assert (body["added"], body["removed"]) == ([], [])
    assert body["rotated"] == [
        {
            "id": "a",
            "old_key": hashlib.sha256(old_key).hexdigest(),
            "new_key": hashlib.sha256(new_key).hexdigest(),
        }
    ]
    state = RosterState.from_created(
        FEDERATION,
        {"governors": governance["governors"], "quorum": 2, "roster_version": v1.dumps()},
        None,
    )
    after, added, removed = state.apply(body)
    assert after.roster.members["a"] == new_key and (added, removed) == ((), ())
    # a flipped governor signature leaves one valid signature of the two required
    doc = json.loads(body["roster_version"])
    first = sorted(doc["signatures"])[0]
    flipped = bytearray(bytes.fromhex(doc["signatures"][first]))
    flipped[0] ^= 1
    doc["signatures"][first] = flipped.hex()
    with pytest.raises(ValueError, match="1 valid governor signature"):
        state.apply(body | {"roster_version": json.dumps(doc)})
    # a summary that hides the rotation contradicts the signed version
    with pytest.raises(ValueError, match="records rotated"):
        state.apply(body | {"rotated": []})
