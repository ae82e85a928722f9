"""Roster governance: a roster version is valid with K of N governor signatures and extends the pinned one.

A *roster version* wraps the consortium-signed :class:`secagg.Roster` with a version number, the digest of the
version it replaces, and the governors' Ed25519 signatures over both::

    CA operator   secagg pki roster propose CA_DIR --out V.json [--remove ID]   version n+1, previous = digest(n)
    governor (K)  secagg pki roster sign GOV_DIR V.json                         adds its signature, in place
    anyone        secagg pki roster show V.json                                 members, version, signatures
    each member   secagg pki install ORG_DIR V.json                             verified, then pinned

Notes:
    - Two keys must agree before a member installs a roster: the consortium key (which the CA operator holds)
      signs the roster itself, and K distinct governors of the pinned set sign (federation, version, previous
      digest, roster fingerprint). Neither the CA operator nor fewer than K governors can add, remove or
      re-key a member (DESIGN section 10: "the roster changes only with a quorum of governors").
    - A version must *extend* the pinned one: exactly the next number and the pinned version's digest as
      ``previous``. A replayed old version, a fork (two different version n+1 from the same n) installed after
      the other, or a skipped version is refused, as a transparency log refuses an inconsistent head
      (RFC 6962 section 2.1.2). The first version a member installs is 1 (``previous`` empty) or, for a member
      that joins later, any version carrying K valid signatures (trust on first install, as for the CA).
    - The governor set and K are pinned from the federation file on first install (they come from
      ``governance.json``, which ``ca init`` wrote from the governors' own ``governor.pub`` files). A version may
      carry a new ``governance`` (``roster propose --governor ... --quorum K``): it is inside the signed payload,
      K of the governors *in force* must sign it, and from it on the new set governs (:func:`accept_chain_governed`
      follows the chain; members rewrite ``governance.json``). The incoming governors alone cannot take over,
      and the outgoing ones stop counting. This is the old-threshold half of TUF's root rotation (The Update
      Framework specification, section 5.3.4, which also asks a threshold of the new root's keys; here the
      current K alone decides, as issue 16 specifies, and the new governors prove their keys by signing later).
    - A member's rotated roster key (``request --rotate``) enters the roster the same way: a version K governors
      signed that lists the member with its new key, at the same index; the ledger records it under ``rotated``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.roster import (
    Governance,
    check_governance,
    diff,
    governance_from_json,
    governance_json,
    roster_version_payload,
    rotations,
)
from audits.roster import valid_signers as _valid_signers
from coordinator.errors import PKIError
from coordinator.pki.custody import write_new_file
from secagg import Roster, SecAggError

__all__ = [
    "KIND_ROSTER_VERSION",
    "RosterVersionPin",
    "RosterVersion",
    "accept_chain",
    "accept_chain_governed",
    "check_extends",
    "roster_changed_body",
]

KIND_ROSTER_VERSION = "secagg-roster-version"
_FORMAT = 1


@dataclass(frozen=True)
class RosterVersion:
    """One version of the federation's roster and the governor signatures it has collected.

    Attributes:
        version: 1, 2, ...
        previous: SHA-256 hex digest of the version it replaces (empty for version 1).
        roster: the consortium-signed roster.
        signatures: governor public key (raw 32 bytes) -> Ed25519 signature over :meth:`payload`.
        governance: the governors and K that govern from this version on, or ``None`` to keep the ones in force.
            K of the governors in force *before* this version must sign it (they hand over; the new set alone
            cannot take over).
    """

    version: int
    previous: str
    roster: Roster
    signatures: Mapping[bytes, bytes] = field(default_factory=dict)
    governance: Governance | None = None

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("roster versions start at 1")
        if (self.version == 1) != (self.previous == ""):
            raise ValueError("version 1 has no previous digest, and every later version has one")
        if self.governance is not None:
            if self.version == 1:
                raise ValueError(
                    "version 1 starts with the federation's governance; it cannot change it"
                )
            object.__setattr__(self, "governance", check_governance(*self.governance))
        object.__setattr__(self, "signatures", MappingProxyType(dict(self.signatures)))

    @property
    def federation(self) -> str:
        """The roster's federation."""
        return self.roster.federation

    def payload(self) -> bytes:
        """The exact bytes every governor signs."""
        return roster_version_payload(
            self.federation, self.version, self.previous, self.roster.fingerprint(), self.governance
        )

    def digest(self) -> str:
        """SHA-256 hex of :meth:`payload`: what the next version names as ``previous``."""
        return hashlib.sha256(self.payload()).hexdigest()

    def signed_by(self, governor_key: Ed25519PrivateKey) -> RosterVersion:
        """A copy with ``governor_key``'s signature added (replacing an earlier one by the same key)."""
        public = governor_key.public_key().public_bytes_raw()
        signatures = dict(self.signatures) | {public: governor_key.sign(self.payload())}
        return RosterVersion(self.version, self.previous, self.roster, signatures, self.governance)

    def valid_signers(self, governors: Sequence[bytes]) -> list[bytes]:
        """The governors of ``governors`` whose signature verifies (each counted once)."""
        return _valid_signers(self.payload(), self.signatures, governors)

    def verify(
        self,
        *,
        consortium_key: bytes,
        governors: Sequence[bytes],
        quorum: int,
        federation: str,
    ) -> None:
        """Check the consortium signature, the federation and a quorum of governor signatures.

        Raises:
            PKIError: one line saying which check failed and what to do.
        """
        if self.federation != federation:
            raise PKIError(
                f"roster version {self.version} is for federation {self.federation!r}, not {federation!r}"
            )
        try:
            self.roster.verify(consortium_key)
        except SecAggError as exc:
            raise PKIError(
                f"roster version {self.version} is not signed by the pinned consortium key; do not install it"
            ) from exc
        signers = self.valid_signers(governors)
        if len(signers) < quorum:
            raise PKIError(
                f"roster version {self.version} has {len(signers)} valid governor signature(s) of the "
                f"{quorum} required: ask {quorum - len(signers)} more governor(s) to run "
                "`secagg pki roster sign`"
            )

    def dumps(self) -> str:
        """JSON (keys and signatures as hex)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "kind": KIND_ROSTER_VERSION,
                "federation": self.federation,
                "version": self.version,
                "previous": self.previous,
                "roster": self.roster.dumps(),
                "signatures": {k.hex(): v.hex() for k, v in sorted(self.signatures.items())},
            }
            | ({"governance": governance_json(self.governance)} if self.governance else {}),
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def loads(cls, text: str | bytes) -> RosterVersion:
        """Parse a roster version (then :meth:`verify` it against pinned keys).

        Raises:
            PKIError: not a roster version, or malformed.
        """
        try:
            data = json.loads(text)
            if data.get("kind") != KIND_ROSTER_VERSION or data.get("format") != _FORMAT:
                raise ValueError("not a roster version")
            version = cls(
                int(data["version"]),
                str(data["previous"]),
                Roster.loads(data["roster"]),
                {bytes.fromhex(k): bytes.fromhex(v) for k, v in data["signatures"].items()},
                governance_from_json(data["governance"]) if "governance" in data else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError, SecAggError) as exc:
            raise PKIError("not a well-formed secagg roster version file") from exc
        if version.federation != data["federation"]:
            raise PKIError("the roster version's federation differs from its roster's")
        return version

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RosterVersion:
        """Read and parse ``path``.

        Raises:
            PKIError: unreadable or malformed (the message names the file).
        """
        try:
            return cls.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PKIError(f"cannot read the roster version {path}: {exc.strerror}") from exc
        except PKIError as exc:
            raise PKIError(f"{path}: {exc}") from exc


def check_extends(new: RosterVersion, pinned: RosterVersion | None) -> None:
    """Refuse ``new`` unless it is the next version after ``pinned`` (or version 1 when nothing is pinned).

    Raises:
        PKIError: an old or repeated version, a skipped version, or another branch.
    """
    if pinned is None:
        return
    if new.version <= pinned.version:
        raise PKIError(
            f"roster version {new.version} does not extend the pinned version {pinned.version}: "
            "it is old or replayed; install the newest version"
        )
    if new.version != pinned.version + 1 or new.previous != pinned.digest():
        raise PKIError(
            f"roster version {new.version} does not extend the pinned version {pinned.version} "
            f"(it must be version {pinned.version + 1} naming digest {pinned.digest()}); install the "
            "versions in order, or report a fork to the governors"
        )


def governance_pins(doc: Mapping[str, Any]) -> tuple[list[bytes], int]:
    """The governor keys and quorum of a ``governance`` mapping (from ``governance.json``).

    Raises:
        PKIError: malformed.
    """
    try:
        governors, quorum = governance_from_json(doc)
    except ValueError as exc:
        raise PKIError(f"malformed governance record: {exc}") from exc
    return list(governors), quorum


def accept_chain(
    chain: Sequence[RosterVersion],
    pinned: RosterVersion,
    *,
    consortium_key: bytes,
    governors: Sequence[bytes],
    quorum: int,
) -> RosterVersion:
    """The newest version of ``chain`` once every version verifies and extends the one before, from ``pinned``.

    Each version must carry K valid signatures of the *pinned* governors and the consortium signature, and be
    exactly the next version after the one before it (the first after ``pinned``). Versions up to ``pinned``
    (a catch-up answer may repeat it) are skipped only if they are the pinned version itself.

    Raises:
        PKIError: one line naming the first version refused; nothing is accepted then.
    """
    return accept_chain_governed(
        chain, pinned, consortium_key=consortium_key, governors=governors, quorum=quorum
    )[0]


def accept_chain_governed(
    chain: Sequence[RosterVersion],
    pinned: RosterVersion,
    *,
    consortium_key: bytes,
    governors: Sequence[bytes],
    quorum: int,
) -> tuple[RosterVersion, Governance]:
    """:func:`accept_chain`, following governance changes: the newest version and the governance in force after it.

    ``governors`` and ``quorum`` are the governance in force at ``pinned``; a version that carries a new
    governance must be signed by K of the governance in force before it, and the versions after it by the new
    one (a governor removed there no longer counts).

    Raises:
        PKIError: one line naming the first version refused; nothing is accepted then.
    """
    current = pinned
    governance: Governance = (tuple(governors), quorum)
    for version in chain:
        if version.version == current.version and version.digest() == current.digest():
            continue
        version.verify(
            consortium_key=consortium_key,
            governors=governance[0],
            quorum=governance[1],
            federation=pinned.federation,
        )
        check_extends(version, current)
        current = version
        if version.governance is not None:
            governance = version.governance
    return current, governance


def roster_changed_body(
    old: RosterVersion, new: RosterVersion, governors: Sequence[bytes]
) -> dict[str, Any]:
    """The ``roster_changed`` ledger body: the full signed version and a summary an auditor re-derives."""
    added, removed = diff(old.roster, new.roster)
    return {
        "roster_version": new.dumps(),
        "version": new.version,
        "previous": new.previous,
        "digest": new.digest(),
        "roster_fingerprint": new.roster.fingerprint(),
        "added": list(added),
        "removed": list(removed),
        "rotated": rotations(old.roster, new.roster),
        "signers": [g.hex() for g in new.valid_signers(governors)],
    } | ({"governance": governance_json(new.governance)} if new.governance else {})


@dataclass(frozen=True)
class RosterVersionPin:
    """What a member pins to accept new roster versions: its pinned version file, governance and consortium key.

    A running silo accepts a version the coordinator serves only through :meth:`accept`, which verifies the
    whole chain against these pins and then rewrites the two files (``roster_version`` and ``roster``) as
    ``secagg pki install`` does, so a restart starts from the new version.

    Args:
        version_file: the pinned roster version (``roster-version.json``), rewritten on acceptance.
        roster_file: the roster file the member's configuration names, rewritten with the new roster.
        governance_file: the pinned governor keys and K (``governance.json``), rewritten when an accepted version
            carries a new governance.
        consortium_key: the pinned consortium key.
    """

    version_file: Path
    roster_file: Path
    governance_file: Path
    consortium_key: bytes

    @classmethod
    def load(
        cls,
        *,
        version_file: str | os.PathLike[str],
        governance_file: str | os.PathLike[str],
        roster_file: str | os.PathLike[str],
        consortium_key: bytes,
    ) -> RosterVersionPin:
        """The pins in these files (the governance record is checked now and read again at each accept).

        Raises:
            PKIError: unreadable or malformed.
        """
        pin = cls(Path(version_file), Path(roster_file), Path(governance_file), consortium_key)
        pin.governance()
        return pin

    def governance(self) -> Governance:
        """The pinned governors and K (``governance.json``; rewritten when a version hands over).

        Raises:
            PKIError: unreadable or malformed.
        """
        try:
            doc = json.loads(self.governance_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PKIError(f"cannot read the governance record {self.governance_file}") from exc
        governors, quorum = governance_pins(doc)
        return tuple(governors), quorum

    def pinned(self) -> RosterVersion:
        """The pinned version (read from its file).

        Raises:
            PKIError: unreadable or malformed.
        """
        return RosterVersion.load(self.version_file)

    def accept(
        self,
        chain: Sequence[RosterVersion],
        *,
        member: str | None = None,
        keys: Sequence[bytes] = (),
    ) -> RosterVersion:
        """Verify ``chain`` against the pins (:func:`accept_chain`), then pin its newest version.

        Args:
            chain: the versions after the pinned one, oldest first.
            member: this member's id; the new version must still list it (else nothing is pinned).
            keys: the roster public keys ``member`` holds (its live key, and a rotated one not yet in force);
                if given, the new version must list ``member`` with one of them: a version that re-keys a member
                to a key it never asked for is refused, whoever signed it.

        Returns:
            The newly pinned version (the pinned one if ``chain`` adds nothing).

        Raises:
            PKIError: a version is refused, or would drop ``member``: the pins stay as they were.
        """
        pinned = self.pinned()
        governors, quorum = self.governance()
        newest, governance = accept_chain_governed(
            chain,
            pinned,
            consortium_key=self.consortium_key,
            governors=governors,
            quorum=quorum,
        )
        if newest.digest() == pinned.digest():
            return pinned
        if member is not None and member not in newest.roster.members:
            raise PKIError(
                f"roster version {newest.version} removes {member!r} from the federation; this member "
                "takes no further part"
            )
        if member is not None and keys and newest.roster.members[member] not in keys:
            raise PKIError(
                f"roster version {newest.version} lists {member!r} with a roster key it does not hold "
                f"(sha256 {hashlib.sha256(newest.roster.members[member]).hexdigest()}); refuse it and "
                "tell the governors"
            )
        files = [(self.roster_file, newest.roster.dumps())]
        if governance != (governors, quorum):
            files.append(
                (
                    self.governance_file,
                    json.dumps(governance_json(governance), indent=2, sort_keys=True),
                )
            )
        files.append((self.version_file, newest.dumps()))  # last: the version pins the rest
        for path, data in files:
            partial = path.with_name(path.name + ".partial")
            partial.unlink(missing_ok=True)
            write_new_file(partial, (data + "\n").encode("utf-8"), private=False)
            os.replace(partial, path)
        return newest
