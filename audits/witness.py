"""What a silo runs to hold the coordinator to its history: a checkpoint witness and local ledger.

Notes:
    A coordinator that rewrites its log must either sign a checkpoint that is not an
    extension of one it signed before (caught here by the RFC 9162 2.1.4 consistency proof),
    or keep showing silos an old view (caught when any silo's latest checkpoint is compared
    with a bundle: see ``verify_bundle(..., checkpoints=...)``). This is the "gossip" defence
    of Certificate Transparency (RFC 9162 section 8.1.4) with the silos as witnesses. The
    witness also keeps the silo's own record of what it sent and spent, so the silo can later
    prove which facts the coordinator should have logged (its attestations, by inclusion proof).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audits.canonical import canonical_json, parse_canonical
from audits.checkpoint import SignedCheckpoint, parse_checkpoint, verify_checkpoint
from audits.errors import LedgerError, VerificationError
from audits.events import EventKind, LedgerEntry, SchemaError, utc_now
from audits.merkle import leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "SENT",
    "CheckpointWitness",
    "LocalRecord",
    "WitnessStatement",
    "check_fork",
    "sign_statement",
    "statement_payload",
    "verify_statement",
]

STATEMENT_CONTEXT: Final = "secagg-witness-statement/v1"
WITHHOLDING_ROUNDS: Final = 2
"""Rounds without a fresh statement from a peer before a silo reports it withheld."""

SENT: Final = "sent"
"""The kind of local record a silo keeps of each upload (with its signed privacy attestation, if any)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accepted (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS confirmed (
    record_id INTEGER PRIMARY KEY,
    idx       INTEGER NOT NULL,
    size      INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS confirmed_no_update BEFORE UPDATE ON confirmed
BEGIN SELECT RAISE(ABORT, 'witness state is append-only'); END;
CREATE TRIGGER IF NOT EXISTS confirmed_no_delete BEFORE DELETE ON confirmed
BEGIN SELECT RAISE(ABORT, 'witness state is append-only'); END;
CREATE TRIGGER IF NOT EXISTS accepted_no_update BEFORE UPDATE ON accepted
BEGIN SELECT RAISE(ABORT, 'witness state is append-only'); END;
CREATE TRIGGER IF NOT EXISTS accepted_no_delete BEFORE DELETE ON accepted
BEGIN SELECT RAISE(ABORT, 'witness state is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'local ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'local ledger is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """One fact from a silo's local ledger."""

    record_id: int
    kind: str
    body: Mapping[str, Any]
    time: str


@dataclass(frozen=True, slots=True)
class WitnessStatement:
    """A silo's signed statement of the latest checkpoint it accepted (DESIGN 7, fork detection)."""

    federation: str
    silo: str
    note: str
    signature: bytes

    def dumps(self) -> str:
        """The statement as a JSON file (what ``secagg audit verify --statement`` reads)."""
        return canonical_json(
            {
                "federation": self.federation,
                "silo": self.silo,
                "note": self.note,
                "signature": self.signature.hex(),
            }
        ).decode("utf-8")

    @classmethod
    def loads(cls, text: str) -> WitnessStatement:
        """Parse :meth:`dumps` output.

        Raises:
            VerificationError: not a statement.
        """
        try:
            obj = parse_canonical(text.encode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            fields = (obj["federation"], obj["silo"], obj["note"], obj["signature"])
            if not all(isinstance(f, str) for f in fields):
                raise ValueError("every field must be a string")
            return cls(fields[0], fields[1], fields[2], bytes.fromhex(fields[3]))
        except (KeyError, ValueError) as exc:
            raise VerificationError(f"not a witness statement: {exc}") from exc


def statement_payload(federation: str, silo: str, note: str) -> bytes:
    """The bytes a silo signs: canonical JSON binding the checkpoint note to the federation and silo."""
    return canonical_json(
        {"context": STATEMENT_CONTEXT, "federation": federation, "silo": silo, "checkpoint": note}
    )


def sign_statement(
    key: Ed25519PrivateKey, *, federation: str, silo: str, note: str
) -> WitnessStatement:
    """Sign ``note`` (a checkpoint this silo accepted) with the silo's roster key."""
    signature = key.sign(statement_payload(federation, silo, note))
    return WitnessStatement(federation, silo, note, signature)


def verify_statement(
    statement: WitnessStatement,
    silo_key: bytes,
    *,
    federation: str,
    audit_public_key: bytes,
    origin: str,
) -> SignedCheckpoint:
    """Check a peer's statement (its roster signature, its binding, the checkpoint's signature).

    Returns:
        The checkpoint the peer accepted.

    Raises:
        VerificationError: forged or mis-bound statement, or a checkpoint the audit key did not sign.
    """
    if statement.federation != federation:
        raise VerificationError(
            f"statement of silo {statement.silo!r} is bound to federation {statement.federation!r}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(silo_key).verify(
            statement.signature,
            statement_payload(statement.federation, statement.silo, statement.note),
        )
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(
            f"statement of silo {statement.silo!r} is not signed by its roster key"
        ) from exc
    try:
        return verify_checkpoint(statement.note, audit_public_key, origin)
    except VerificationError as exc:
        raise VerificationError(
            f"statement of silo {statement.silo!r} carries a bad checkpoint: {exc}"
        ) from exc


def check_fork(
    mine: SignedCheckpoint, theirs: SignedCheckpoint, proof: Sequence[bytes] | None
) -> None:
    """Check that two checkpoints can both be prefixes of one log.

    Args:
        mine, theirs: the two checkpoints.
        proof: consistency proof from the smaller size to the larger (``None`` if none was served).

    Raises:
        VerificationError: "fork" — equal sizes with different roots, or no valid consistency proof.
    """
    small, large = (mine, theirs) if mine.size <= theirs.size else (theirs, mine)
    if small.size == large.size:
        if small.root != large.root:
            raise VerificationError(
                f"fork: two checkpoints of size {small.size} with different roots"
            )
        return
    if small.size == 0:
        return
    if proof is None:
        raise VerificationError(
            f"fork: no consistency proof from size {small.size} to {large.size} was served"
        )
    try:
        verify_consistency(small.size, large.size, proof, small.root, large.root)
    except VerificationError as exc:
        raise VerificationError(
            f"fork: the checkpoint of size {small.size} is not a prefix of the one of size "
            f"{large.size} ({exc})"
        ) from exc


class CheckpointWitness:
    """A silo's witness of the coordinator's audit log, stored in its own SQLite file.

    Args:
        path: the witness's SQLite file (or ``":memory:"``).
        audit_public_key: the coordinator's raw 32-byte Ed25519 audit key, pinned out of band.
        origin: the log origin the silo expects.
        clock: time source for local records (RFC 3339 UTC text).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        audit_public_key: bytes,
        origin: str,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self._key = bytes(audit_public_key)
        self._origin = origin
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open witness store {path}: {exc}") from exc

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> CheckpointWitness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _insert(self, sql: str, params: tuple[Any, ...]) -> int:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"witness store write failed: {exc}") from exc
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def latest(self) -> SignedCheckpoint | None:
        """The last checkpoint this witness accepted, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT note FROM accepted ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else parse_checkpoint(row[0])

    def update(self, checkpoint_text: str, consistency_proof: Sequence[bytes]) -> SignedCheckpoint:
        """Accept a new checkpoint if it is signed and extends the last accepted one.

        Args:
            checkpoint_text: the coordinator's new signed note.
            consistency_proof: proof from the last accepted size to the new size (empty on
                the first call, or if the size did not change).

        Returns:
            The accepted checkpoint (now the latest).

        Raises:
            VerificationError: bad signature or origin; or "coordinator rewrote history" when
                the new checkpoint does not extend the previous one. Nothing is stored then.
        """
        new = verify_checkpoint(checkpoint_text, self._key, self._origin)
        with self._lock:
            row = self._db.execute("SELECT note FROM accepted ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None:
                old = parse_checkpoint(row[0])
                if new.size < old.size:
                    raise VerificationError(
                        f"coordinator rewrote history: checkpoint size went back from "
                        f"{old.size} to {new.size}"
                    )
                try:
                    verify_consistency(old.size, new.size, consistency_proof, old.root, new.root)
                except VerificationError as exc:
                    raise VerificationError(
                        f"coordinator rewrote history: checkpoint of size {new.size} is not "
                        f"consistent with the accepted one of size {old.size} ({exc})"
                    ) from exc
            self._insert(
                "INSERT INTO accepted (size, root, note) VALUES (?, ?, ?)",
                (new.size, new.root, new.text),
            )
        return new

    def check_inclusion(
        self,
        entry: bytes,
        index: int,
        proof: Sequence[bytes],
        checkpoint: SignedCheckpoint | None = None,
    ) -> None:
        """Check that ``entry`` is at ``index`` in the log of an accepted checkpoint.

        Args:
            entry: the entry bytes the silo expects (e.g. the entry with its attestation).
            index: the entry's index.
            proof: the coordinator's inclusion proof.
            checkpoint: an accepted checkpoint to check against (default: the latest).

        Raises:
            VerificationError: the entry is not in the log the coordinator committed to.
        """
        target = checkpoint if checkpoint is not None else self.latest()
        if target is None:
            raise VerificationError("no checkpoint accepted yet: cannot check inclusion")
        try:
            verify_inclusion(leaf_hash(entry), index, target.size, proof, target.root)
        except VerificationError as exc:
            raise VerificationError(
                f"entry {index} is not in the log of checkpoint size {target.size}: {exc}"
            ) from exc

    def record(self, kind: str, body: Mapping[str, Any]) -> int:
        """Append a fact to the silo's local ledger (what it sent, what it spent).

        Returns:
            The record id.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty string")
        if not isinstance(body, Mapping):
            raise TypeError("body must be a JSON object")
        data = canonical_json(body)
        with self._lock:
            return self._insert(
                "INSERT INTO records (kind, body, time) VALUES (?, ?, ?)",
                (kind, data, self._clock()),
            )

    def records(self, kind: str | None = None) -> list[LocalRecord]:
        """The local ledger, oldest first (optionally only one kind)."""
        with self._lock:
            if kind is None:
                rows = self._db.execute(
                    "SELECT id, kind, body, time FROM records ORDER BY id"
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, kind, body, time FROM records WHERE kind = ? ORDER BY id", (kind,)
                ).fetchall()
        return [LocalRecord(r[0], r[1], parse_canonical(bytes(r[2])), r[3]) for r in rows]

    # completeness ------------------------------------------------------------------------------------
    def unconfirmed(self) -> list[LocalRecord]:
        """The ``sent`` records carrying a privacy attestation not yet proven to be in an accepted log."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, body, time FROM records WHERE kind = ? AND id NOT IN "
                "(SELECT record_id FROM confirmed) ORDER BY id",
                (SENT,),
            ).fetchall()
        out = [LocalRecord(r[0], r[1], parse_canonical(bytes(r[2])), r[3]) for r in rows]
        return [r for r in out if "attestation" in r.body]

    def check_completeness(
        self,
        start: int,
        entries: Sequence[bytes],
        prove: Callable[[int], Sequence[bytes]],
        checkpoint: SignedCheckpoint | None = None,
    ) -> list[int]:
        """Prove that every attestation this silo sent (and not yet proven) is in the accepted log.

        Args:
            start: index of ``entries[0]`` (the size of the previously accepted checkpoint).
            entries: the coordinator's entries ``[start, checkpoint.size)``.
            prove: ``prove(index)`` is the coordinator's inclusion proof of entry ``index`` in the
                checkpoint's tree.
            checkpoint: the accepted checkpoint to check against (default: the latest).

        Returns:
            The indices of the entries proven (each recorded, so it is not checked again).

        Raises:
            VerificationError: an attestation this silo sent is not in the log although the log shows
                its round ended (closed or aborted, or a later round began): the message names the round
                and session; or an entry's inclusion proof fails. An attestation whose round has not
                ended in this checkpoint stays pending for the next one.
        """
        target = checkpoint if checkpoint is not None else self.latest()
        if target is None:
            raise VerificationError("no checkpoint accepted yet: cannot check completeness")
        pending = self.unconfirmed()
        if not pending:
            return []
        if start + len(entries) != target.size:
            raise VerificationError(
                f"the coordinator served entries [{start}, {start + len(entries)}) "
                f"for a checkpoint of size {target.size}"
            )
        logged: dict[tuple[str, str], int] = {}
        ended: set[int] = set()
        latest_round = -1
        for offset, data in enumerate(entries):
            try:
                entry = LedgerEntry.decode(data)
            except SchemaError as exc:
                raise VerificationError(f"entry {start + offset} is malformed: {exc}") from exc
            event = entry.event
            if event.round is not None:
                latest_round = max(latest_round, event.round)
                if event.kind in (EventKind.ROUND_CLOSED, EventKind.ROUND_ABORTED):
                    ended.add(event.round)
            if event.kind is EventKind.PRIVACY_ATTESTATION:
                logged.setdefault(_fact_key(event.body), start + offset)
        proven: list[int] = []
        missing: list[str] = []
        for record in pending:
            index = logged.get(_fact_key(record.body, local=True))
            round_ = record.body.get("round")
            due = not isinstance(round_, int) or round_ in ended or latest_round > round_
            if index is None and not due:
                continue  # its round has not ended in this checkpoint (e.g. this silo left it early)
            if index is None:
                missing.append(
                    f"round {record.body.get('round')}: the privacy attestation this silo sent "
                    f"(session {record.body.get('session_id')}) is not in the log of checkpoint "
                    f"size {target.size}"
                )
                continue
            self.check_inclusion(entries[index - start], index, prove(index), target)
            with self._lock:
                self._insert(
                    "INSERT INTO confirmed (record_id, idx, size) VALUES (?, ?, ?)",
                    (record.record_id, index, target.size),
                )
            proven.append(index)
        if missing:
            raise VerificationError("coordinator left facts out of its log: " + "; ".join(missing))
        return proven

    # fork detection -----------------------------------------------------------------------------------
    def note_peers(
        self, sizes: Mapping[str, int], peers: Sequence[str], *, k: int = WITHHOLDING_ROUNDS
    ) -> list[str]:
        """Record which peers' statements this round showed, and report those withheld for ``k`` rounds.

        Args:
            sizes: peer -> checkpoint size of the statement the coordinator served this round.
            peers: every peer on the roster (not this silo).
            k: rounds without a fresh statement (none, or no newer checkpoint) before reporting.

        Returns:
            The peers withheld for the last ``k`` rounds (each also recorded as ``withheld``).
        """
        self.record("peer_statements", {"sizes": dict(sizes)})
        rows = [r.body["sizes"] for r in self.records("peer_statements")][-(k + 1) :]
        if len(rows) < k:
            return []
        withheld: list[str] = []
        for peer in sorted(peers):
            fresh = False
            for i in range(len(rows) - k, len(rows)):
                before = rows[i - 1].get(peer, -1) if i > 0 else -1
                if peer in rows[i] and rows[i][peer] > before:
                    fresh = True
            if not fresh:
                withheld.append(peer)
        if withheld:
            self.record("withheld", {"silos": withheld, "rounds": k})
        return withheld


def _fact_key(body: Mapping[str, Any], *, local: bool = False) -> tuple[str, str]:
    """What identifies one attestation: its canonical JSON and the silo's signature (hex)."""
    signature = body.get("attestation_signature" if local else "signature", "")
    return canonical_json(dict(body.get("attestation", {}))).decode("utf-8"), str(signature)
