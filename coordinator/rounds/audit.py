"""The coordinator's audit trail: every privacy-relevant fact of the federation, in the tamper-evident ledger.

The round service reports facts here; this module turns them into :mod:`audits` events, appends them to the
:class:`~audits.Ledger` (the same SQLite file as the store, its own tables) and signs a checkpoint after
every round. It also keeps each silo's accepted privacy history, rebuilt from the ledger on start, so the
coordinator's epsilon recomputation uses exactly what the ledger (and hence an offline verifier) holds.

Notes:
    The store and the ledger are committed in separate transactions, so a crash can fall between the two.
    On start, :meth:`AuditTrail.reconcile` appends the closing event of any round the store finished but the
    ledger has not recorded (marked ``recorded_at_restart``), so the ledger never silently misses a round
    (DESIGN 7, 8). Checkpoints are C2SP signed notes over RFC 9162 roots, signed with the coordinator's audit
    key, which is distinct from its TLS key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from audits import (
    Anchor,
    CheckpointSigner,
    Event,
    EventKind,
    Ledger,
    LedgerEntry,
    RdpEpsilonAccount,
    SignedCheckpoint,
    VerificationError,
    VerificationReport,
    load_bundle,
    verify_bundle,
    write_bundle,
)
from audits.database import Database
from audits.events import utc_now
from audits.roster import Governance
from audits.witness import WitnessStatement
from coordinator.common import ledger_origin
from coordinator.config import PrivacyConfig, ServeConfig
from coordinator.errors import InvalidInput, PrivacyRefused
from coordinator.pki.governance import RosterVersion
from coordinator.pki.signer import load_signer
from dp.accounting import (
    MechanismStep,
    PrivacyAttestation,
    PrivacyBudget,
    check_attestation,
    verify_attestation,
)
from dp.errors import AttestationError, InvalidAttestationSignature, PrivacyError
from secagg import Advertisement, Roster

__all__ = [
    "AuditTrail",
    "attest_contribution",
    "export_bundle",
    "ledger_origin",
    "open_audit_trail",
    "verify_bundle_dir",
]

log = logging.getLogger(__name__)


def key_fingerprint(ad: Advertisement) -> str:
    """SHA-256 hex of a silo's two advertised public keys (public values; recorded per round)."""
    return hashlib.sha256(ad.enc_public + ad.mask_public).hexdigest()


class AuditTrail:
    """Appends the federation's events to its ledger and signs checkpoints. Thread-safe (the ledger is).

    Args:
        ledger: the federation's ledger.
        signer: the coordinator's checkpoint signer (its audit key).
        federation: the federation id.
        clock: RFC 3339 time source, injectable for tests.
    """

    def __init__(
        self,
        ledger: Ledger,
        signer: CheckpointSigner,
        *,
        federation: str,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.ledger = ledger
        self.signer = signer
        self.federation = federation
        self._clock = clock
        self._history: dict[str, list[MechanismStep]] = {}
        for entry in ledger.decoded():
            if entry.event.kind is EventKind.PRIVACY_ATTESTATION:
                attestation = PrivacyAttestation.from_dict(entry.event.body["attestation"])
                self._history.setdefault(attestation.silo, []).append(attestation.mechanism_step)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        federation: str,
        signer: CheckpointSigner,
        clock: Callable[[], str] = utc_now,
        fence: Callable[[Database], None] | None = None,
    ) -> AuditTrail:
        """Open (or create) the ledger of ``federation`` in ``path`` (``fence``: see :class:`audits.Ledger`)."""
        return cls(
            Ledger(path, origin=ledger_origin(federation), fence=fence),
            signer,
            federation=federation,
            clock=clock,
        )

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()

    # recording -----------------------------------------------------------------------------------------
    def record(self, kind: EventKind, round_: int | None, body: Mapping[str, Any]) -> int:
        """Append one event (committed before this returns); returns its index."""
        return self.ledger.append(self._event(kind, round_, body))

    def record_many(
        self, events: Iterable[tuple[EventKind, int | None, Mapping[str, Any]]]
    ) -> None:
        """Append several events in one transaction."""
        self.ledger.append_many([self._event(*item) for item in events])

    def _event(self, kind: EventKind, round_: int | None, body: Mapping[str, Any]) -> Event:
        return Event.now(
            kind, federation=self.federation, round=round_, body=body, clock=self._clock
        )

    def checkpoint(self) -> SignedCheckpoint:
        """Sign and store a checkpoint of the whole ledger."""
        return self.ledger.checkpoint(self.signer)

    def created(
        self,
        *,
        config: Mapping[str, Any],
        roster: Roster,
        threat_model: Mapping[str, Any],
        privacy: Mapping[str, Any] | None,
        governance: Mapping[str, Any] | None = None,
    ) -> None:
        """Record ``federation_created`` once, as the first entry (later starts check it is there)."""
        if self.ledger.size:
            return
        body: dict[str, Any] = {
            "config": dict(config),
            "roster_fingerprint": roster.fingerprint(),
            "threat_model": dict(threat_model),
        }
        if privacy is not None:
            body["privacy"] = dict(privacy)
        if governance is not None:
            body["governance"] = dict(governance)
        self.record(EventKind.FEDERATION_CREATED, None, body)
        self.checkpoint()

    def key_fingerprints(self, round_: int, ads: Sequence[Advertisement]) -> None:
        """The public keys each silo advertised this round (only if any did)."""
        if ads:
            self.record(
                EventKind.KEY_FINGERPRINTS,
                round_,
                {"fingerprints": {ad.silo: key_fingerprint(ad) for ad in ads}},
            )

    # privacy history -------------------------------------------------------------------------------
    def history(self, silo: str) -> tuple[MechanismStep, ...]:
        """The silo's attested mechanism steps so far, in ledger order."""
        return tuple(self._history.get(silo, ()))

    def attestation(
        self,
        attestation: PrivacyAttestation,
        signature: bytes,
        *,
        recomputed_epsilon: float,
        accountant: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an accepted (or flagged) attestation with the silo's signature and the recomputation."""
        self.record(
            EventKind.PRIVACY_ATTESTATION,
            attestation.round,
            {
                "silo": attestation.silo,
                "attestation": attestation.to_dict(),
                "signature": signature.hex(),
                "signing_payload": attestation.signing_payload().hex(),
                "recomputed_epsilon": recomputed_epsilon,
                "accountant": accountant,
                **(extra or {}),
            },
        )
        self._history.setdefault(attestation.silo, []).append(attestation.mechanism_step)

    # restart ---------------------------------------------------------------------------------------------
    def closed_rounds(self) -> set[int]:
        """Rounds the ledger has a closing (closed or aborted) event for."""
        closing = {EventKind.ROUND_CLOSED, EventKind.ROUND_ABORTED}
        return {
            e.event.round
            for e in self.ledger.decoded()
            if e.event.kind in closing and e.event.round is not None
        }


def open_audit_trail(
    config: ServeConfig, *, fence: Callable[[Database], None] | None = None
) -> AuditTrail:
    """The federation's audit trail: the ledger lives in the coordinator's database (its own tables)."""
    origin = ledger_origin(config.federation)
    # A key file, or a file holding the pkcs11: URI of a key in a token (coordinator.pki.signer).
    key = load_signer(config.audit_key, algorithm="ed25519").ed25519_key()
    signer = CheckpointSigner(key, key_name=origin)
    return AuditTrail.open(
        config.storage.target, federation=config.federation, signer=signer, fence=fence
    )


def export_bundle(config: ServeConfig, out: Path) -> SignedCheckpoint:
    """Write the audit bundle of ``config``'s federation into ``out`` (``secagg audit export``).

    Signs a fresh checkpoint first if entries were appended since the last one, so the bundle covers the whole
    ledger. Safe while the coordinator runs: the ledger is append-only and a checkpoint covers a prefix.

    Returns:
        The checkpoint the bundle is bound to.
    """
    trail = open_audit_trail(config)
    try:
        latest = trail.ledger.latest_checkpoint()
        if latest is None or latest.size < trail.ledger.size:
            latest = trail.checkpoint()
        write_bundle(
            trail.ledger,
            out,
            roster_bytes=_initial_roster(trail.ledger) or config.roster.read_bytes(),
            audit_public_key=trail.signer.public_key,
        )
        return latest
    finally:
        trail.close()


def _initial_roster(ledger: Ledger) -> bytes | None:
    """The roster a governed federation was created with (its ``roster`` file may hold a later version since).

    The bundle's roster must be the one ``federation_created`` records; later versions are in the ledger.
    """
    if not ledger.size:
        return None
    created = LedgerEntry.decode(next(iter(ledger.entries(0, 1)))).event.body
    governance = created.get("governance")
    if governance is None:
        return None
    return (RosterVersion.loads(str(governance["roster_version"])).roster.dumps() + "\n").encode()


def verify_bundle_dir(
    bundle: Path,
    *,
    audit_public_key: bytes | None,
    consortium_public_key: bytes | None,
    origin: str | None = None,
    federation: str | None = None,
    checkpoints: Sequence[str] = (),
    unpinned: bool = False,
    statements: Sequence[WitnessStatement] = (),
    governance: Governance | None = None,
) -> tuple[VerificationReport, list[str]]:
    """Verify an audit bundle directory completely (``secagg audit verify`` and ``report``).

    Args:
        bundle: the bundle directory.
        audit_public_key: the coordinator's audit key as pinned by the auditor.
        consortium_public_key: the pinned consortium key the bundle's roster must verify under.
        origin: the pinned log origin. Default: the origin of ``federation`` if given; otherwise the
            origin of the federation the roster names, which is only as good as the consortium key
            (one consortium may run several federations), so it is *not* counted as pinned.
        federation: the federation the auditor expects; the ledger's and the roster's must be it.
        checkpoints: later checkpoints (signed notes) a silo kept; the bundle must agree with each.
        statements: silos' signed witness statements; each must verify under the roster and agree too.
        unpinned: allow a missing audit or consortium key: the bundle's own is used, which proves only
            that the bundle is internally consistent. The report's anchors say so.
        governance: the governors and quorum a governed federation was created with, as the auditor has them
            from the governors (``governance.json``); ``federation_created`` must record exactly them. Without
            it a governed ledger's governance is read from the ledger, which only the audit key signs, and
            the anchors say it was not pinned.

    Returns:
        The verification report (its ``anchors`` say what was pinned) and one warning per anchor
        that was not pinned.

    Raises:
        ValueError: a key is missing and ``unpinned`` is false.
        audits.VerificationError: the first problem, naming the entry; a roster other than the one the
            federation was created with; a federation other than ``federation``.
        audits.CompletenessError: everything verified but a completed round misses a fact.
        secagg.SecAggError: the roster does not verify under the pinned consortium key.

    Notes:
        Fail closed (DESIGN section 7): nothing the bundle says about itself is trusted unless the
        caller explicitly asks for an unpinned check. The roster is always hashed and compared with the
        fingerprint ``federation_created`` recorded, so a roster swapped for another one signed by the
        same consortium key (other members, other keys) is refused.
    """
    missing = [
        name
        for name, key in (
            ("audit key", audit_public_key),
            ("consortium key", consortium_public_key),
        )
        if key is None
    ]
    if missing and not unpinned:
        raise ValueError(f"not pinned: the {' and the '.join(missing)} (or pass unpinned=True)")
    loaded = load_bundle(bundle)
    roster = Roster.loads(loaded.roster.decode("utf-8"))
    not_pinned: list[Anchor] = []
    warnings = []
    if consortium_public_key is None:
        not_pinned.append(Anchor.CONSORTIUM_KEY)
        warnings.append(
            "the consortium key is not pinned: the roster was checked only against its own embedded key"
        )
    roster.verify(roster.consortium_key if consortium_public_key is None else consortium_public_key)
    if audit_public_key is None:
        not_pinned.append(Anchor.AUDIT_KEY)
        warnings.append(
            "the audit key is not pinned: this proves the bundle is internally consistent, not that the "
            "coordinator you trust signed it"
        )
    if origin is None and federation is not None:
        origin = ledger_origin(federation)
    if origin is None:
        not_pinned.append(Anchor.ORIGIN)
        warnings.append(
            f"the log origin is not pinned: it was taken from the roster's federation {roster.federation!r}"
        )
    report = verify_bundle(
        loaded,
        silo_keys={member: roster.key(member) for member in roster.members},
        audit_public_key=loaded.audit_public_key if audit_public_key is None else audit_public_key,
        origin=ledger_origin(roster.federation) if origin is None else origin,
        epsilon_accounts=RdpEpsilonAccount,  # the coordinator's accountant, running per silo
        workers=os.cpu_count() or 1,
        checkpoints=checkpoints,
        statements=statements,
        roster_fingerprint=roster.fingerprint(),
        consortium_public_key=roster.consortium_key,
        unpinned=not_pinned,
        governance=governance,
    )
    if report.anchors.governance is not None and governance is None:
        warnings.append(
            "the governance is not pinned: the governors and quorum were read from federation_created, "
            "which only the coordinator's audit key signs (pin governance.json with --governance)"
        )
    for name, value in (("the roster", roster.federation), ("the pinned", federation)):
        if value is not None and value != report.federation:
            raise VerificationError(
                f"bundle: the ledger is of federation {report.federation!r}, {name} federation is {value!r}"
            )
    return report, warnings


def attest_contribution(
    audit: AuditTrail,
    *,
    privacy: PrivacyConfig | None,
    roster: Roster,
    federation: str,
    round_: int,
    session_id: bytes,
    silo: str,
    payload: bytes,
    signature: bytes,
    attested: MutableMapping[str, tuple[bytes, bytes]],
) -> float | None:
    """Verify, recompute and record a silo's privacy attestation (both aggregation modes).

    The claimed epsilon is recomputed from the attested parameters over everything this silo attested before
    (``dp.accounting.check_attestation``); a retried upload may repeat the identical attestation.

    Args:
        audit: the federation's audit trail (history and recording).
        privacy: the federation's privacy policy, or ``None``.
        roster: the verified roster (the silo's Ed25519 key).
        federation: the federation id the attestation must name.
        round_: the round it must name.
        session_id: the round's session id it must be bound to.
        silo: the authenticated caller.
        payload: JSON of ``PrivacyAttestation.to_dict``, or empty.
        signature: Ed25519 over the attestation's signing payload.
        attested: the round's accepted attestations (silo -> (payload, signature)); updated on success.

    Returns:
        The silo's epsilon spent so far as the coordinator recomputed it (for the metrics), or ``None`` when
        nothing new was attested (no attestation, or a retried one).

    Raises:
        PrivacyRefused: under-reported epsilon or over the ceiling (policy "refuse"), or a missing attestation
            where one is required. Recorded in the audit ledger.
        InvalidInput: malformed, mis-bound, or badly signed attestation.

    Notes:
        The coordinator does not trust a silo's claimed epsilon (DESIGN 6): it recomputes it with its own RDP
        accountant from the attested mechanism parameters, and records the silo's signature so an offline
        verifier can re-check both.
    """
    if not payload:
        if privacy is not None and privacy.require_attestation:
            reason = (
                "the upload carries no signed privacy attestation, which this federation requires"
            )
            audit.record(EventKind.BUDGET_REFUSAL, round_, {"silo": silo, "reason": reason})
            raise PrivacyRefused(f"privacy attestation refused: {reason}")
        return None
    previous = attested.get(silo)
    if previous is not None:
        if previous != (payload, signature):
            raise InvalidInput(f"{silo} already attested round {round_} differently")
        return None  # a retried upload: verified and recorded the first time
    try:
        attestation = PrivacyAttestation.from_dict(json.loads(payload.decode("utf-8")))
    except (ValueError, PrivacyError) as exc:
        raise InvalidInput(f"malformed privacy attestation: {exc}") from exc
    binding = (attestation.federation, attestation.round, attestation.silo)
    if binding != (federation, round_, silo) or attestation.session_id != session_id.hex():
        raise InvalidInput(
            "the privacy attestation is not bound to this federation, round, silo and session"
        )
    try:
        verify_attestation(attestation, signature, roster.key(silo))
    except InvalidAttestationSignature as exc:
        audit.record(
            EventKind.VERIFICATION_FAILURE,
            round_,
            {"what": "privacy_attestation", "reason": str(exc), "silo": silo},
        )
        raise InvalidInput(str(exc)) from exc
    ceiling = (
        None if privacy is None else PrivacyBudget(epsilon=privacy.epsilon, delta=privacy.delta)
    )
    try:
        check = check_attestation(attestation, audit.history(silo), ceiling=ceiling, strict=False)
    except AttestationError as exc:
        raise InvalidInput(str(exc)) from exc
    flagged: dict[str, Any] = {}
    if not check.ok:
        problems = []
        if check.under_reported:
            problems.append(
                f"claimed epsilon {check.claimed_epsilon:.6g} is below the recomputed "
                f"{check.recomputed_epsilon:.6g}"
            )
        if check.over_ceiling:
            problems.append(
                f"epsilon {max(check.claimed_epsilon, check.recomputed_epsilon):.6g} "
                f"(delta {attestation.delta:g}) exceeds the federation ceiling"
            )
        reason = "; ".join(problems)
        if privacy is None or privacy.on_violation == "refuse":
            audit.record(
                EventKind.BUDGET_REFUSAL,
                round_,
                {"silo": silo, "reason": reason, "check": check.to_dict()},
            )
            raise PrivacyRefused(f"privacy attestation refused: {reason}")
        flagged = {"flagged": reason}
        audit.record(
            EventKind.INCIDENT,
            round_,
            {"severity": "warning", "description": f"flagged attestation: {reason}", "silo": silo},
        )
    audit.attestation(
        attestation,
        signature,
        recomputed_epsilon=check.recomputed_epsilon,
        accountant=check.accountant,
        extra=flagged,
    )
    attested[silo] = (payload, signature)
    return check.recomputed_epsilon


# ----------------------------------------------------------------------------------------------------------------
# Spool of per-silo ciphertext chunks (the aggregator's ContributionStore)
