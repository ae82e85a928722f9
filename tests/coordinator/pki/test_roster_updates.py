"""Roster versions accepted while running: a silo's pin (catch-up chains) and the coordinator's governed roster.

Each attack is shown against the pin with the version it refuses, next to the same change with the signatures it
needs (the positive control): the refusal is caused by the missing signature or the broken extension alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.errors import PKIError
from coordinator.pki.enrol import OrgPaths, install
from coordinator.pki.governance import RosterVersion, RosterVersionPin, governance_pins
from coordinator.rounds.roster import GovernedRoster
from tests.coordinator.pki.test_enrol import World, make_ca, one_line, snapshot


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, make_ca(tmp_path))


@pytest.fixture
def members(world: World) -> dict[str, OrgPaths]:
    """Silos a and b enrolled and pinned to version 1; silo c enrolled with the CA, not yet on the roster."""
    orgs = {name: world.org(name) for name in ("a", "b")}
    for name, org in orgs.items():
        install(org.directory, world.sign(org, f"{name}.issued.json"))
    federation = world.publish("federation.json", world.roster_version("v1.json"))
    for org in orgs.values():
        install(org.directory, federation)
    orgs["c"] = world.org("c")
    install(orgs["c"].directory, world.sign(orgs["c"], "c.issued.json"))
    return orgs


def pin(org: OrgPaths) -> RosterVersionPin:
    return RosterVersionPin.load(
        version_file=org.roster_version,
        governance_file=org.governance,
        roster_file=org.roster,
        consortium_key=bytes.fromhex(org.consortium_public_key.read_text().strip()),
    )


def versions(*paths: Path) -> list[RosterVersion]:
    return [RosterVersion.load(p) for p in paths]


def test_a_running_member_accepts_a_chain_of_versions_two_of_three_governors_signed(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    v2 = world.roster_version("v2.json", add=("c",))
    world.publish("federation-v2.json", v2)
    v3 = world.roster_version("v3.json", remove=("b",))
    newest = pin(a).accept(versions(world.root / "v1.json", v2, v3), member="a")
    assert newest.version == 3
    assert list(newest.roster.members) == ["a", "c"]
    # pinned like `secagg pki install` pins: both files, so a restart starts from version 3
    assert RosterVersion.load(a.roster_version) == newest
    assert a.roster.read_text().strip() == newest.roster.dumps()
    assert (
        pin(a).accept(versions(v3), member="a") == newest
    )  # the version in force again: no change


def test_one_governor_signature_is_refused_and_the_pin_stays(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    one = world.roster_version("v2-one.json", signers=1, add=("c",))
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        pin(a).accept(versions(one), member="a")
    assert "1 valid governor signature(s) of the 2 required" in one_line(exc)
    assert snapshot(a.directory) == before
    # positive control: the same change with the second governor's signature is accepted
    two = world.roster_version("v2.json", signers=2, add=("c",))
    assert RosterVersion.load(two).roster == RosterVersion.load(one).roster
    assert pin(a).accept(versions(two), member="a").version == 2


def test_a_non_governors_signature_does_not_count(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    path = world.roster_version("v2.json", signers=1, add=("c",))
    forged = RosterVersion.load(path).signed_by(Ed25519PrivateKey.generate())
    assert len(forged.signatures) == 2
    before = snapshot(a.directory)
    with pytest.raises(PKIError, match="1 valid governor signature"):
        pin(a).accept([forged], member="a")
    assert snapshot(a.directory) == before


def test_versions_that_do_not_extend_the_pinned_one_are_refused_and_the_pin_stays(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a, b = members["a"], members["b"]
    v1 = world.root / "v1.json"
    v2 = world.roster_version("v2.json", add=("c",))
    fork = world.roster_version("v2-fork.json", remove=("b",))  # another version 2 from the same 1
    world.publish("federation-v2.json", v2)
    v3 = world.roster_version("v3.json", remove=("c",))
    # skipped: b pins version 1 and is offered version 3 alone
    before = snapshot(b.directory)
    with pytest.raises(PKIError) as exc:
        pin(b).accept(versions(v3), member="b")
    assert "install the versions in order" in one_line(exc)
    assert snapshot(b.directory) == before
    # a chain with a bad link is refused whole: nothing of it is pinned
    with pytest.raises(PKIError, match="does not extend"):
        pin(b).accept(versions(fork, v3), member="b")
    assert snapshot(b.directory) == before
    # old or replayed, and forked, once version 2 is pinned
    pin(a).accept(versions(v2), member="a")
    before = snapshot(a.directory)
    for refused, expected in ((v1, "it is old or replayed"), (fork, "does not extend")):
        with pytest.raises(PKIError, match=expected):
            pin(a).accept(versions(refused), member="a")
        assert snapshot(a.directory) == before


def test_a_member_the_version_removes_keeps_its_pin(
    world: World, members: dict[str, OrgPaths]
) -> None:
    b = members["b"]
    v2 = world.roster_version("v2.json", remove=("b",), add=("c",))
    before = snapshot(b.directory)
    with pytest.raises(PKIError, match="removes 'b' from the federation"):
        pin(b).accept(versions(v2), member="b")
    assert snapshot(b.directory) == before


def governed(org: OrgPaths) -> GovernedRoster:
    governors, quorum = governance_pins(json.loads(org.governance.read_text()))
    return GovernedRoster(
        version_file=org.roster_version,
        governors=tuple(governors),
        quorum=quorum,
        consortium_key=bytes.fromhex(org.consortium_public_key.read_text().strip()),
        initial=RosterVersion.load(org.roster_version),
    )


def test_the_coordinator_offers_only_versions_that_verify_and_extend_the_one_in_force(
    world: World, members: dict[str, OrgPaths], caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = world.org("coordinator", role="coordinator")
    install(coordinator.directory, world.sign(coordinator, "coordinator.issued.json"))
    install(coordinator.directory, world.root / "federation.json")
    roster = governed(coordinator)
    assert roster.poll() is None  # the file holds the version in force
    # the operator copies a version with one signature over the file (bypassing `secagg pki install`)
    one = world.roster_version("v2-one.json", signers=1, add=("c",))
    coordinator.roster_version.write_bytes(one.read_bytes())
    assert roster.poll() is None
    assert "1 valid governor signature(s) of the 2 required" in caplog.text
    assert roster.current.version == 1
    # positive control: with two signatures the same change is offered, and adopted only when asked
    two = world.roster_version("v2.json", add=("c",))
    coordinator.roster_version.write_bytes(two.read_bytes())
    offered = roster.poll()
    assert offered is not None and offered.version == 2
    assert roster.current.version == 1
    body = roster.change(offered)
    assert roster.current.version == 1
    roster.adopt(offered)
    assert roster.current == offered
    assert (body["version"], body["added"], body["removed"]) == (2, ["c"], [])
    assert len(body["signers"]) == 2
    assert [v.version for v in roster.chain()] == [1, 2]
    assert [v.version for v in roster.chain(since=1)] == [2]
    # a replay of version 1 afterwards is not offered
    coordinator.roster_version.write_bytes((world.root / "v1.json").read_bytes())
    assert roster.poll() is None
    assert roster.current.version == 2
