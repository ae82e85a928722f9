"""The signed roster: round trip, pinned-key verification, tampering, and id/key validation."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg import InvalidParameters, InvalidSignature, Roster
from tests.secagg.harness import Federation, make_federation, seeded_rng


@pytest.fixture
def fed() -> Federation:
    return make_federation(4, seed=3, federation="hospitals-eu")


def key(seed: int) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seeded_rng(seed)(32)).public_key().public_bytes_raw()
    )


def test_round_trip_preserves_everything_and_still_verifies(fed: Federation) -> None:
    text = fed.roster.dumps()
    again = Roster.loads(text)
    assert again == fed.roster
    assert Roster.loads(text.encode()) == fed.roster
    again.verify(fed.roster.consortium_key)
    assert again.fingerprint() == fed.roster.fingerprint()
    assert again.dumps() == text  # canonical: sorted keys, stable output
    assert [again.index(s) for s in again.members] == [1, 2, 3, 4]
    assert again.key("silo-02") == fed.roster.members["silo-02"]


def test_members_are_sorted_and_immutable() -> None:
    consortium = Ed25519PrivateKey.from_private_bytes(bytes(32))
    roster = Roster.create(
        federation="f", members={"b": key(1), "a": key(2), "c": key(3)}, consortium_key=consortium
    )
    assert list(roster.members) == ["a", "b", "c"]
    assert roster.index("a") == 1
    assert roster.index("c") == 3
    with pytest.raises(TypeError):
        roster.members["d"] = key(4)  # type: ignore[index]
    with pytest.raises(KeyError):
        roster.index("zz")
    assert roster.signature.hex() not in repr(roster)


def test_wrong_pinned_key_is_refused(fed: Federation) -> None:
    other = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key().public_bytes_raw()
    with pytest.raises(InvalidSignature, match="different consortium key"):
        fed.roster.verify(other)


def test_roster_re_signed_by_another_consortium_is_refused(fed: Federation) -> None:
    attacker = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
    members = {**fed.roster.members, "intruder": key(9)}
    forged = Roster.create(
        federation=fed.roster.federation, members=members, consortium_key=attacker
    )
    forged.verify(attacker.public_key().public_bytes_raw())  # valid under its own key...
    with pytest.raises(InvalidSignature):
        forged.verify(fed.roster.consortium_key)  # ...but not under the pinned one


@pytest.mark.parametrize(
    "tamper",
    ["member key", "added member", "removed member", "renamed member", "federation", "signature"],
)
def test_tampered_roster_json_does_not_verify(fed: Federation, tamper: str) -> None:
    data = json.loads(fed.roster.dumps())
    members = data["members"]
    if tamper == "member key":
        members["silo-01"] = key(50).hex()
    elif tamper == "added member":
        members["silo-99"] = key(51).hex()
    elif tamper == "removed member":
        del members["silo-03"]
    elif tamper == "renamed member":
        members["silo-77"] = members.pop("silo-00")
    elif tamper == "federation":
        data["federation"] = "hospitals-us"
    else:
        data["signature"] = bytes(64).hex()
    roster = Roster.loads(json.dumps(data))
    with pytest.raises(InvalidSignature):
        roster.verify(fed.roster.consortium_key)


INVALID_IDS = [
    "",
    "Silo",
    "-silo",
    ".silo",
    "_silo",
    "silo a",
    "silo/a",
    "a" * 64,
    "silö",
    "silo:1",
    " silo",
]


@pytest.mark.parametrize("silo", INVALID_IDS)
def test_invalid_ids_are_refused(fed: Federation, silo: str) -> None:
    with pytest.raises(InvalidParameters, match="invalid silo id"):
        Roster.create(federation="f", members={silo: key(1)}, consortium_key=fed.consortium)
    data = json.loads(fed.roster.dumps())
    data["members"][silo] = key(2).hex()
    with pytest.raises(InvalidParameters):
        Roster.loads(json.dumps(data))


@pytest.mark.parametrize("silo", ["silo-a\n", "a\n"])
def test_id_with_a_trailing_newline_is_refused(fed: Federation, silo: str) -> None:
    with pytest.raises(InvalidParameters, match="invalid silo id"):
        Roster.create(federation="f", members={silo: key(1)}, consortium_key=fed.consortium)


@pytest.mark.parametrize("silo", ["a", "0", "a" * 63, "hospital-a.eu_1", "9lives"])
def test_valid_ids_are_accepted(fed: Federation, silo: str) -> None:
    roster = Roster.create(federation="f", members={silo: key(1)}, consortium_key=fed.consortium)
    roster.verify(fed.consortium.public_key().public_bytes_raw())


@pytest.mark.parametrize(
    ("members", "federation", "why"),
    [
        ({"a": b"\x01" * 31}, "f", "not 32 bytes"),
        ({"a": b"\x01" * 33}, "f", "not 32 bytes"),
        ({"a": key(1), "b": key(1)}, "f", "share a public key"),
        ({}, "f", "no members"),
        ({"a": key(1)}, "", "federation"),
    ],
)
def test_invalid_members_are_refused(
    fed: Federation, members: dict[str, bytes], federation: str, why: str
) -> None:
    with pytest.raises(InvalidParameters, match=why):
        Roster.create(federation=federation, members=members, consortium_key=fed.consortium)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        "null",
        '{"format": 2}',
        b"\xff\xfe",
        lambda d: {**d, "format": 2},
        lambda d: {k: v for k, v in d.items() if k != "signature"},
        lambda d: {**d, "consortium_key": "zz"},
        lambda d: {**d, "members": ["silo-00"]},
        lambda d: {**d, "members": {"silo-00": 5}},
    ],
    ids=lambda t: t if isinstance(t, str) else "mutated",
)
def test_malformed_roster_json_is_refused(fed: Federation, text: object) -> None:
    if callable(text):
        text = json.dumps(text(json.loads(fed.roster.dumps())))
    with pytest.raises(InvalidParameters):
        Roster.loads(text)  # type: ignore[arg-type]


def test_consortium_key_of_the_wrong_length_does_not_verify(fed: Federation) -> None:
    broken = dataclasses.replace(fed.roster, consortium_key=fed.roster.consortium_key[:31])
    with pytest.raises(InvalidSignature):
        broken.verify(broken.consortium_key)
