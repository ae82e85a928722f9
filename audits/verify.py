"""Offline verification of an audit bundle: every hash, signature, schema and epsilon.

Bundle layout (a directory)::

    entries.jsonl    one canonical entry per line (RFC 8785 bytes, then "\\n")
    checkpoint.txt   the C2SP signed note the entries are bound to
    roster.json      the consortium roster, as exported (opaque bytes here)
    audit_key.pub    the coordinator's Ed25519 audit public key: 64 lowercase hex chars + "\\n"

Notes:
    The verifier trusts only what the caller pins: the audit public key and the silos'
    roster keys (DESIGN section 2: the roster is distributed out of band). It recomputes
    every RFC 6962 leaf hash and the root and compares it with the signed checkpoint, so an
    edited byte, a deleted, inserted or reordered entry changes the root (RFC 9162 2.1). The
    per-entry ``index`` and ``prev`` chain locate the first entry that was touched. A log cut
    short and re-signed by a dishonest coordinator is self-consistent; it is caught against
    any later checkpoint a silo kept (RFC 9162 8.1.4), passed as ``checkpoints=``.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audits.checkpoint import SignedCheckpoint, parse_checkpoint, verify_checkpoint
from audits.errors import LedgerError, VerificationError
from audits.events import EventKind, LedgerEntry
from audits.ledger import Ledger
from audits.merkle import EMPTY_ROOT, CompactRange, leaf_hash

__all__ = [
    "EpsilonRecomputer",
    "VerificationReport",
    "AuditBundle",
    "load_bundle",
    "verify_bundle",
    "write_bundle",
]

#: ``recompute_epsilon(silo, attestations)``: the ordered attestation objects of one silo so
#: far (oldest first, the one being checked last) -> that silo's cumulative epsilon after it.
EpsilonRecomputer: TypeAlias = Callable[[str, Sequence[Mapping[str, Any]]], float]

ENTRIES_FILE: Final = "entries.jsonl"
CHECKPOINT_FILE: Final = "checkpoint.txt"
ROSTER_FILE: Final = "roster.json"
AUDIT_KEY_FILE: Final = "audit_key.pub"

#: Relative tolerance when comparing a recomputed epsilon with a recorded one.
EPSILON_RTOL: Final = 1e-6

_SigJob: TypeAlias = tuple[int, str, bytes, bytes, bytes]  # index, silo, key, signature, payload


def _bad_signatures(jobs: Sequence[_SigJob]) -> list[int]:
    """Indices whose Ed25519 signature does not verify, in order."""
    bad = []
    for index, _silo, key, signature, payload in jobs:
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, payload)
        except InvalidSignature:
            bad.append(index)
    return bad


def _first_bad_signature(jobs: Sequence[_SigJob]) -> _SigJob | None:
    """The earliest attestation whose signature fails, or ``None``."""
    bad = _bad_signatures(jobs)
    return next(job for job in jobs if job[0] == bad[0]) if bad else None


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0, as their canonical text), bools apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_same_json(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    return bool(a == b)


@dataclass(frozen=True, slots=True)
class AuditBundle:
    """The contents of an audit bundle, in memory."""

    entries: tuple[bytes, ...]
    checkpoint_text: str
    roster: bytes
    audit_public_key: bytes


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """What a successful verification established.

    Attributes:
        checkpoint: the verified checkpoint the entries are bound to.
        federation: the federation id of every entry.
        entries: every entry, decoded and validated, in order.
        roster: the roster bytes from the bundle.
        attestations_checked: privacy attestations whose silo signature verified.
        epsilons_recomputed: attestations whose epsilon was recomputed and matched.
        checkpoints_checked: extra (e.g. later) checkpoints the entries were checked against.
    """

    checkpoint: SignedCheckpoint
    federation: str
    entries: tuple[LedgerEntry, ...]
    roster: bytes
    attestations_checked: int
    epsilons_recomputed: int
    checkpoints_checked: int


def write_bundle(
    ledger: Ledger, out_dir: str | Path, *, roster_bytes: bytes, audit_public_key: bytes
) -> Path:
    """Export the ledger up to its latest checkpoint as a bundle directory.

    Only entries covered by the latest checkpoint are written, so the bundle is exactly what
    the signature commits to; make a checkpoint first to include everything.

    Raises:
        LedgerError: the ledger has no checkpoint yet.
    """
    checkpoint = ledger.latest_checkpoint()
    if checkpoint is None:
        raise LedgerError("the ledger has no checkpoint: make one before exporting")
    if len(audit_public_key) != 32:
        raise ValueError("audit_public_key must be the raw 32-byte Ed25519 key")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / ENTRIES_FILE).open("wb") as fh:
        chunk = 10_000
        for start in range(0, checkpoint.size, chunk):
            end = min(start + chunk, checkpoint.size)
            fh.writelines(entry + b"\n" for entry in ledger.entries(start, end))
    (out / CHECKPOINT_FILE).write_text(checkpoint.text, encoding="utf-8", newline="\n")
    (out / ROSTER_FILE).write_bytes(roster_bytes)
    (out / AUDIT_KEY_FILE).write_text(audit_public_key.hex() + "\n", encoding="ascii")
    return out


def load_bundle(bundle_dir: str | Path) -> AuditBundle:
    """Read a bundle directory.

    Raises:
        VerificationError: a file is missing or malformed.
    """
    root = Path(bundle_dir)
    try:
        raw = (root / ENTRIES_FILE).read_bytes()
        checkpoint_text = (root / CHECKPOINT_FILE).read_bytes().decode("utf-8")
        roster = (root / ROSTER_FILE).read_bytes()
        key_text = (root / AUDIT_KEY_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise VerificationError(f"bundle: missing file {Path(exc.filename).name}") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise VerificationError(f"bundle: unreadable file: {exc}") from exc
    if raw and not raw.endswith(b"\n"):
        raise VerificationError(f"bundle: {ENTRIES_FILE} does not end with a newline")
    # Canonical JSON never holds a raw newline (it is escaped inside strings), so lines split
    # entries exactly.
    entries = tuple(raw[:-1].split(b"\n")) if raw else ()
    try:
        audit_key = bytes.fromhex(key_text)
    except ValueError:
        raise VerificationError(f"bundle: {AUDIT_KEY_FILE} is not hex") from None
    if len(audit_key) != 32:
        raise VerificationError(f"bundle: {AUDIT_KEY_FILE} is not a 32-byte Ed25519 key")
    return AuditBundle(entries, checkpoint_text, roster, audit_key)


def _bad(index: int, reason: str) -> VerificationError:
    return VerificationError(f"entry {index}: {reason}")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=EPSILON_RTOL, abs_tol=1e-12)


def _payload_object(payload: bytes) -> Any:
    """The attestation a silo signed: the payload is its JSON, maybe after one context line."""
    candidates = [payload]
    if b"\n" in payload:
        candidates.append(payload.split(b"\n", 1)[1])
    for candidate in candidates:
        try:
            return json.loads(candidate.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
    return None


class _AttestationChecker:
    def __init__(self, silo_keys: Mapping[str, bytes], recompute: EpsilonRecomputer | None) -> None:
        self._keys: dict[str, bytes] = {}
        for silo, key in silo_keys.items():
            try:
                Ed25519PublicKey.from_public_bytes(bytes(key))
            except ValueError as exc:
                raise ValueError(f"silo_keys[{silo!r}] is not a raw Ed25519 key") from exc
            self._keys[silo] = bytes(key)
        self.jobs: list[_SigJob] = []
        self._recompute = recompute
        self._history: dict[str, list[Mapping[str, Any]]] = {}
        self.recomputed = 0

    def check(self, index: int, entry: LedgerEntry) -> None:
        body = entry.event.body
        silo = body["silo"]
        attestation = body["attestation"]
        key = self._keys.get(silo)
        if key is None:
            raise _bad(index, f"attestation by silo {silo!r}, which is not in the roster")
        payload = bytes.fromhex(body["signing_payload"])
        # Signatures are checked in bulk after the pass (see _first_bad_signature).
        self.jobs.append((index, silo, key, bytes.fromhex(body["signature"]), payload))
        signed = _payload_object(payload)
        if signed is None or not _same_json(signed, attestation):
            raise _bad(
                index,
                f"attestation of silo {silo!r} differs from what the silo signed "
                "(recorded epsilon/parameters were altered)",
            )
        if attestation["round"] != entry.event.round:
            raise _bad(
                index,
                f"attestation is for round {attestation['round']}, "
                f"logged under round {entry.event.round}",
            )
        if "silo" in attestation and attestation["silo"] != silo:
            raise _bad(index, f"attestation names silo {attestation['silo']!r}, logged as {silo!r}")
        history = self._history.setdefault(silo, [])
        history.append(attestation)
        if self._recompute is None:
            return
        try:
            epsilon = float(self._recompute(silo, tuple(history)))
        except Exception as exc:  # the hook is foreign code: report, never crash the verifier
            raise _bad(index, f"recomputing epsilon of silo {silo!r} failed: {exc}") from exc
        claimed = float(attestation["epsilon"])
        recorded = float(body["recomputed_epsilon"])
        if not _close(epsilon, claimed):
            raise _bad(
                index,
                f"epsilon of silo {silo!r} recomputes to {epsilon!r}, "
                f"but the attestation claims {claimed!r}",
            )
        if not _close(epsilon, recorded):
            raise _bad(
                index,
                f"epsilon of silo {silo!r} recomputes to {epsilon!r}, "
                f"but the coordinator recorded {recorded!r}",
            )
        self.recomputed += 1


def _check_entry(
    position: int,
    data: bytes,
    prev: bytes,
    federation: str,
    checkpoint_size: int,
    attestations: _AttestationChecker,
    decoded: list[LedgerEntry],
) -> tuple[bytes, str]:
    """Check one entry in sequence; return its leaf hash and the federation id."""
    if position >= checkpoint_size:
        raise _bad(
            position, f"is not covered by the checkpoint (size {checkpoint_size}): inserted entry"
        )
    try:
        entry = LedgerEntry.decode(data)
    except LedgerError as exc:
        raise _bad(position, f"malformed or edited: {exc}") from exc
    if entry.index != position:
        raise _bad(
            position, f"claims index {entry.index}: an entry was deleted, inserted or reordered"
        )
    if not hmac.compare_digest(entry.prev, prev):
        raise _bad(
            position - 1,
            f"does not match the hash that entry {position} recorded for "
            "it: edited, deleted, inserted or reordered entry",
        )
    event = entry.event
    if position == 0:
        if event.kind is not EventKind.FEDERATION_CREATED:
            raise _bad(0, "the first entry must be federation_created")
        federation = event.federation
    elif event.kind is EventKind.FEDERATION_CREATED:
        raise _bad(position, "a second federation_created")
    elif event.federation != federation:
        raise _bad(position, f"belongs to federation {event.federation!r}, not {federation!r}")
    if event.kind is EventKind.PRIVACY_ATTESTATION:
        attestations.check(position, entry)
    decoded.append(entry)
    return leaf_hash(data), federation


def verify_bundle(
    bundle: AuditBundle | str | Path,
    *,
    silo_keys: Mapping[str, bytes],
    audit_public_key: bytes,
    recompute_epsilon: EpsilonRecomputer | None = None,
    checkpoints: Sequence[str] = (),
    origin: str | None = None,
) -> VerificationReport:
    """Verify an audit bundle completely, or raise naming the first problem.

    Args:
        bundle: an :class:`AuditBundle` or the bundle directory.
        silo_keys: silo id -> raw 32-byte Ed25519 roster key (from the pinned roster).
        audit_public_key: the coordinator's pinned raw 32-byte audit key.
        recompute_epsilon: optional :data:`EpsilonRecomputer`; when given, every
            attestation's epsilon is recomputed and must match both the silo's claim and the
            coordinator's recorded number (relative tolerance 1e-6).
        checkpoints: other signed checkpoints of the same log (e.g. the latest a silo's
            witness accepted); the bundle must contain and agree with each of them.
        origin: the expected log origin; default: the bundle checkpoint's own.

    Returns:
        A :class:`VerificationReport` of what was established.

    Raises:
        VerificationError: the first bad item: ``"entry N: reason"`` for an entry, or
            ``"checkpoint: ..."``/``"bundle: ..."``/``"truncated: ..."`` otherwise.
    """
    if not isinstance(bundle, AuditBundle):
        bundle = load_bundle(bundle)
    if not hmac.compare_digest(bundle.audit_public_key, bytes(audit_public_key)):
        raise VerificationError("bundle: its audit key is not the pinned audit public key")
    expected_origin = (
        origin if origin is not None else parse_checkpoint(bundle.checkpoint_text).origin
    )
    checkpoint = verify_checkpoint(bundle.checkpoint_text, audit_public_key, expected_origin)
    others = [verify_checkpoint(t, audit_public_key, expected_origin) for t in checkpoints]

    attestations = _AttestationChecker(silo_keys, recompute_epsilon)
    compact = CompactRange()
    decoded: list[LedgerEntry] = []
    roots_needed = {c.size: c for c in others}
    roots_needed.setdefault(checkpoint.size, checkpoint)
    roots: dict[int, bytes] = {0: EMPTY_ROOT} if 0 in roots_needed else {}
    prev = EMPTY_ROOT
    federation = ""
    failure: VerificationError | None = None
    for position, data in enumerate(bundle.entries):
        try:
            prev, federation = _check_entry(
                position, data, prev, federation, checkpoint.size, attestations, decoded
            )
        except VerificationError as exc:
            failure = exc
            break
        compact.append(prev)
        if compact.size in roots_needed:
            roots[compact.size] = compact.root()
    bad_signature = _first_bad_signature(attestations.jobs)
    if bad_signature is not None:
        raise _bad(
            bad_signature[0], f"attestation signature of silo {bad_signature[1]!r} is invalid"
        )
    if failure is not None:
        raise failure

    count = len(bundle.entries)
    if count < checkpoint.size:
        raise VerificationError(
            f"truncated: bundle has {count} entries, its checkpoint commits to {checkpoint.size}"
        )
    if not hmac.compare_digest(roots[checkpoint.size], checkpoint.root):
        raise _bad(
            count - 1,
            "the entries do not hash to the checkpoint root: this entry (or "
            "an earlier one rewritten together with all its successors) was altered",
        )
    for other in others:
        if other.size > count:
            raise VerificationError(
                f"truncated: bundle has {count} entries, but a checkpoint "
                f"signed by the audit key commits to {other.size}"
            )
        if not hmac.compare_digest(roots[other.size], other.root):
            raise VerificationError(
                f"checkpoint of size {other.size} disagrees with the bundle's "
                "entries: the coordinator rewrote history"
            )
    return VerificationReport(
        checkpoint=checkpoint,
        federation=federation,
        entries=tuple(decoded),
        roster=bundle.roster,
        attestations_checked=len(attestations.jobs),
        epsilons_recomputed=attestations.recomputed,
        checkpoints_checked=len(others),
    )
