"""Offline verification of an audit bundle: every hash, signature, schema and epsilon.

Bundle layout (a directory)::

    entries.jsonl    one canonical entry per line (RFC 8785 bytes, then "\\n")
    checkpoint.txt   the C2SP signed note the entries are bound to
    roster.json      the consortium roster, as exported (opaque bytes here)
    audit_key.pub    the coordinator's Ed25519 audit public key: 64 lowercase hex chars + "\\n"

Notes:
    The verifier trusts only what the caller pins: the audit public key, the log origin and the
    silos' roster keys (DESIGN section 2: the roster is distributed out of band), and the roster
    must be the one the federation was created with (its fingerprint in ``federation_created``).
    What was pinned and what was read from the bundle itself is returned as
    :class:`TrustAnchors`, so a report can say so in words (DESIGN section 7: fail closed). It recomputes
    every RFC 6962 leaf hash and the root and compares it with the signed checkpoint, so an
    edited byte, a deleted, inserted or reordered entry changes the root (RFC 9162 2.1). The
    per-entry ``index`` and ``prev`` chain locate the first entry that was touched. A log cut
    short and re-signed by a dishonest coordinator is self-consistent; it is caught against
    any later checkpoint a silo kept (RFC 9162 8.1.4), passed as ``checkpoints=``.

    Speed without shortcuts: every entry is still decoded, schema-checked and hashed, every
    signature verified. Canonical form is checked by the C JSON codec where it can decide
    (:func:`audits.canonical.parse_canonical`). The Ed25519 checks, half the work, may run in
    ``workers - 1`` processes while this one decodes. Processes, not threads: ``cryptography``
    releases the GIL inside Ed25519 verification (pyca/cryptography PR 15164), but a thread
    must take the GIL back between two verifications while the decoding thread holds it (on
    two cores, 100,000 entries: one process ~13 s, two threads ~10 s, two processes ~7 s).
    Epsilon is recomputed with one account per silo (:class:`SiloEpsilonAccount`): the pass
    only records each attestation's parameters, and each silo's history is converted at the
    end in one vectorized cumulative sum (RDP composes additively: Mironov, CSF 2017,
    Proposition 1), which made recomputation cost 0.4 s instead of 4 s on 60,000
    attestations. The claims are then judged in order, so the error still names the earliest
    refuted entry. The whole-history hook (:data:`EpsilonRecomputer`) is kept for
    compatibility and is O(rounds^2) over a bundle.

    Completeness (DESIGN section 7) is judged last, once every hash, signature and epsilon held,
    so a :class:`~audits.errors.CompletenessError` means exactly that a fact is missing: every
    contributor of a completed round has a privacy attestation bound to the session its
    ``participants`` record names (where the federation has record-level privacy and requires
    attestations), and every completed round of a federation with silo-level DP records its
    release, each composing one more round than the one before. The pass only notes the few
    fields involved; the judgement is one loop over the rounds at the end.
"""

from __future__ import annotations

import gc
import hmac
import json
import math
import multiprocessing
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audits.canonical import MAX_EXACT_INT
from audits.checkpoint import SignedCheckpoint, parse_checkpoint, verify_checkpoint
from audits.errors import CompletenessError, LedgerError, VerificationError
from audits.events import EventKind, LedgerEntry
from audits.ledger import Ledger
from audits.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from audits.roster import Governance, RosterState, governance_from_json, parse_version
from audits.witness import WitnessStatement, verify_statement

__all__ = [
    "Anchor",
    "AuditBundle",
    "EpsilonAccountFactory",
    "EpsilonRecomputer",
    "RdpEpsilonAccount",
    "SiloEpsilonAccount",
    "TrustAnchors",
    "VerificationReport",
    "load_bundle",
    "verify_bundle",
    "write_bundle",
]

#: ``recompute_epsilon(silo, attestations)``: the ordered attestation objects of one silo so
#: far (oldest first, the one being checked last) -> that silo's cumulative epsilon after it.
#: Called once per attestation with the whole history, so a hook that recomputes from scratch
#: is O(rounds^2) over a bundle: prefer an :data:`EpsilonAccountFactory`.
EpsilonRecomputer: TypeAlias = Callable[[str, Sequence[Mapping[str, Any]]], float]


class SiloEpsilonAccount(Protocol):
    """One silo's privacy account: fed its attestations in ledger order, converted once at the end."""

    def add(self, attestation: Mapping[str, Any]) -> None:
        """Record one attestation; raise ``ValueError`` if its parameters cannot be accounted."""
        ...

    def epsilons(self) -> Sequence[float]:
        """The silo's cumulative epsilon after each recorded attestation, oldest first."""
        ...


#: ``epsilon_accounts(silo)`` -> a fresh :class:`SiloEpsilonAccount` for that silo; called
#: once per silo, on its first attestation. :class:`RdpEpsilonAccount` is one.
EpsilonAccountFactory: TypeAlias = Callable[[str], SiloEpsilonAccount]

ENTRIES_FILE: Final = "entries.jsonl"
CHECKPOINT_FILE: Final = "checkpoint.txt"
ROSTER_FILE: Final = "roster.json"
AUDIT_KEY_FILE: Final = "audit_key.pub"

#: Relative tolerance when comparing a recomputed epsilon with a recorded one.
EPSILON_RTOL: Final = 1e-6

_SigJob: TypeAlias = tuple[int, str, bytes, bytes, bytes]  # index, silo, key, signature, payload

#: Signatures per pool task: big enough that pickling and scheduling are noise (one task is
#: ~0.1 s of Ed25519), small enough that the workers start while decoding goes on.
_SIGNATURE_CHUNK: Final = 1024


def _bad_signatures(jobs: Sequence[_SigJob]) -> list[int]:
    """Indices whose Ed25519 signature does not verify, in order (also runs in workers)."""
    verifiers: dict[bytes, Ed25519PublicKey] = {}
    bad = []
    for index, _silo, key, signature, payload in jobs:
        verifier = verifiers.get(key)
        if verifier is None:
            verifier = verifiers[key] = Ed25519PublicKey.from_public_bytes(key)
        try:
            verifier.verify(signature, payload)
        except InvalidSignature:
            bad.append(index)
    return bad


class _SignatureChecks:
    """Every attestation signature, checked at the end or by worker processes during the pass."""

    def __init__(self, pool: Executor | None, workers: int) -> None:
        self._pool = pool
        self._workers = workers
        self._silo: dict[int, str] = {}
        self._pending: list[_SigJob] = []
        self._submitted: list[tuple[list[_SigJob], Future[list[int]]]] = []

    @property
    def count(self) -> int:
        """Signatures queued so far."""
        return len(self._silo)

    def add(self, job: _SigJob) -> None:
        self._silo[job[0]] = job[1]
        self._pending.append(job)
        if self._pool is not None and len(self._pending) >= _SIGNATURE_CHUNK:
            self._submitted.append(
                (self._pending, self._pool.submit(_bad_signatures, self._pending))
            )
            self._pending = []

    def first_bad(self) -> tuple[int, str] | None:
        """The earliest attestation whose signature fails, as (index, silo), or ``None``."""
        # This process is done decoding: it takes its share of the backlog no worker has
        # started (from the end), so it works while the workers finish theirs.
        mine = self._pending
        share = -(-sum(not f.done() for _, f in self._submitted) // (self._workers + 1))
        running: list[Future[list[int]]] = []
        for jobs, future in reversed(self._submitted):
            if share > 0 and future.cancel():
                mine = jobs + mine
                share -= 1
            else:
                running.append(future)
        self._pending, self._submitted = [], []
        bad = _bad_signatures(mine)
        bad += [index for future in running for index in future.result()]
        if not bad:
            return None
        first = min(bad)
        return first, self._silo[first]


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


class Anchor(StrEnum):
    """What an auditor pins out of band; without all of them, a verification proves internal consistency only.

    ``GOVERNANCE`` (the governors and quorum a governed federation was created with) applies only to a ledger
    whose ``federation_created`` records a governance; for any other it counts as pinned (there is none).
    """

    AUDIT_KEY = "audit_key"
    CONSORTIUM_KEY = "consortium_key"
    ORIGIN = "origin"
    GOVERNANCE = "governance"


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """What a verification was anchored to, and which of it the auditor pinned.

    Attributes:
        audit_public_key: the raw audit key the checkpoints verified under.
        origin: the log origin the checkpoints verified under.
        consortium_public_key: the raw key the roster verified under, if the caller checked a roster
            (rosters are parsed above this package).
        roster_fingerprint: the roster fingerprint ``federation_created`` records (SHA-256 hex).
        roster_checked: the bundle's roster was hashed by the caller and matched that fingerprint.
        pinned: the anchors the auditor supplied; the others were read from the bundle itself, which
            anyone who wrote the bundle controls.
        governance: the governors and quorum ``federation_created`` records (equal to the pinned ones when
            :attr:`Anchor.GOVERNANCE` was pinned); ``None`` for a federation created without governance.
    """

    audit_public_key: bytes
    origin: str
    consortium_public_key: bytes | None
    roster_fingerprint: str | None
    roster_checked: bool
    pinned: frozenset[Anchor]
    governance: Governance | None = None

    @property
    def unpinned(self) -> tuple[Anchor, ...]:
        """The anchors taken from the bundle itself, in declaration order."""
        return tuple(a for a in Anchor if a not in self.pinned)

    @property
    def fully_pinned(self) -> bool:
        """Audit key, consortium key, origin (and a governed federation's governance) pinned, and the roster
        matched the ledger's."""
        return not self.unpinned and self.roster_checked


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
        anchors: what the verification was anchored to, and what of it was pinned.
        roster_members: the silo ids of the roster whose keys checked the attestations, sorted.
        notes: completeness checks that held only in a weaker form (e.g. a round recorded at
            restart names no session), one sentence per kind of check, naming its rounds.
    """

    checkpoint: SignedCheckpoint
    federation: str
    entries: tuple[LedgerEntry, ...]
    roster: bytes
    attestations_checked: int
    epsilons_recomputed: int
    checkpoints_checked: int
    anchors: TrustAnchors
    roster_members: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


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


def _json_number(text: str) -> int | float:
    # JSON numbers compare by value: the signed 1.0 is the logged 1 (canonical JSON prints an
    # integral double as an integer), so integral values decode as ints on both sides.
    value = float(text)
    return int(value) if value.is_integer() and abs(value) <= MAX_EXACT_INT else value


_PAYLOAD_DECODER: Final = json.JSONDecoder(parse_float=_json_number)


def _payload_object(payload: bytes) -> Any:
    """The attestation a silo signed: the payload is its JSON, maybe after one context line."""
    # The text after the first newline is tried first: it is the usual layout, and if both
    # it and the whole payload parse, the part before the newline is only whitespace (a JSON
    # text cannot be split into two valid ones at a newline otherwise), so both give the
    # same value; failing on the context line first would cost an exception per entry.
    candidates = [payload.split(b"\n", 1)[1], payload] if b"\n" in payload else [payload]
    for candidate in candidates:
        try:
            return _PAYLOAD_DECODER.decode(candidate.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
    return None


def _plain_mapping(value: object) -> dict[str, Any]:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


# Frozen event bodies are read-only mappings: encoded as the dicts they are.
_COMPARABLE_JSON: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), allow_nan=False, default=_plain_mapping
)


def _signed_matches(payload: bytes, attestation: Mapping[str, Any], entry: bytes) -> bool:
    """Whether the signed payload holds exactly the logged attestation (JSON equality).

    ``entry`` is the canonical entry the attestation was decoded from. Fast path: Python's
    ``==`` (integral numbers already decode as ints on both sides) when neither the payload
    nor the entry holds a ``true``/``false`` token anywhere, since ``==`` alone would take
    ``true`` for ``1``. Next, both sides encoded by the C encoder with sorted keys give the
    same text (bools apart from numbers, arrays from objects). Anything else is decided by
    the general comparison.
    """
    signed = _payload_object(payload)
    if signed is None:
        return False
    if (
        b"true" not in payload
        and b"false" not in payload
        and b"true" not in entry
        and b"false" not in entry
        and signed == attestation
    ):
        return True
    try:
        if _COMPARABLE_JSON.encode(signed) == _COMPARABLE_JSON.encode(attestation):
            return True
    except (TypeError, ValueError):
        pass
    return _same_json(signed, attestation)


class RdpEpsilonAccount:
    """A silo's RDP epsilons from its DP-SGD attestations (:mod:`dp.accounting`).

    Use the class itself as the factory: ``verify_bundle(..., epsilon_accounts=RdpEpsilonAccount)``.
    :meth:`add` validates and records each attestation's ``(noise_multiplier, sample_rate,
    steps)`` and ``delta``; :meth:`epsilons` returns the cumulative epsilon after each, the
    number the coordinator recomputes with :func:`dp.accounting.check_attestation`.

    Args:
        silo: the silo this account belongs to (for messages).

    Notes:
        RDP composes additively (Mironov, "Renyi Differential Privacy", CSF 2017,
        Proposition 1), so the epsilons are one cumulative sum and one RDP-to-(epsilon,
        delta) conversion (Balle et al. 2020) per attestation, done for the whole history at
        once by :func:`dp.accounting.epsilon_trajectory`: the same numbers, bit for bit, as
        :func:`dp.accounting.recompute_epsilon` over each prefix. Only the DP-SGD mechanism
        can be recomputed; any other label raises.
    """

    __slots__ = ("_deltas", "_mechanism", "_step", "_steps", "_trajectory", "silo")

    def __init__(self, silo: str) -> None:
        # Imported here: dp.accounting pulls in scipy (~0.2 s), which reading or writing a
        # ledger never needs.
        from dp.accounting import DP_SGD_MECHANISM, MechanismStep, epsilon_trajectory

        self.silo = silo
        self._mechanism = DP_SGD_MECHANISM
        self._step = MechanismStep
        self._trajectory = epsilon_trajectory
        self._steps: list[Any] = []
        self._deltas: list[float] = []

    def __repr__(self) -> str:
        return f"RdpEpsilonAccount(silo={self.silo!r}, rounds={len(self._steps)})"

    def add(self, attestation: Mapping[str, Any]) -> None:
        """Record one attestation.

        Raises:
            ValueError: the mechanism is not DP-SGD, or a parameter is missing or invalid.
        """
        mechanism = attestation.get("mechanism")
        if mechanism != self._mechanism:
            raise ValueError(f"cannot recompute epsilon for mechanism {mechanism!r}")
        try:
            step = self._step(
                noise_multiplier=attestation["noise_multiplier"],
                sample_rate=attestation["sample_rate"],
                steps=attestation["steps"],
            )
            delta = attestation["delta"]
        except KeyError as exc:
            raise ValueError(f"attestation has no {exc.args[0]!r}") from None
        if not isinstance(delta, float) or not 0.0 < delta < 1.0:
            raise ValueError(f"attestation delta {delta!r} is not a number in (0, 1)")
        self._steps.append(step)
        self._deltas.append(delta)

    def epsilons(self) -> list[float]:
        """Cumulative epsilon after each recorded attestation (``inf``: no privacy at all)."""
        epsilons: list[float] = self._trajectory(self._steps, self._deltas).tolist()
        return epsilons


#: A claim waiting for its silo's bulk conversion: index, claimed, recorded, flagged.
_Claim: TypeAlias = tuple[int, float, float, bool]


def _epsilon_problem(silo: str, epsilon: float, claim: _Claim) -> str | None:
    """Why a recomputed epsilon refutes a claim, or ``None`` when the claim holds."""
    _, claimed, recorded, flagged = claim
    if not math.isfinite(epsilon):
        return f"the attested parameters of silo {silo!r} give no finite epsilon"
    # Over-reporting is allowed (a silo may count a round whose upload never reached the
    # ledger); only a claim below the recomputation understates the spend. A coordinator in
    # "flag" mode accepts an under-report but marks the entry (and logs an incident), so the
    # report lists it; the recorded recomputation below must still hold.
    if claimed < epsilon and not _close(epsilon, claimed) and not flagged:
        return (
            f"silo {silo!r} under-reports epsilon: the attestation claims {claimed!r}, "
            f"its attested parameters recompute to {epsilon!r}"
        )
    if not _close(epsilon, recorded):
        return (
            f"epsilon of silo {silo!r} recomputes to {epsilon!r}, "
            f"but the coordinator recorded {recorded!r}"
        )
    return None


class _AttestationChecker:
    def __init__(
        self,
        silo_keys: Mapping[str, bytes],
        recompute: EpsilonRecomputer | None,
        accounts: EpsilonAccountFactory | None,
        signatures: _SignatureChecks,
    ) -> None:
        self._keys: dict[str, bytes] = {}
        for silo, key in silo_keys.items():
            try:
                Ed25519PublicKey.from_public_bytes(bytes(key))
            except ValueError as exc:
                raise ValueError(f"silo_keys[{silo!r}] is not a raw Ed25519 key") from exc
            self._keys[silo] = bytes(key)
        self.signatures = signatures
        self._recompute = recompute
        self._account_factory = accounts
        self._accounts: dict[str, tuple[SiloEpsilonAccount, list[_Claim]]] = {}
        self._history: dict[str, list[Mapping[str, Any]]] = {}
        self.recomputed = 0

    def use_roster(self, keys: Mapping[str, bytes]) -> None:
        """Check later attestations against a new roster's keys (after a verified ``roster_changed``)."""
        self._keys = {silo: bytes(key) for silo, key in keys.items()}

    def check(self, index: int, entry: LedgerEntry, data: bytes) -> None:
        body = entry.event.body
        silo = body["silo"]
        attestation = body["attestation"]
        key = self._keys.get(silo)
        if key is None:
            raise _bad(index, f"attestation by silo {silo!r}, which is not in the roster")
        payload = bytes.fromhex(body["signing_payload"])
        # Verified in bulk (maybe by worker processes); the earliest failure is reported.
        self.signatures.add((index, silo, key, bytes.fromhex(body["signature"]), payload))
        if not _signed_matches(payload, attestation, data):
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
        claim = (
            index,
            float(attestation["epsilon"]),
            float(body["recomputed_epsilon"]),
            bool(body.get("flagged")),
        )
        try:  # the hooks are foreign code: report, never crash the verifier
            if self._account_factory is not None:
                account, claims = self._accounts.get(silo) or self._accounts.setdefault(
                    silo, (self._account_factory(silo), [])
                )
                account.add(attestation)
                claims.append(claim)  # judged in bulk by first_bad_epsilon
                return
            if self._recompute is None:
                return
            history = self._history.setdefault(silo, [])
            history.append(attestation)
            epsilon = float(self._recompute(silo, tuple(history)))
        except Exception as exc:
            raise _bad(index, f"recomputing epsilon of silo {silo!r} failed: {exc}") from exc
        problem = _epsilon_problem(silo, epsilon, claim)
        if problem is not None:
            raise _bad(index, problem)
        self.recomputed += 1

    def first_bad_epsilon(self) -> tuple[int, str] | None:
        """Convert every silo's account at once; the earliest refuted claim and why, or ``None``."""
        failures: list[tuple[int, str]] = []
        for silo, (account, claims) in self._accounts.items():
            try:
                epsilons = [float(e) for e in account.epsilons()]
                if len(epsilons) != len(claims):
                    raise ValueError(f"{len(epsilons)} epsilons for {len(claims)} attestations")
            except Exception as exc:
                failures.append(
                    (claims[0][0], f"recomputing epsilon of silo {silo!r} failed: {exc}")
                )
                continue
            for claim, epsilon in zip(claims, epsilons, strict=True):
                problem = _epsilon_problem(silo, epsilon, claim)
                if problem is not None:
                    failures.append((claim[0], problem))
                    break
            self.recomputed += len(claims)
        return min(failures, default=None)


_NO_SESSION_AT_RESTART: Final = (
    "recorded at restart, the participants record names no session; the contributors' "
    "attestations were checked against each other, not against it."
)
_NO_SESSION: Final = (
    "the participants record (written by a coordinator older than the session record) names no "
    "session; the contributors' attestations were checked against each other, not against it."
)
_NO_RELEASE_AT_RESTART: Final = (
    "recorded at restart from the coordinator's store, which keeps no silo-level DP facts; the "
    "next recorded release composes the round too."
)


def _rounds(rounds: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as ``Rounds 1-3 and 7`` (``Round 4`` for one)."""
    spans: list[list[int]] = []
    for rnd in rounds:
        if spans and rnd == spans[-1][1] + 1:
            spans[-1][1] = rnd
        else:
            spans.append([rnd, rnd])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in spans]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return ("Round " if len(rounds) == 1 else "Rounds ") + text


def _short(session: str | None) -> str:
    return "no session" if session is None else f"session {session[:16]}..."


class _Completeness:
    """The facts a completed round must have, noted during the pass and judged at the end.

    Notes:
        DESIGN section 7: a witness can prove that what a silo sent is in the log, but only the
        verifier can prove that nothing a completed round needs is *missing*. The ledger records a
        completed round's contributors (``participants.survivors``) and, since coordinators record
        it, the session every contributor's attestation is bound to (``participants.session_id``);
        the attestation's own ``session_id`` is inside what the silo signed. A round recorded at
        restart (``recorded_at_restart``) was rebuilt from the coordinator's store, which keeps
        neither the session nor the silo-level DP facts: for it (and for ledgers of coordinators
        older than the session record) the contributors' attestations must exist and agree on one
        session, and a missing silo-level release is a note, since the next release composes it.
    """

    __slots__ = ("_attested", "_closed", "_participants", "_require", "_silo_level")

    def __init__(self) -> None:
        self._require = False  # record-level privacy with attestations required
        self._silo_level = False
        self._attested: dict[tuple[int, str], tuple[int, str | None]] = {}
        self._participants: dict[int, tuple[int, Mapping[str, Any]]] = {}
        self._closed: list[tuple[int, int, Mapping[str, Any]]] = []

    def created(self, body: Mapping[str, Any]) -> None:
        privacy = body.get("privacy")
        if isinstance(privacy, Mapping):
            record_level = "budget" in privacy or "silo_budgets" in privacy
            self._require = record_level and privacy.get("require_attestation", True) is not False
            self._silo_level = "silo_level" in privacy

    def attestation(self, index: int, rnd: int, silo: str, attestation: Mapping[str, Any]) -> None:
        session = attestation.get("session_id")
        self._attested.setdefault(
            (rnd, silo), (index, session if isinstance(session, str) else None)
        )

    def participants(self, index: int, rnd: int, body: Mapping[str, Any]) -> str | None:
        if rnd in self._participants:
            return f"round {rnd} has a second participants record"
        self._participants[rnd] = (index, body)
        return None

    def closed(self, index: int, rnd: int, body: Mapping[str, Any]) -> None:
        self._closed.append((index, rnd, body))

    def judge(self) -> tuple[str | None, list[str]]:
        """The first gap as one line (``None`` if there is none), and the notes on weaker checks."""
        notes: dict[str, list[int]] = {
            _NO_SESSION_AT_RESTART: [],
            _NO_SESSION: [],
            _NO_RELEASE_AT_RESTART: [],
        }
        seen: set[int] = set()
        gap = None
        for completed, (index, rnd, closed) in enumerate(self._closed, start=1):
            if rnd in seen:
                gap = f"incomplete: round {rnd}: closed twice (again at entry {index})"
                break
            seen.add(rnd)
            gap = self._round_gap(index, rnd, closed, completed, notes)
            if gap is not None:
                gap = f"incomplete: {gap}"
                break
        # one sentence per kind of weaker check, not one per round (an old ledger has thousands)
        return gap, [f"{_rounds(r)}: {why}" for why, r in notes.items() if r]

    def _round_gap(
        self,
        index: int,
        rnd: int,
        closed: Mapping[str, Any],
        completed: int,
        notes: Mapping[str, list[int]],
    ) -> str | None:
        restart = closed.get("recorded_at_restart") is True
        found = self._participants.get(rnd)
        if found is None:
            return f"round {rnd}: closed (entry {index}) without a participants record"
        at, participants = found
        session = participants.get("session_id")
        sessions: dict[str | None, str] = {}
        for silo in participants["survivors"]:
            attested = self._attested.get((rnd, silo))
            if attested is None:
                if self._require:
                    return (
                        f"round {rnd}, silo {silo!r}: took part in the completed round "
                        f"(participants, entry {at}) but has no privacy attestation for it"
                    )
                continue
            where, bound = attested
            if session is not None and bound != session:
                return (
                    f"round {rnd}, silo {silo!r}: its attestation (entry {where}) is bound to "
                    f"{_short(bound)}, the round's participants record (entry {at}) names "
                    f"{_short(session)}"
                )
            sessions.setdefault(bound, silo)
        if session is None and sessions:
            if len(sessions) > 1:
                (one, first), (other, second) = list(sessions.items())[:2]
                return (
                    f"round {rnd}: the attestations of silo {first!r} ({_short(one)}) and silo "
                    f"{second!r} ({_short(other)}) are bound to different sessions"
                )
            notes[_NO_SESSION_AT_RESTART if restart else _NO_SESSION].append(rnd)
        if not self._silo_level:
            return None
        release = closed.get("silo_level_dp")
        if release is None:
            if not restart:
                return f"round {rnd}: completed (entry {index}) but its silo-level DP release is not recorded"
            notes[_NO_RELEASE_AT_RESTART].append(rnd)
            return None
        composed = release.get("rounds") if isinstance(release, Mapping) else None
        if isinstance(composed, int) and not isinstance(composed, bool) and composed != completed:
            return (
                f"round {rnd}: its silo-level DP release (entry {index}) composes {composed} "
                f"round(s), but it is completed round number {completed}: a release is missing"
            )
        return None


class _RosterChanges:
    """The roster in force along the ledger: each ``roster_changed`` re-verified against the governance.

    Args:
        consortium_key: the pinned consortium key, or ``None`` (the initial roster's own key is then used).
        governance: the pinned governors and quorum the federation was created with, or ``None``.
        check: False skips the governor-signature and extension checks (tests' positive control only); the
            roster each change lists is still followed, so attestations are checked under its keys.

    Notes:
        ``federation_created`` is signed by the coordinator's audit key alone. Without a pinned governance, a
        coordinator holding that key could write a ledger whose governors are its own keys and sign every
        roster change with them; the pin, taken from the governors out of band, makes that a mismatch.
    """

    def __init__(
        self,
        consortium_key: bytes | None,
        governance: Governance | None = None,
        *,
        check: bool = True,
    ) -> None:
        self._consortium_key = consortium_key
        self._pinned = governance
        self._check = check
        self.state: RosterState | None = None
        self.recorded: Governance | None = None
        self.changes = 0

    def created(self, index: int, federation: str, body: Mapping[str, Any]) -> None:
        governance = body.get("governance")
        if governance is None:
            if self._pinned is not None:
                raise _bad(
                    index,
                    "governance: the federation was created without governance, but a governance was "
                    "pinned: check that this is the federation you meant",
                )
            return
        try:
            self.recorded = governance_from_json(governance)
        except ValueError as exc:
            raise _bad(index, f"governance: {exc}") from exc
        if self._pinned is not None and not _same_governance(self.recorded, self._pinned):
            raise _bad(
                index,
                f"governance: federation_created names {len(self.recorded[0])} governor(s) with quorum "
                f"{self.recorded[1]}, not the pinned governance ({len(self._pinned[0])} governors, quorum "
                f"{self._pinned[1]}): only the coordinator's audit key vouches for this record; pin the "
                "governance the federation was created with (a handover later rewrites governance.json)",
            )
        if not self._check:
            return
        try:
            self.state = RosterState.from_created(federation, governance, self._consortium_key)
        except ValueError as exc:
            raise _bad(index, f"governance: {exc}") from exc
        if self.state.roster.fingerprint() != body["roster_fingerprint"]:
            raise _bad(
                index,
                "governance: the initial roster version is not the roster the federation records",
            )

    def changed(
        self, index: int, body: Mapping[str, Any], attestations: _AttestationChecker
    ) -> None:
        self.changes += 1
        if not self._check:
            # follow the change unverified, so later attestations are still checked under the keys it lists
            try:
                roster = parse_version(body.get("roster_version")).roster
            except ValueError as exc:
                raise _bad(index, f"roster change unreadable: {exc}") from exc
            attestations.use_roster(roster.members)
            return
        if self.state is None:
            raise _bad(
                index,
                "roster_changed in a federation created without governance: nobody may change it",
            )
        try:
            self.state, _, _ = self.state.apply(body)
        except ValueError as exc:
            raise _bad(index, f"roster change refused: {exc}") from exc
        attestations.use_roster(self.state.roster.members)


def _same_governance(a: Governance, b: Governance) -> bool:
    """The same governor set (in any order) and the same quorum."""
    return a[1] == b[1] and sorted(a[0]) == sorted(b[0])


def _check_entry(
    position: int,
    data: bytes,
    prev: bytes,
    federation: str,
    checkpoint_size: int,
    attestations: _AttestationChecker,
    completeness: _Completeness,
    decoded: list[LedgerEntry],
    rosters: _RosterChanges,
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
        completeness.created(event.body)
        rosters.created(position, federation, event.body)
    elif event.kind is EventKind.FEDERATION_CREATED:
        raise _bad(position, "a second federation_created")
    elif event.federation != federation:
        raise _bad(position, f"belongs to federation {event.federation!r}, not {federation!r}")
    kind, rnd, body = event.kind, event.round, event.body
    if kind is EventKind.PRIVACY_ATTESTATION:
        attestations.check(position, entry, data)
        if rnd is not None:  # always: the schema requires a round for round kinds
            completeness.attestation(position, rnd, body["silo"], body["attestation"])
    elif kind is EventKind.PARTICIPANTS and rnd is not None:
        problem = completeness.participants(position, rnd, body)
        if problem is not None:
            raise _bad(position, problem)
    elif kind is EventKind.ROUND_CLOSED and rnd is not None:
        completeness.closed(position, rnd, body)
    elif kind is EventKind.ROSTER_CHANGED:
        rosters.changed(position, body, attestations)
    decoded.append(entry)
    return leaf_hash(data), federation


def _check_roster(bundle: AuditBundle, fingerprint: str) -> None:
    """The roster the silo keys come from must be the one ``federation_created`` records.

    Checked before the pass: with a swapped roster every later signature failure would only be a
    symptom. The entry's own integrity is still established by the pass (its leaf is in the root).
    """
    try:
        created = LedgerEntry.decode(bundle.entries[0]).event if bundle.entries else None
    except LedgerError:
        return  # the pass names what is wrong with entry 0
    if created is None or created.kind is not EventKind.FEDERATION_CREATED:
        return
    recorded = str(created.body["roster_fingerprint"])
    if not hmac.compare_digest(recorded, fingerprint):
        raise VerificationError(
            f"bundle: {ROSTER_FILE} (fingerprint {fingerprint}) is not the roster the "
            f"federation was created with (federation_created, entry 0, records {recorded}): "
            "a swapped roster"
        )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (restoring its state on exit).

    The pass allocates millions of acyclic objects, the decoded entries the report keeps; the
    collector would rescan all of them again and again (a quarter of the decoding time at
    100,000 entries) and could free none. Reference counting still frees everything else.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _signature_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for the Ed25519 checks, started the safest quick way available."""
    # fork starts at once and needs no importable __main__, but forking while other threads
    # run can copy a lock one of them holds into the child: then forkserver (or spawn).
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def verify_bundle(
    bundle: AuditBundle | str | Path,
    *,
    silo_keys: Mapping[str, bytes],
    audit_public_key: bytes,
    recompute_epsilon: EpsilonRecomputer | None = None,
    checkpoints: Sequence[str] = (),
    origin: str | None = None,
    epsilon_accounts: EpsilonAccountFactory | None = None,
    workers: int = 1,
    roster_fingerprint: str | None = None,
    consortium_public_key: bytes | None = None,
    unpinned: Collection[Anchor] = (),
    statements: Sequence[WitnessStatement] = (),
    governance: Governance | None = None,
    insecure_skip_roster_governance: bool = False,
) -> VerificationReport:
    """Verify an audit bundle completely, or raise naming the first problem.

    With an epsilon hook (``epsilon_accounts`` or ``recompute_epsilon``), every attestation's
    epsilon is recomputed from its attested parameters and two rules hold, with relative
    tolerance 1e-6: the silo's claim is not *below* the recomputation (a higher, conservative
    claim is accepted), and the coordinator's recorded ``recomputed_epsilon`` equals it.

    Args:
        bundle: an :class:`AuditBundle` or the bundle directory.
        silo_keys: silo id -> raw 32-byte Ed25519 roster key (from the pinned roster).
        audit_public_key: the coordinator's pinned raw 32-byte audit key.
        recompute_epsilon: optional :data:`EpsilonRecomputer` (whole-history hook, called
            once per attestation; O(rounds^2) over a bundle). At most one of this and
            ``epsilon_accounts``.
        checkpoints: other signed checkpoints of the same log (e.g. the latest a silo's
            witness accepted); the bundle must contain and agree with each of them.
        statements: silos' signed witness statements; each must verify under its silo's roster key
            and its checkpoint is then checked like one of ``checkpoints``.
        origin: the pinned log origin; default: the bundle checkpoint's own (then not pinned).
        epsilon_accounts: optional :data:`EpsilonAccountFactory` (e.g.
            :class:`RdpEpsilonAccount`): one account per silo, converted in bulk after the
            pass.
        workers: processes to use, this one included: ``workers - 1`` verify the Ed25519
            signatures while this one decodes; 1 (the default) verifies in this process and
            starts nothing. A command-line verifier passes ``os.cpu_count()`` (one busy
            process per core). The pool lives only for this call; it forks when the
            caller runs no other thread, and uses ``forkserver`` otherwise, which (like any
            ``multiprocessing`` use) needs the caller's main module to be importable without
            side effects (an ``if __name__ == "__main__":`` guard).
        roster_fingerprint: SHA-256 hex of the roster ``silo_keys`` come from (the caller parses
            rosters); it must equal the fingerprint ``federation_created`` records. ``None``: not
            checked (and :attr:`TrustAnchors.roster_checked` says so).
        consortium_public_key: the key the caller verified that roster under, recorded in the
            anchors; ``None`` if none was pinned.
        unpinned: anchors the caller read from the bundle itself instead of pinning (e.g.
            ``secagg audit verify --unpinned``); recorded in the anchors, never trusted.
        governance: the governors and quorum the auditor pins (from the governors, out of band): a governed
            ledger's ``federation_created`` must record exactly them, and an ungoverned ledger is refused.
            ``None``: a governed ledger's governance is read from the ledger and not counted as pinned.
        insecure_skip_roster_governance: tests only (the positive control of the governance check): accept
            every ``roster_changed`` entry without checking its governor signatures or that it extends the
            version in force. Never in production.

    Returns:
        A :class:`VerificationReport` of what was established.

    Raises:
        VerificationError: the first bad item: ``"entry N: reason"`` for an entry, or
            ``"checkpoint: ..."``/``"bundle: ..."``/``"truncated: ..."`` otherwise.
        CompletenessError: everything above held, but a completed round misses a fact:
            ``"incomplete: round R[, silo S]: what is missing"`` for the first gap.
        ValueError: both epsilon hooks given, ``workers`` not an integer >= 1, or a
            malformed silo key.

    Notes:
        Under-reporting is what hides privacy loss, so it is the only direction of a claim
        that fails; a silo may over-report, e.g. after training a round whose upload never
        reached the ledger (its own accountant counted the round, the ledger does not). The
        coordinator's number must match in both directions because it claims to be this very
        recomputation (DESIGN section 6). Whatever ``workers`` is, the error names the
        earliest bad entry: signature results are collected before any later failure is
        reported.
    """
    if recompute_epsilon is not None and epsilon_accounts is not None:
        raise ValueError("give recompute_epsilon or epsilon_accounts, not both")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError("workers must be an integer >= 1")
    if not isinstance(bundle, AuditBundle):
        bundle = load_bundle(bundle)
    if not hmac.compare_digest(bundle.audit_public_key, bytes(audit_public_key)):
        raise VerificationError("bundle: its audit key is not the pinned audit public key")
    expected_origin = (
        origin if origin is not None else parse_checkpoint(bundle.checkpoint_text).origin
    )
    checkpoint = verify_checkpoint(bundle.checkpoint_text, audit_public_key, expected_origin)
    others = [verify_checkpoint(t, audit_public_key, expected_origin) for t in checkpoints]
    others += _stated_checkpoints(statements, silo_keys, audit_public_key, expected_origin)
    if roster_fingerprint is not None:
        _check_roster(bundle, roster_fingerprint)

    with ExitStack() as stack:
        # This process decodes: one worker fewer keeps one busy process per core.
        pool = stack.enter_context(_signature_pool(workers - 1)) if workers > 1 else None
        stack.enter_context(_gc_paused())
        signatures = _SignatureChecks(pool, workers - 1)
        attestations = _AttestationChecker(
            silo_keys, recompute_epsilon, epsilon_accounts, signatures
        )
        completeness = _Completeness()
        rosters = _RosterChanges(
            consortium_public_key, governance, check=not insecure_skip_roster_governance
        )
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
                    position,
                    data,
                    prev,
                    federation,
                    checkpoint.size,
                    attestations,
                    completeness,
                    decoded,
                    rosters,
                )
            except VerificationError as exc:
                failure = exc
                break
            compact.append(prev)
            if compact.size in roots_needed:
                roots[compact.size] = compact.root()
        bad_signature = signatures.first_bad()
    # Everything queued precedes the entry that stopped the pass: report the earliest
    # problem, a bad signature before a refuted epsilon at the same entry.
    problems = [attestations.first_bad_epsilon()]
    if bad_signature is not None:
        index, silo = bad_signature
        problems.insert(0, (index, f"attestation signature of silo {silo!r} is invalid"))
    first = min((p for p in problems if p is not None), key=lambda p: p[0], default=None)
    if first is not None:
        raise _bad(*first)
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
    recorded = str(decoded[0].event.body["roster_fingerprint"]) if decoded else None
    pinned = set(Anchor).difference(unpinned)
    if origin is None:
        pinned.discard(Anchor.ORIGIN)
    if consortium_public_key is None:
        pinned.discard(Anchor.CONSORTIUM_KEY)
    if rosters.recorded is not None and governance is None:
        pinned.discard(Anchor.GOVERNANCE)
    for statement in statements:
        if statement.federation != federation:
            raise VerificationError(
                f"statement of silo {statement.silo!r} is bound to federation "
                f"{statement.federation!r}, not the ledger's {federation!r}"
            )
    gap, notes = completeness.judge()
    report = VerificationReport(
        checkpoint=checkpoint,
        federation=federation,
        entries=tuple(decoded),
        roster=bundle.roster,
        attestations_checked=signatures.count,
        epsilons_recomputed=attestations.recomputed,
        checkpoints_checked=len(others),
        anchors=TrustAnchors(
            audit_public_key=bytes(audit_public_key),
            origin=expected_origin,
            consortium_public_key=(
                None if consortium_public_key is None else bytes(consortium_public_key)
            ),
            roster_fingerprint=recorded,
            roster_checked=roster_fingerprint is not None,
            pinned=frozenset(pinned),
            governance=rosters.recorded,
        ),
        roster_members=tuple(sorted(silo_keys)),
        notes=tuple(notes),
    )
    if gap is not None:
        raise CompletenessError(gap, verified=report)
    return report


def _stated_checkpoints(
    statements: Sequence[WitnessStatement],
    silo_keys: Mapping[str, bytes],
    audit_public_key: bytes,
    origin: str,
) -> list[SignedCheckpoint]:
    """The checkpoints silos' signed statements vouch for (each signature checked against the roster)."""
    out: list[SignedCheckpoint] = []
    for statement in statements:
        key = silo_keys.get(statement.silo)
        if key is None:
            raise VerificationError(
                f"statement: silo {statement.silo!r} is not on the bundle's roster"
            )
        out.append(
            verify_statement(
                statement,
                key,
                federation=statement.federation,
                audit_public_key=audit_public_key,
                origin=origin,
            )
        )
    return out
