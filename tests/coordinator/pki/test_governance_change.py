"""Changing the governor set or K: a roster version hands over, K of the CURRENT governors sign it, the new set governs.

The federation starts with governors 0, 1, 2 and K = 2. Version 2 hands over to governors 2, 3 with K = 2 (0 and 1
leave, 3 joins). Attacks first, each with its positive control: the handover signed by one current governor is
refused (two install it); the new governors alone cannot take over (their signatures on the handover do not
count); after the handover, the old governors' quorum no longer changes the roster while the new set's does. The
member pin, the coordinator's governed roster and the auditor's check all follow the same chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audits.roster import RosterState
from coordinator.errors import PKIError
from coordinator.pki.enrol import OrgPaths, governor_init, install, propose, sign_roster
from coordinator.pki.governance import RosterVersion, roster_changed_body
from coordinator.rounds.roster import GovernedRoster
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
    """Silos a, b, c enrolled; a and b pinned to version 1; c enrolled, not yet on the roster."""
    orgs = {name: world.org(name) for name in ("a", "b")}
    for name, org in orgs.items():
        install(org.directory, world.sign(org, f"{name}.issued.json"))
    federation = world.publish("federation.json", world.roster_version("v1.json"))
    for org in orgs.values():
        install(org.directory, federation)
    orgs["c"] = world.org("c")
    install(orgs["c"].directory, world.sign(orgs["c"], "c.issued.json"))
    return orgs


def new_governor(world: World) -> Path:
    directory = world.root / "gov-new"
    governor_init(directory, passphrase=PASSPHRASE)
    return directory


def key(directory: Path) -> bytes:
    return bytes.fromhex((directory / "governor.pub").read_text().strip())


def handover(world: World, out: str, signers: list[Path], newcomer: Path) -> Path:
    """Version 2: the same roster, handed over to governors 2 and the newcomer, K = 2."""
    path = world.root / out
    propose(
        world.ca.directory,
        path,
        passphrase=PASSPHRASE,
        handover_to=([key(world.governor(2)), key(newcomer)], 2),
    )
    for directory in signers:
        sign_roster(directory, path, passphrase=PASSPHRASE)
    return path


def next_version(world: World, out: str, signers: list[Path]) -> Path:
    """Version 3: add c."""
    path = world.root / out
    propose(world.ca.directory, path, passphrase=PASSPHRASE, add=("c",))
    for directory in signers:
        sign_roster(directory, path, passphrase=PASSPHRASE)
    return path


def test_a_handover_one_current_governor_signed_is_refused_two_install_it(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    newcomer = new_governor(world)
    one = handover(world, "v2-one.json", [world.governor(0)], newcomer)
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        install(a.directory, one)
    assert "1 valid governor signature(s) of the 2 required" in one_line(exc)
    with pytest.raises(PKIError, match="1 valid governor signature"):
        pin(a).accept([RosterVersion.load(one)], member="a")
    assert snapshot(a.directory) == before
    # positive control: a second current governor's signature makes it valid; a now pins the new governance
    sign_roster(world.governor(1), one, passphrase=PASSPHRASE)
    install(a.directory, one)
    pinned = json.loads(a.governance.read_text())
    assert pinned == {"governors": [key(world.governor(2)).hex(), key(newcomer).hex()], "quorum": 2}


def test_the_incoming_governors_alone_cannot_take_over(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a = members["a"]
    newcomer = new_governor(world)
    # governor 2 stays in the new set and counts as current; the newcomer's signature does not count yet
    takeover = handover(world, "v2-takeover.json", [world.governor(2), newcomer], newcomer)
    assert len(RosterVersion.load(takeover).signatures) == 2
    before = snapshot(a.directory)
    with pytest.raises(PKIError, match="1 valid governor signature"):
        install(a.directory, takeover)
    assert snapshot(a.directory) == before


def test_after_the_handover_the_new_set_governs_and_the_old_quorum_no_longer_counts(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a, b = members["a"], members["b"]
    newcomer = new_governor(world)
    v2 = handover(world, "v2.json", [world.governor(0), world.governor(1)], newcomer)
    world.publish("federation-v2.json", v2)  # the CA follows the handover too
    install(b.directory, v2)
    # the old governors 0 and 1 sign version 3: refused by a running member's pin over the whole chain
    old = next_version(world, "v3-old.json", [world.governor(0), world.governor(1)])
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        pin(a).accept([RosterVersion.load(v2), RosterVersion.load(old)], member="a")
    assert "roster version 3 has 0 valid governor signature(s) of the 2 required" in one_line(exc)
    assert snapshot(a.directory) == before  # nothing of the chain is pinned, not even version 2
    with pytest.raises(PKIError, match="0 valid governor signature"):
        install(b.directory, old)
    # positive control: the same change signed by the new set is accepted along the chain
    (world.root / "v3-old.json").unlink()
    new = next_version(world, "v3.json", [world.governor(2), newcomer])
    newest = pin(a).accept([RosterVersion.load(v2), RosterVersion.load(new)], member="a")
    assert (newest.version, list(newest.roster.members)) == (3, ["a", "b", "c"])
    install(b.directory, new)


def test_the_coordinator_and_the_auditor_follow_the_handover(
    world: World, members: dict[str, OrgPaths], tmp_path: Path
) -> None:
    newcomer = new_governor(world)
    governance = json.loads(world.ca.governance.read_text())
    created = [bytes.fromhex(g) for g in governance["governors"]]
    v1 = RosterVersion.load(world.root / "v1.json")
    v2 = RosterVersion.load(
        handover(world, "v2.json", [world.governor(0), world.governor(1)], newcomer)
    )
    world.publish("federation-v2.json", world.root / "v2.json")
    old = RosterVersion.load(
        next_version(world, "v3-old.json", [world.governor(0), world.governor(1)])
    )
    (world.root / "v3-old.json").unlink()
    new = RosterVersion.load(next_version(world, "v3.json", [world.governor(2), newcomer]))
    consortium = bytes.fromhex(world.ca.consortium_public_key.read_text().strip())
    # the coordinator: adopts the handover, then refuses the old quorum's version 3 and adopts the new set's
    offered = tmp_path / "offered.json"
    roster = GovernedRoster(
        version_file=offered,
        governors=tuple(created),
        quorum=2,
        consortium_key=consortium,
        initial=v1,
    )
    for version, adopted in ((v2, True), (old, False), (new, True)):
        offered.write_text(version.dumps())
        polled = roster.poll()
        assert (polled is not None) == adopted, version.version
        if polled is not None:
            roster.adopt(polled)
    assert roster.current.version == 3 and roster.quorum == 2
    assert roster.governors == (key(world.governor(2)), key(newcomer))
    # the ledger bodies: the handover records the new governance; the auditor follows it
    body_v2 = roster_changed_body(v1, v2, created)
    assert body_v2["governance"]["governors"] == [key(world.governor(2)).hex(), key(newcomer).hex()]
    state = RosterState.from_created(
        FEDERATION,
        {"governors": governance["governors"], "quorum": 2, "roster_version": v1.dumps()},
        None,
    )
    after_v2, _, _ = state.apply(body_v2)
    assert after_v2.governors == (key(world.governor(2)), key(newcomer))
    new_governors = list(after_v2.governors)
    _, added, _ = after_v2.apply(roster_changed_body(v2, new, new_governors))
    assert added == ("c",)
    with pytest.raises(ValueError, match="0 valid governor signature"):
        after_v2.apply(roster_changed_body(v2, old, new_governors))
    # a ledger that hides the handover from its summary contradicts the signed version
    with pytest.raises(ValueError, match="records governance"):
        state.apply({k: v for k, v in body_v2.items() if k != "governance"})
