"""Roster versions as the ledger records them: the bytes governors sign, and the check an auditor repeats.

A roster version (``coordinator.pki.governance.RosterVersion``) is the consortium-signed roster plus a version
number, the digest of the version it replaces and K governor signatures over :func:`roster_version_payload`.
The coordinator records the version it started with in ``federation_created`` (``governance``) and every
version it adopts later as a ``roster_changed`` entry, each with its full JSON text. An auditor re-checks each
change here, with nothing but the ledger: K valid signatures by the governors ``federation_created`` names, the
consortium signature on the roster, and exact extension of the version before it (the next number, naming the
previous digest), as a transparency log refuses an inconsistent head (RFC 6962 section 2.1.2).

Notes:
    A version may hand the federation over to a new governance (governors, K) inside its signed payload: the
    auditor checks it against the governance in force before it, then checks the next changes against the new
    one, as the members and the coordinator do. A member that keeps its id with another key is a rotation
    (``rotated``, with both key fingerprints), neither added nor removed.

    The governor set is taken from ``federation_created``, which only the coordinator's audit key signs: it is
    as trustworthy as that entry, whose roster fingerprint the auditor's pinned roster is compared with. A
    coordinator that lied about the governors there would be contradicted by every member's pinned
    ``governance.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secagg.errors import SecAggError
from secagg.hazmat.keys import encode_fields
from secagg.roster import Roster

__all__ = [
    "Governance",
    "ParsedVersion",
    "RosterState",
    "check_governance",
    "governance_from_json",
    "governance_json",
    "key_fingerprint",
    "rotations",
    "roster_version_digest",
    "roster_version_payload",
]

LABEL = "secagg roster version"
FORMAT = 1


Governance = tuple[tuple[bytes, ...], int]
"""A governor set and its quorum K: (raw Ed25519 public keys, K)."""


def roster_version_payload(
    federation: str,
    version: int,
    previous: str,
    fingerprint: str,
    governance: Governance | None = None,
) -> bytes:
    """The exact bytes every governor signs for a roster version (injective field encoding).

    A version that hands the federation to a new governance (``governance``: governors and K) has it in the
    signed bytes, so the current governors' quorum approves the new set itself; versions without one keep the
    original encoding (and digests).
    """
    fields: list[bytes | str | int] = [LABEL, FORMAT, federation, version, previous, fingerprint]
    if governance is not None:
        governors, quorum = governance
        fields += ["governance", quorum, len(governors), *governors]
    return encode_fields(*fields)


def roster_version_digest(
    federation: str,
    version: int,
    previous: str,
    fingerprint: str,
    governance: Governance | None = None,
) -> str:
    """SHA-256 hex of the payload: what the next version names as ``previous``."""
    return hashlib.sha256(
        roster_version_payload(federation, version, previous, fingerprint, governance)
    ).hexdigest()


def check_governance(governors: Sequence[bytes], quorum: int) -> Governance:
    """``(governors, quorum)`` once it is a usable governance: distinct 32-byte keys and 1 <= K <= N.

    Raises:
        ValueError: one line saying what is wrong.
    """
    keys = tuple(bytes(g) for g in governors)
    if not keys or any(len(g) != 32 for g in keys) or len(set(keys)) != len(keys):
        raise ValueError("a governance needs distinct 32-byte Ed25519 governor keys")
    if not 1 <= quorum <= len(keys):
        raise ValueError(f"the quorum {quorum} is not between 1 and the {len(keys)} governors")
    return keys, quorum


def governance_json(governance: Governance) -> dict[str, Any]:
    """The JSON form of a governance (as ``governance.json`` and the ledger write it)."""
    return {"governors": [g.hex() for g in governance[0]], "quorum": governance[1]}


def governance_from_json(doc: Any) -> Governance:
    """Parse :func:`governance_json`'s form.

    Raises:
        ValueError: malformed, or not a usable governance.
    """
    try:
        governors = [bytes.fromhex(str(g)) for g in doc["governors"]]
        quorum = int(doc["quorum"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError("malformed governance (governors, quorum)") from exc
    return check_governance(governors, quorum)


@dataclass(frozen=True)
class RosterState:
    """The roster in force at a point of the ledger, and the governance that may change it.

    Attributes:
        federation: the federation id.
        governors: the governors' raw Ed25519 public keys.
        quorum: K, the valid governor signatures a change needs.
        version, digest: the version in force and its digest.
        roster: the roster in force (its signature checked under ``consortium_key``).
        consortium_key: the key every roster must be signed by.
    """

    federation: str
    governors: tuple[bytes, ...]
    quorum: int
    version: int
    digest: str
    roster: Roster
    consortium_key: bytes

    @classmethod
    def from_created(
        cls, federation: str, governance: Mapping[str, Any], consortium_key: bytes | None
    ) -> RosterState:
        """The state ``federation_created``'s ``governance`` record starts from.

        Args:
            consortium_key: the pinned consortium key, or ``None`` to take the initial roster's own.

        Raises:
            ValueError: a malformed record, or an initial version that does not verify (one line).
        """
        try:
            governors = tuple(bytes.fromhex(str(g)) for g in governance["governors"])
            quorum = int(governance["quorum"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("the governance record is malformed (governors, quorum)") from exc
        if not 1 <= quorum <= len(governors):
            raise ValueError("the governance record's quorum is not between 1 and N")
        version, previous, roster, signatures, changes = parse_version(
            governance.get("roster_version")
        )
        if changes is not None:
            raise ValueError(
                "the initial roster version cannot change the governance it starts with"
            )
        key = roster.consortium_key if consortium_key is None else consortium_key
        state = cls(federation, governors, quorum, 0, "", roster, key)
        state._check(version, previous, roster, signatures, None, first=True)
        return cls(
            federation,
            governors,
            quorum,
            version,
            roster_version_digest(federation, version, previous, roster.fingerprint()),
            roster,
            key,
        )

    def apply(
        self, body: Mapping[str, Any]
    ) -> tuple[RosterState, tuple[str, ...], tuple[str, ...]]:
        """The state after the ``roster_changed`` entry ``body``, and the members it added and removed.

        Raises:
            ValueError: the change is not signed by K governors, not signed by the consortium, does not extend
                the version in force, or its summary (version, digest, added, removed) differs from its text.
        """
        version, previous, roster, signatures, governance = parse_version(
            body.get("roster_version")
        )
        self._check(version, previous, roster, signatures, governance, first=False)
        digest = roster_version_digest(
            self.federation, version, previous, roster.fingerprint(), governance
        )
        added, removed = diff(self.roster, roster)
        summary = {
            "version": version,
            "digest": digest,
            "roster_fingerprint": roster.fingerprint(),
            "added": list(added),
            "removed": list(removed),
            "rotated": rotations(self.roster, roster),
            "governance": governance_json(governance) if governance is not None else None,
        }
        for name, value in summary.items():
            recorded = body.get(
                name, [] if name == "rotated" else None
            )  # no rotation, no governance change: older ledgers
            if _plain(recorded) != value:
                raise ValueError(
                    f"roster_changed records {name} {_plain(recorded)!r}, but the signed version "
                    f"gives {value!r}"
                )
        governors, quorum = governance if governance is not None else (self.governors, self.quorum)
        state = RosterState(
            self.federation,
            governors,
            quorum,
            version,
            digest,
            roster,
            self.consortium_key,
        )
        return state, added, removed

    def _check(
        self,
        version: int,
        previous: str,
        roster: Roster,
        signatures: Mapping[bytes, bytes],
        governance: Governance | None,
        *,
        first: bool,
    ) -> None:
        if roster.federation != self.federation:
            raise ValueError(
                f"roster version {version} is for federation {roster.federation!r}, not {self.federation!r}"
            )
        try:
            roster.verify(self.consortium_key)
        except SecAggError as exc:
            raise ValueError(
                f"roster version {version} is not signed by the consortium key"
            ) from exc
        payload = roster_version_payload(
            self.federation, version, previous, roster.fingerprint(), governance
        )
        signers = valid_signers(
            payload, signatures, self.governors
        )  # the governance in force signs
        if len(signers) < self.quorum:
            raise ValueError(
                f"roster version {version} has {len(signers)} valid governor signature(s) of the "
                f"{self.quorum} required"
            )
        if not first and (version != self.version + 1 or previous != self.digest):
            raise ValueError(
                f"roster version {version} does not extend version {self.version} (it must be version "
                f"{self.version + 1} naming digest {self.digest})"
            )


def valid_signers(
    payload: bytes, signatures: Mapping[bytes, bytes], governors: Sequence[bytes]
) -> list[bytes]:
    """The governors of ``governors`` whose signature over ``payload`` verifies (each counted once)."""
    valid = []
    for governor in dict.fromkeys(governors):
        signature = signatures.get(governor)
        if signature is None:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(governor).verify(signature, payload)
        except (InvalidSignature, ValueError):
            continue
        valid.append(governor)
    return valid


def diff(old: Roster, new: Roster) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ids ``new`` adds and the ids it removes (a member that keeps its id with another key is in neither:
    see :func:`rotations`)."""
    added = tuple(m for m in new.members if m not in old.members)
    removed = tuple(m for m in old.members if m not in new.members)
    return added, removed


def key_fingerprint(key: bytes) -> str:
    """SHA-256 hex of a raw Ed25519 public key: what ``secagg pki request`` prints as the "roster key"."""
    return hashlib.sha256(key).hexdigest()


def rotations(old: Roster, new: Roster) -> list[dict[str, str]]:
    """The members ``new`` keeps with another roster key: ``{"id", "old_key", "new_key"}`` (key fingerprints).

    A rotation keeps the member's id, hence its index (its Shamir x-coordinate and mask order), and from the
    version's ``first_round`` on, its signatures verify under the new key only.
    """
    return [
        {
            "id": m,
            "old_key": key_fingerprint(old.members[m]),
            "new_key": key_fingerprint(new.members[m]),
        }
        for m in new.members
        if m in old.members and old.members[m] != new.members[m]
    ]


class ParsedVersion(NamedTuple):
    """A roster version's fields, as :func:`parse_version` reads them."""

    version: int
    previous: str
    roster: Roster
    signatures: dict[bytes, bytes]
    governance: Governance | None


def parse_version(text: Any) -> ParsedVersion:
    """The (version, previous, roster, signatures, governance) of a roster version's JSON text.

    Raises:
        ValueError: not a well-formed roster version.
    """
    try:
        data = json.loads(str(text))
        version = int(data["version"])
        previous = str(data["previous"])
        roster = Roster.loads(data["roster"])
        signatures = {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["signatures"].items()}
        raw = data.get("governance")
        governance = governance_from_json(raw) if raw is not None else None
    except (ValueError, KeyError, TypeError, AttributeError, SecAggError) as exc:
        raise ValueError("not a well-formed roster version") from exc
    if version < 1 or (version == 1) != (previous == ""):
        raise ValueError("not a well-formed roster version (version number and previous digest)")
    return ParsedVersion(version, previous, roster, signatures, governance)


def _plain(value: Any) -> Any:
    """A frozen ledger value as plain JSON (tuples as lists, read-only mappings as dicts)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
