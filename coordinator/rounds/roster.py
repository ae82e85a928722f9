"""The coordinator's governed roster: new versions are read from a file, verified, and adopted at a round open.

Operator story: a governed federation's ``serve.toml`` names ``[governance] roster_version`` and ``file`` (both
written by ``secagg pki install COORD_DIR``). To change the roster, the coordinator's operator installs the new
version K governors signed with ``secagg pki install COORD_DIR V.json`` (which checks it too); the running
coordinator notices the changed file at the next round open, verifies the version again against the governors it
pinned at start-up and the version in force, and adopts it for that round. Nothing changes mid-round.

Notes:
    - The chain of versions lives in the ledger: ``federation_created`` records the governance and the version
      the federation started with, each adoption is a ``roster_changed`` entry with the full signed version, so
      a restarted coordinator rebuilds its chain (and the version in force) from the ledger, and a silo catches
      up from any version it pins (``Audit.GetRoster``).
    - A version that does not verify, does not extend the version in force (old, replayed, forked, skipped), or
      whose size breaks the threshold rules of the running federation is refused with one logged line, and the
      version in force stays: failing closed, as for the revocation list.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audits import EventKind, LedgerEntry
from coordinator.config import ServeConfig
from coordinator.errors import ConfigError, PKIError
from coordinator.pki.governance import (
    RosterVersion,
    accept_chain,
    accept_chain_governed,
    governance_pins,
    roster_changed_body,
)

__all__ = ["GovernedRoster", "governed_roster"]

log = logging.getLogger(__name__)


class GovernedRoster:
    """The versions a coordinator has adopted, and the file it reads new ones from. Thread-safe.

    Args:
        version_file: the roster version file the operator replaces (``[governance] roster_version``).
        governors, quorum: the pinned governor keys and K.
        consortium_key: the pinned consortium key every roster must be signed by.
        initial: the version the federation starts with (the file's at start-up).
    """

    def __init__(
        self,
        *,
        version_file: Path,
        governors: tuple[bytes, ...],
        quorum: int,
        consortium_key: bytes,
        initial: RosterVersion,
    ) -> None:
        self.version_file = version_file
        self.consortium_key = consortium_key
        self._created = (governors, quorum)
        self._lock = threading.Lock()
        self._chain: list[RosterVersion] = [initial]
        self._governance: tuple[tuple[bytes, ...], int] = (governors, quorum)
        self._seen: bytes | None = None

    @property
    def governors(self) -> tuple[bytes, ...]:
        """The governors in force (those the federation was created with, until a version hands over)."""
        with self._lock:
            return self._governance[0]

    @property
    def quorum(self) -> int:
        """K of the governance in force."""
        with self._lock:
            return self._governance[1]

    @property
    def current(self) -> RosterVersion:
        """The version in force."""
        with self._lock:
            return self._chain[-1]

    def chain(self, since: int = 0) -> list[RosterVersion]:
        """The adopted versions newer than version ``since``, oldest first (all of them for 0)."""
        with self._lock:
            return [v for v in self._chain if v.version > since]

    def created_facts(self) -> dict[str, Any]:
        """The ``governance`` record of ``federation_created``: the pins and the version the federation starts with."""
        with self._lock:
            first = self._chain[0]
        return {
            "governors": [g.hex() for g in self._created[0]],
            "quorum": self._created[1],
            "roster_version": first.dumps(),
        }

    def resume(self, entries: list[LedgerEntry]) -> RosterVersion:
        """Rebuild the chain from the ledger (after a restart), checking each recorded version again.

        Raises:
            ConfigError: the ledger's governance differs from the pinned one, or a recorded version fails.
        """
        created = entries[0].event.body if entries else {}
        governance = created.get("governance")
        if governance is None:
            raise ConfigError(
                "governance: this federation's ledger was created without [governance]; a fixed-roster "
                "federation cannot become governed (start a new federation id)"
            )
        try:
            created_governors, created_quorum = governance_pins(governance)
        except PKIError as exc:
            raise ConfigError(f"governance: ledger entry 0: {exc}") from exc
        chain = [RosterVersion.loads(str(governance["roster_version"]))]
        in_force = (tuple(created_governors), created_quorum)
        for entry in entries:
            if entry.event.kind is EventKind.ROSTER_CHANGED:
                version = RosterVersion.loads(str(entry.event.body["roster_version"]))
                try:
                    _, in_force = accept_chain_governed(
                        [version],
                        chain[-1],
                        consortium_key=self.consortium_key,
                        governors=in_force[0],
                        quorum=in_force[1],
                    )
                except PKIError as exc:
                    raise ConfigError(f"governance: ledger entry {entry.index}: {exc}") from exc
                chain.append(version)
        with self._lock:
            pinned = self._governance
        if in_force != pinned:
            raise ConfigError(
                "governance: the pinned governors or quorum differ from the ones in force along this "
                "federation's ledger; restore the governance.json `secagg pki install` wrote"
            )
        with self._lock:
            self._chain = chain
            self._created = (tuple(created_governors), created_quorum)
            return chain[-1]

    def poll(self) -> RosterVersion | None:
        """A new version the file offers that verifies and extends the version in force, else ``None``.

        A file that did not change since the last poll is not verified again; a refused file is logged once.
        """
        try:
            data = self.version_file.read_bytes()
        except OSError as exc:
            log.error(
                "roster version %s unreadable (%s); the version in force stays",
                self.version_file,
                exc.strerror,
            )
            return None
        with self._lock:
            if data == self._seen:
                return None
            self._seen = data
            current = self._chain[-1]
            governors, quorum = self._governance
        try:
            version = RosterVersion.loads(data)
            if version.digest() == current.digest() or any(
                v.digest() == version.digest() for v in self.chain()
            ):
                return None
            accept_chain(
                [version],
                current,
                consortium_key=self.consortium_key,
                governors=governors,
                quorum=quorum,
            )
        except PKIError as exc:
            log.error("%s: %s; the version in force stays", self.version_file, exc)
            return None
        return version

    def change(self, version: RosterVersion) -> dict[str, Any]:
        """The ``roster_changed`` ledger body of adopting ``version`` (recorded before :meth:`adopt`)."""
        with self._lock:
            return roster_changed_body(self._chain[-1], version, self._governance[0])

    def adopt(self, version: RosterVersion) -> None:
        """Make ``version`` the version in force (once its ``roster_changed`` entry is in the ledger).

        A version carrying a new governance hands over: the next versions need K of its governors.
        """
        with self._lock:
            self._chain.append(version)
            if version.governance is not None:
                self._governance = version.governance


def governed_roster(config: ServeConfig) -> GovernedRoster | None:
    """The governed roster ``serve.toml`` configures, or ``None`` without ``[governance]``.

    Raises:
        ConfigError: unreadable files, or a version whose roster is not the ``roster`` file's.
    """
    g = config.governance
    if g is None:
        return None
    try:
        governors, quorum = governance_pins(_read_json(g.file))
        initial = RosterVersion.load(g.roster_version)
        if initial.governance is None:
            initial.verify(
                consortium_key=config.consortium_public_key,
                governors=governors,
                quorum=quorum,
                federation=config.federation,
            )
        elif initial.governance != (tuple(governors), quorum):
            raise PKIError(
                f"{g.roster_version} hands over to other governors than {g.file} pins; install the version "
                "again with `secagg pki install`, which writes both"
            )
        # a version that handed over was signed by the governance before it: `pki install` checked that, and
        # resume() checks it again along the ledger's chain
    except PKIError as exc:
        raise ConfigError(f"governance: {exc}") from exc
    if initial.roster.fingerprint() != config.load_roster().fingerprint():
        raise ConfigError(
            f"governance: the roster of {g.roster_version} is not the `roster` file's; install the roster "
            "version with `secagg pki install`, which writes both"
        )
    return GovernedRoster(
        version_file=g.roster_version,
        governors=tuple(governors),
        quorum=quorum,
        consortium_key=config.consortium_public_key,
        initial=initial,
    )


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PKIError(f"cannot read the governance record {path}") from exc
    if not isinstance(doc, dict):
        raise PKIError(f"{path} is not a governance record")
    return doc
