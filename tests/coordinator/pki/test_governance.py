"""Roster governance: a member installs a roster version only with K of N governor signatures, in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.errors import PKIError
from coordinator.pki import PASSPHRASE_ENV
from coordinator.pki.enrol import OrgPaths, install, propose, sign_roster
from coordinator.pki.governance import RosterVersion
from secagg import Roster
from tests.coordinator.pki.test_enrol import PASSPHRASE, World, make_ca, one_line, snapshot


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, make_ca(tmp_path))


@pytest.fixture
def members(world: World) -> dict[str, OrgPaths]:
    """Silos a and b enrolled and running on version 1 (2 of 3 governors signed it)."""
    orgs = {name: world.org(name) for name in ("a", "b")}
    for name, org in orgs.items():
        install(org.directory, world.sign(org, f"{name}.issued.json"))
    federation = world.publish("federation.json", world.roster_version("v1.json"))
    for org in orgs.values():
        install(org.directory, federation)
    return orgs


def installed(org: OrgPaths) -> tuple[int, list[str]]:
    version = RosterVersion.load(org.roster_version)
    assert Roster.loads(org.roster.read_text()) == version.roster
    return version.version, list(version.roster.members)


def test_a_member_added_with_two_of_three_signatures_is_accepted_everywhere(
    world: World, members: dict[str, OrgPaths]
) -> None:
    c = world.org("c")
    install(c.directory, world.sign(c, "c.issued.json"))
    v2 = world.roster_version("v2.json", signers=2, add=("c",))
    for org in members.values():
        assert "installed roster version 2 of 3 silos" in install(org.directory, v2)
        assert installed(org) == (2, ["a", "b", "c"])
    # The newcomer installs the federation file the CA publishes with version 2.
    install(c.directory, world.publish("federation-v2.json", v2))
    assert installed(c) == (2, ["a", "b", "c"])
    assert installed(members["a"]) == installed(c)


def test_one_signature_of_the_two_required_is_refused_and_changes_nothing(
    world: World, members: dict[str, OrgPaths]
) -> None:
    c = world.org("c")
    world.sign(c, "c.issued.json")
    v2 = world.roster_version("v2.json", signers=1, add=("c",))
    a = members["a"]
    before = snapshot(a.directory)
    with pytest.raises(PKIError) as exc:
        install(a.directory, v2)
    message = one_line(exc)
    assert "1 valid governor signature(s) of the 2 required" in message
    assert "`secagg pki roster sign`" in message
    assert snapshot(a.directory) == before
    # The CA cannot publish it either.
    with pytest.raises(PKIError, match="of the 2 required"):
        world.publish("federation-v2.json", v2)


def test_signatures_count_once_per_governor_of_the_pinned_set(
    world: World, members: dict[str, OrgPaths]
) -> None:
    v2 = world.roster_version("v2.json", signers=1, remove=("b",))
    outsider = Ed25519PrivateKey.generate()
    version = RosterVersion.load(v2).signed_by(outsider)
    # governor 0 signing again replaces its signature: still one governor.
    Path(v2).write_text(version.dumps())
    sign_roster(world.governor(0), v2, passphrase=PASSPHRASE)
    assert len(RosterVersion.load(v2).signatures) == 2
    with pytest.raises(PKIError, match="1 valid governor signature"):
        install(members["a"].directory, v2)
    # A signature copied onto another version does not verify there.
    doc = json.loads(Path(v2).read_text())
    governor_1 = world.roster_version("v2-other.json", signers=2, remove=("a",))
    other = json.loads(governor_1.read_text())["signatures"]
    doc["signatures"] |= {k: v for k, v in other.items() if k not in doc["signatures"]}
    assert (
        len(doc["signatures"]) == 3
    )  # governor 0 (valid), the outsider, governor 1 (another version)
    Path(v2).write_text(json.dumps(doc))
    with pytest.raises(PKIError, match="1 valid governor signature"):
        install(members["a"].directory, v2)


def test_a_version_that_does_not_extend_the_pinned_one_is_refused(
    world: World, members: dict[str, OrgPaths]
) -> None:
    a, b = members["a"], members["b"]
    v1 = world.root / "v1.json"
    c = world.org("c")
    world.sign(c, "c.issued.json")
    v2 = world.roster_version("v2.json", add=("c",))
    fork = world.roster_version("v2-fork.json", remove=("b",))  # another version 2 from the same 1
    install(a.directory, v2)
    with pytest.raises(PKIError) as exc:
        install(a.directory, v1)
    assert "does not extend the pinned version 2: it is old or replayed" in one_line(exc)
    with pytest.raises(PKIError, match="does not extend the pinned version 2"):
        install(a.directory, fork)
    world.publish("federation-v2.json", v2)
    v3 = world.roster_version("v3.json", remove=("c",))
    with pytest.raises(PKIError) as exc:  # b still pins version 1: version 3 skips one
        install(b.directory, v3)
    assert "install the versions in order" in one_line(exc)
    install(b.directory, v2)
    install(b.directory, v3)
    assert installed(b) == (3, ["a", "b"])


def test_a_removed_silo_does_not_install_the_version_that_removes_it(
    world: World, members: dict[str, OrgPaths]
) -> None:
    v2 = world.roster_version("v2.json", remove=("b",))
    install(members["a"].directory, v2)
    assert installed(members["a"]) == (2, ["a"])
    with pytest.raises(PKIError, match="does not list 'b'"):
        install(members["b"].directory, v2)
    assert installed(members["b"]) == (1, ["a", "b"])


def test_propose_refuses_ids_it_cannot_add_or_remove(
    world: World, members: dict[str, OrgPaths]
) -> None:
    with pytest.raises(PKIError, match="--add z: not an enrolled silo"):
        propose(world.ca.directory, world.root / "x.json", passphrase=PASSPHRASE, add=["z"])
    with pytest.raises(PKIError, match="--add a: already a member"):
        propose(world.ca.directory, world.root / "x.json", passphrase=PASSPHRASE, add=["a"])
    with pytest.raises(PKIError, match="--remove z: not a member"):
        propose(world.ca.directory, world.root / "x.json", passphrase=PASSPHRASE, remove=["z"])
    assert not (world.root / "x.json").exists()


def test_the_roster_commands_show_and_check_a_version(
    world: World, members: dict[str, OrgPaths], tmp_path: Path
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    passphrase.chmod(0o600)
    env = {PASSPHRASE_ENV: str(passphrase)}
    runner = CliRunner()
    c = world.org("c")
    world.sign(c, "c.issued.json")
    v2 = str(world.root / "v2.json")
    result = runner.invoke(
        app,
        ["pki", "roster", "propose", str(world.ca.directory), "--add", "c", "--out", v2],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "roster version 2" in result.stdout and "member c" in result.stdout
    show = ["pki", "roster", "show", v2, "--org", str(members["a"].directory)]
    refused = runner.invoke(app, show)
    assert refused.exit_code == 1 and "0 valid governor signature(s)" in refused.stderr
    declined = runner.invoke(
        app, ["pki", "roster", "sign", str(world.governor(0)), v2], input="n\n", env=env
    )
    assert declined.exit_code == 1 and not RosterVersion.load(v2).signatures
    for i in (0, 2):
        signed = runner.invoke(
            app, ["pki", "roster", "sign", str(world.governor(i)), v2, "--yes"], env=env
        )
        assert signed.exit_code == 0, signed.output
    accepted = runner.invoke(app, show)
    assert accepted.exit_code == 0, accepted.output
    assert "2 of 2 required governor signatures; extends pinned version 1" in accepted.stdout
