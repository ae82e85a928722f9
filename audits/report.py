"""Regulator reports from a verified bundle: schema-versioned JSON, self-contained HTML, and its PDF.

Notes:
    Contents follow NIST SP 800-226 (Guidelines for Evaluating Differential Privacy Guarantees,
    March 2025): the unit of privacy, epsilon and delta per silo, the accountant and its version,
    the mechanism parameters, the trust model, who took part, and every incident. The report leads
    with a plain-language summary for a compliance officer (what was trained, by whom, when, the
    guarantee in one paragraph, what epsilon and delta mean here), states in words which trust
    anchors the auditor pinned (never a green "verified" when something was not), dates every
    round from the ledger's own timestamps, explains every incident and its resolution, and maps
    each section to NIST SP 800-226 and to the record-keeping duties of Article 12 of the EU AI
    Act (Regulation (EU) 2024/1689). The HTML loads nothing from the network (inline CSS and an
    inline SVG chart drawn with matplotlib), so it can be archived with the bundle and opened
    offline; every value is HTML-escaped. The PDF is that page printed by headless Chromium. The
    JSON's shape is published as ``docs/report.schema.json``; ``report_schema`` changes whenever
    a field does.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

from audits.errors import ReportError
from audits.events import EventKind, LedgerEntry, utc_now
from audits.verify import EPSILON_RTOL, Anchor, TrustAnchors, VerificationReport

__all__ = [
    "REPORT_SCHEMA",
    "build_report",
    "find_chromium",
    "render_html",
    "write_pdf",
    "write_report",
]

#: Version of the report JSON (``docs/report.schema.json``). 2: anchors and dates, the summary,
#: explained incidents, library versions as rows, completeness notes, the regulatory mapping. 3: the
#: governance anchor (a governed federation's governors and quorum, and whether the auditor pinned them).
REPORT_SCHEMA: Final = 3

NIST_SP_800_226: Final = (
    "NIST SP 800-226, Guidelines for Evaluating Differential Privacy Guarantees "
    "(J. P. Near, D. Darais, N. Lefkovitz, G. S. Howarth; March 2025), doi:10.6028/NIST.SP.800-226"
)
EU_AI_ACT: Final = "Regulation (EU) 2024/1689 (the AI Act), Article 12 (record-keeping)"

# Attestation fields shown elsewhere in the report than among the mechanism parameters.
_NOT_PARAMETERS: Final = frozenset(
    {"epsilon", "delta", "round", "silo", "budget", "federation", "session_id", "library_versions"}
)
_INCIDENT_KINDS: Final = {
    EventKind.INCIDENT,
    EventKind.VERIFICATION_FAILURE,
    EventKind.BUDGET_REFUSAL,
    EventKind.ACCOUNTANT_FALLBACK,
    EventKind.ROUND_ABORTED,
}
_ROUND_KINDS: Final = {
    EventKind.ROUND_OPENED,
    EventKind.ROUND_CLOSED,
    EventKind.ROUND_ABORTED,
    EventKind.PARTICIPANTS,
    EventKind.GLOBAL_MODEL,
}
_ANCHOR_NAMES: Final = {
    Anchor.AUDIT_KEY: "the coordinator's audit key",
    Anchor.CONSORTIUM_KEY: "the consortium key",
    Anchor.ORIGIN: "the log origin",
    Anchor.GOVERNANCE: "the roster governance (governors and quorum)",
}
_PARAMETER_WORDS: Final = {
    "mechanism": "Mechanism",
    "accountant": "Privacy accountant (how epsilon is computed)",
    "noise_multiplier": "Noise multiplier: noise standard deviation over the clipping norm",
    "sample_rate": "Sampling rate: the chance that a record is used in one training step",
    "steps": "Training steps in the round",
    "max_grad_norm": "Clipping norm: the most one record can move one step",
}
_TRUST_WORDS: Final = {
    "n": "Silos on the roster",
    "t": "Threshold: silos needed to finish a round",
    "c": "Collusion bound: silos that may collude with the coordinator",
    "min_cohort": "Smallest number of silos whose updates are ever summed",
    "mode": "Aggregation mode",
    "key_bits": "Paillier key size (bits)",
    "key_fingerprint": "Paillier public key fingerprint",
    "key_ceremony": "Paillier key ceremony",
    "spot_checks": "Slots each decrypter spot-checks",
}
_MODE_WORDS: Final = {
    "masking": "pairwise-masked secure aggregation (Bonawitz et al., 2017): each silo's update "
    "is hidden under random masks that cancel only in the sum",
    "paillier": "threshold Paillier encryption: each silo's update is encrypted, and only the "
    "encrypted sum is ever decrypted, by several silos together",
}

# Each section of the report, the NIST SP 800-226 items it documents, and the EU AI Act Article 12
# duty it serves. Article 12(3) lists minimum log contents only for remote biometric identification
# systems (Annex III point 1(a)); the mapping says where this report offers the same facts anyway.
_MAPPING: Final = (
    (
        "Verification and pinned keys",
        "verification, checkpoint",
        "Security of the implementation and its trust model: the guarantee holds only if the "
        "records it rests on are authentic (the pyramid's lower layers)",
        "Art. 12(1): events recorded automatically over the system's lifetime, in a "
        "tamper-evident log that anyone can verify offline",
    ),
    (
        "Summary: what, who, when",
        "summary, period, generated_at, summary.silos",
        "Context of the release: what data was used, by whom, and the unit of privacy",
        "Art. 12(2)(c): monitoring of the operation (Art. 26(5)); start and end of each use as "
        "Art. 12(3)(a) asks of biometric systems",
    ),
    (
        "Unit of privacy",
        "unit_of_privacy, silo_level_dp.configuration.unit_of_privacy",
        "Unit of privacy: whom the guarantee protects (here one record of one silo)",
        "Art. 12(2)(a): identifying situations that may present a risk (Art. 79(1))",
    ),
    (
        "Epsilon and delta per silo, budgets, chart",
        "silos[].epsilon_spent, epsilon_counted, delta, budget, epsilon_by_round",
        "Privacy parameters epsilon and delta, the privacy budget and composition over rounds",
        "Art. 12(2)(a) and (b): risk situations and post-market monitoring (Art. 72)",
    ),
    (
        "Accountant and library versions",
        "accountants, library_versions",
        "Correctness: which accountant and which software computed the guarantee",
        "Art. 12(2)(b): traceability of the software that ran, to notice a substantial "
        "modification",
    ),
    (
        "Mechanism parameters",
        "mechanism_parameters, silo_level_dp",
        "Algorithms: the mechanism (DP-SGD: clipping, sampling, Gaussian noise) and its parameters",
        "Art. 12(2)(a): the settings a risk assessment needs",
    ),
    (
        "Trust model",
        "trust_model",
        "Trust model: who must be trusted (a distributed model: no party sees one silo's update)",
        "Art. 12(2)(a)",
    ),
    (
        "Rounds: dates, participants, outcome",
        "rounds[]",
        "Data collection exposure: which silos contributed to which release",
        "Art. 12(2)(c) and 12(3)(a): period of each use, who took part",
    ),
    (
        "Incidents and their resolution",
        "incidents[]",
        "Privacy hazards: where the guarantee could be weakened in practice",
        "Art. 12(2)(a) and (b): situations that may present a risk, post-market monitoring",
    ),
    (
        "Completeness",
        "verification.notes",
        "Security: nothing the guarantee depends on is missing from the record",
        "Art. 12(1): logging over the whole lifetime, with no gap",
    ),
)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _when(time: str | None) -> str:
    """RFC 3339 UTC ``2025-03-01T10:00:01.000006Z`` as ``2025-03-01 10:00:01 UTC``."""
    if not time:
        return "not recorded"
    return f"{time[:10]} {time[11:19]} UTC"


_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _budget(privacy: Mapping[str, Any], silo: str, attestation: Mapping[str, Any]) -> Any:
    if isinstance(attestation.get("budget"), Mapping):
        return _plain(attestation["budget"])
    per_silo = privacy.get("silo_budgets", {})
    if silo in per_silo:
        return _plain(per_silo[silo])
    return _plain(privacy["budget"]) if "budget" in privacy else None


def _accountant_version(att: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    for source in (att, body):
        if "accountant_version" in source:
            return str(source["accountant_version"])
        versions = source.get("library_versions")
        if isinstance(versions, Mapping) and versions:
            return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    return "unknown"


def _flatten(value: Any, prefix: str = "") -> list[dict[str, str]]:
    """A nested JSON object as ``{"parameter": dotted.key, "value": text}`` rows."""
    if isinstance(value, Mapping):
        rows = []
        for key in sorted(value):
            rows += _flatten(value[key], f"{prefix}{key}.")
        return rows
    if isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value) if value else "(none)"
    elif value is None:
        text = "(none)"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = str(value)
    return [{"parameter": prefix[:-1], "value": text}]


# ------------------------------------------------------------------------------------ anchors


def _anchors(anchors: TrustAnchors) -> dict[str, Any]:
    consortium = anchors.consortium_public_key
    return {
        "fully_pinned": anchors.fully_pinned,
        "pinned": [str(a) for a in Anchor if a in anchors.pinned],
        "unpinned": [str(a) for a in anchors.unpinned],
        "audit_key": {
            "pinned": Anchor.AUDIT_KEY in anchors.pinned,
            "key": anchors.audit_public_key.hex(),
            "fingerprint": _fingerprint(anchors.audit_public_key),
        },
        "consortium_key": {
            "pinned": Anchor.CONSORTIUM_KEY in anchors.pinned,
            "key": None if consortium is None else consortium.hex(),
            "fingerprint": None if consortium is None else _fingerprint(consortium),
        },
        "origin": {"pinned": Anchor.ORIGIN in anchors.pinned, "value": anchors.origin},
        "roster": {"checked": anchors.roster_checked, "fingerprint": anchors.roster_fingerprint},
        "governance": None
        if anchors.governance is None
        else {
            "pinned": Anchor.GOVERNANCE in anchors.pinned,
            "quorum": anchors.governance[1],
            "governors": [_fingerprint(g) for g in anchors.governance[0]],
        },
    }


def _pinning_statement(anchors: TrustAnchors) -> str:
    """In words: what the auditor pinned, with fingerprints, or that nothing was."""
    pinned = []
    if Anchor.AUDIT_KEY in anchors.pinned:
        pinned.append(
            f"the coordinator's audit key (SHA-256 fingerprint "
            f"{_fingerprint(anchors.audit_public_key)})"
        )
    if Anchor.CONSORTIUM_KEY in anchors.pinned and anchors.consortium_public_key is not None:
        pinned.append(
            f"the consortium key (SHA-256 fingerprint "
            f"{_fingerprint(anchors.consortium_public_key)})"
        )
    if Anchor.ORIGIN in anchors.pinned:
        pinned.append(f"the log origin {anchors.origin!r}")
    if anchors.governance is not None and Anchor.GOVERNANCE in anchors.pinned:
        governors, quorum = anchors.governance
        pinned.append(f"the roster governance ({quorum} of {len(governors)} governors)")
    roster = (
        f" The bundle's roster is the one the federation was created with (fingerprint "
        f"{anchors.roster_fingerprint})."
        if anchors.roster_checked
        else " The bundle's roster was not compared with the one the federation was created with."
    )
    if not pinned:
        return (
            "Nothing was pinned: the keys and the log origin were read from the bundle itself, "
            "so this report proves only that the bundle is internally consistent, not that the "
            "coordinator and consortium you trust produced it." + roster
        )
    text = "Pinned by the auditor: " + _join(pinned) + "."
    if anchors.unpinned:
        missing = _join([_ANCHOR_NAMES[a] for a in anchors.unpinned])
        text += (
            f" NOT pinned: {missing}, read from the bundle itself, so the report does not prove "
            "that the federation you trust produced it."
        )
    return text + roster


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------- incidents


class _Incidents:
    """Every incident in ledger order, each explained in words with its resolution."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.interrupted: list[
            tuple[int, int, str]
        ] = []  # rounds aborted at restart: round, index, time
        self._first_gap: dict[
            str, tuple[int, int]
        ] = {}  # silo -> (round, index) of its first mismatch

    def add(
        self,
        entry: LedgerEntry,
        kind: str,
        severity: str,
        description: str,
        explanation: str,
        resolution: str,
        **extra: Any,
    ) -> None:
        body = entry.event.body
        self.rows.append(
            {
                "index": entry.index,
                "kind": kind,
                "round": entry.event.round,
                "silo": body.get("silo"),
                "time": entry.event.time,
                "severity": severity,
                "description": description,
                "explanation": explanation,
                "resolution": resolution,
                **extra,
            }
        )

    def epsilon_mismatch(
        self, entry: LedgerEntry, claimed: float, recomputed: float, attested: set[int]
    ) -> float:
        """Record a claim the recomputation does not equal; return the epsilon that counts."""
        body = entry.event.body
        silo = str(body["silo"])
        rnd = entry.event.round
        description = (
            f"silo claims epsilon {claimed:.6g}, coordinator recomputed {recomputed:.6g} "
            "from the ledger"
        )
        if claimed < recomputed:  # accepted only in flag mode (the verifier checked it is flagged)
            counted = recomputed
            self.add(
                entry,
                "epsilon_mismatch",
                "warning",
                description,
                f"{silo} claims a smaller epsilon ({claimed:.6g}) than follows from the training "
                f"parameters it signed ({recomputed:.6g}). The federation runs in flag mode, so "
                "the coordinator accepted the upload and recorded the discrepancy instead of "
                "refusing it.",
                f"The epsilon that counts is the recomputed {recomputed:.6g}: it follows from "
                "what the silo signed. The silo's own accountant under-counts and should be "
                "checked.",
                epsilon_counted=counted,
            )
            return counted
        counted = claimed
        first = self._first_gap.setdefault(silo, (rnd if rnd is not None else -1, entry.index))
        if first[1] != entry.index:
            explanation = (
                f"The same gap as in round {first[0]} (entry {first[1]}) carries forward: "
                "epsilon is cumulative, so every later figure of this silo includes it."
            )
        else:
            missing = [(r, i, t) for r, i, t in self.interrupted if r not in attested]
            if missing:
                rounds = _join([str(r) for r, _, _ in missing])
                when = _join([f"{_when(t)} (entry {i})" for _, i, t in missing])
                explanation = (
                    f"The coordinator restarted while round {rounds} was open and recorded it as "
                    f"aborted at {when}. {silo} had already trained for it: its own accountant "
                    "counted that training, as it must, because its noisy update may already "
                    "have left the silo. Its attestation for that round never reached the "
                    "ledger, and the coordinator recomputes epsilon only from the attestations "
                    f"in the ledger, so its figure ({recomputed:.6g}) leaves that round out."
                )
            else:
                explanation = (
                    f"{silo}'s own accountant counts more training than the attestations in "
                    "this ledger (for example a round whose upload never reached the "
                    f"coordinator), so the coordinator's recomputation ({recomputed:.6g}) is lower."
                )
        self.add(
            entry,
            "epsilon_mismatch",
            "info",
            description,
            explanation,
            f"Nothing was hidden. The epsilon that counts is the silo's own, {claimed:.6g}: it "
            "is the larger of the two and the one the silo enforces its budget with. The "
            "verifier checked that no silo claims less than the recomputation, the direction "
            "that would hide privacy loss.",
            epsilon_counted=counted,
        )
        return counted

    def recorded(self, entry: LedgerEntry) -> None:
        """An incident-kind event the coordinator wrote into the ledger."""
        event = entry.event
        body = event.body
        kind = event.kind
        if kind is EventKind.INCIDENT:
            description = str(body["description"])
            severity = str(body["severity"])
            if description.startswith("flagged attestation"):
                explanation = (
                    'The federation runs in flag mode (on_violation = "flag"): the coordinator '
                    "accepted an attestation that breaks the federation's rule and recorded this "
                    "incident, where refuse mode would have rejected the upload."
                )
                resolution = (
                    "Accepted and recorded. For this silo the epsilon that counts is the larger "
                    "of its claim and the recomputation (see the silo table)."
                )
            elif "wrapped around the modulus" in description:
                explanation = (
                    "Some coordinates of the noisy sum left the integer range and wrapped around. "
                    "Those coordinates of the model update are wrong: an accuracy problem, not "
                    "a privacy one (the noise is unchanged)."
                )
                resolution = "Recorded; if it recurs, raise [silo_dp] bits."
            else:
                explanation = f"Recorded by the coordinator with severity {severity}."
                resolution = "Recorded; no automatic action follows from it."
        elif kind is EventKind.VERIFICATION_FAILURE:
            severity, description = "warning", f"{body['what']}: {body['reason']}"
            sender = body.get("silo") or "a participant"
            explanation = f"The coordinator could not verify a {body['what']} from {sender}: {body['reason']}."
            resolution = (
                "Refused: nothing from that message was used. The round went on without it or "
                "was aborted (see the rounds table)."
            )
        elif kind is EventKind.BUDGET_REFUSAL:
            severity, description = "warning", str(body["reason"])
            explanation = (
                f"The coordinator refused {body['silo']}'s contribution: {body['reason']}."
            )
            resolution = (
                "The upload was not aggregated: no release in this ledger used it. The silo may "
                "still count that round's training in its own accountant, since it trains "
                "before it uploads."
            )
        elif kind is EventKind.ACCOUNTANT_FALLBACK:
            severity = "info"
            description = f"{body['from_accountant']} -> {body['to_accountant']}: {body['reason']}"
            explanation = (
                f"The tighter accountant ({body['from_accountant']}) did not finish in time; the "
                f"looser bound ({body['to_accountant']}) was used instead."
            )
            resolution = (
                "The reported epsilon is an upper bound and therefore conservative: the real "
                "privacy loss is no larger."
            )
        else:  # ROUND_ABORTED
            severity, description = "info", str(body["reason"])
            if body.get("recorded_at_restart") is True:
                rnd = event.round if event.round is not None else -1
                self.interrupted.append((rnd, entry.index, event.time))
                explanation = (
                    "The coordinator stopped or restarted while this round was open; on its next "
                    "start it recorded the round as aborted (a routine restart does this)."
                )
            else:
                stage = f" in stage {body['stage']}" if body.get("stage") else ""
                explanation = f"The round was aborted{stage}: {body['reason']}."
            resolution = (
                "No aggregate and no model update was released for this round. Silos that had "
                "already trained count that training in their own accountants (see any epsilon "
                "mismatch of a later round)."
            )
        self.add(entry, str(kind), severity, description, explanation, resolution)


# ----------------------------------------------------------------------------------- the report


def _new_round(rnd: int) -> dict[str, Any]:
    return {
        "round": rnd,
        "status": "open",
        "opened_at": None,
        "closed_at": None,
        "survivors": [],
        "dropped": [],
        "reason": None,
        "model_hash": None,
        "session_id": None,
        "recorded_at_restart": False,
    }


_TESTS = "tests (in the project's tests/ folder) that show it"

_GUARANTEES: Final = (
    (
        "malicious coordinator",
        {
            "masking": "Learns only the sum of at least max(t, min_cohort) silos: split survivor views, both "
            "share types, replays, swapped share ciphertexts and substituted advertisements are refused.",
            "paillier": "Holds only the joint public key; decrypters spot-check the aggregate at positions they "
            "draw, so a swap of a few positions can escape: a probabilistic check, not a guarantee yet.",
        },
        {
            "masking": "secagg/test_malicious_server.py, adversarial/test_lying_coordinator.py",
            "paillier": "e2e/test_paillier_mode.py::test_a_lying_coordinator_cannot_use_the_silos_as_a_"
            "decryption_oracle",
        },
    ),
    (
        "coordinator colluding with up to c silos",
        {
            "masking": "As above while t > (n + c) / 2, checked when the federation is configured.",
            "paillier": "No guarantee yet: a colluder can submit ciphertexts that cancel another silo's.",
        },
        {
            "masking": "secagg/test_malicious_server.py::test_the_same_attack_fails_when_the_threshold_"
            "accounts_for_the_colluder",
            "paillier": "",
        },
    ),
    (
        "malicious member silo",
        {
            "masking": "Cannot read another silo's update and cannot corrupt a round silently: a bad unmask "
            "share is caught against the self-mask seed commitment, the silo is named in this ledger and "
            "the round completes with the honest silos or aborts. Its own update is not checked.",
            "paillier": "Cannot read another silo's update (threshold key). Its own update is not checked.",
        },
        {
            "masking": "secagg/test_malicious_silo.py, adversarial/test_malicious_silo.py",
            "paillier": "secagg/paillier/test_protocol.py",
        },
    ),
    (
        "network attacker",
        {
            "masking": "Mutual TLS; identity from the certificate; every message bound to its round's session.",
            "paillier": "Mutual TLS; identity from the certificate; every message bound to its round's session.",
        },
        {
            "masking": "e2e/test_authorization.py, e2e/test_bad_input.py",
            "paillier": "e2e/test_authorization.py, e2e/test_bad_input.py",
        },
    ),
)
"""What each mode guarantees against each adversary, and the tests that show it (README, Threat model)."""

_SILO_LEVEL_GUARANTEE: Final = (
    " With silo-level DP each silo derives its own noise share from the roster and its policy, binds the "
    "plan's hash into the session, refuses a survivor set below the plan's minimum and caps its releases "
    "with its own tally (adversarial/test_lying_coordinator_silo_dp.py)."
)


def _guarantees(mode: str, silo_level: bool) -> list[dict[str, str]]:
    """The rows of the guarantee table for this federation's mode."""
    column = "paillier" if mode == "paillier" else "masking"
    rows = []
    for adversary, guarantee, tests in _GUARANTEES:
        text = guarantee[column]
        if silo_level and adversary == "malicious coordinator":
            text += _SILO_LEVEL_GUARANTEE
        rows.append({"adversary": adversary, "guarantee": text, "tests": tests[column]})
    return rows


def build_report(
    verified: VerificationReport, *, clock: Callable[[], str] = utc_now
) -> dict[str, Any]:
    """Build the machine-readable report (``report_schema: 2``) from a verified bundle.

    Args:
        verified: what :func:`audits.verify_bundle` established.
        clock: RFC 3339 UTC time source for ``generated_at`` (injectable for tests).
    """
    entries = verified.entries
    created = entries[0].event.body if entries else {}
    privacy: Mapping[str, Any] = created.get("privacy", {})
    rounds: dict[int, dict[str, Any]] = {}
    silos: dict[str, dict[str, Any]] = {}
    accountants: dict[tuple[str, str], None] = {}
    incidents = _Incidents()
    silo_level: list[dict[str, Any]] = []  # silo-level distributed DP, per completed round
    roster_changes: list[
        dict[str, Any]
    ] = []  # roster versions adopted (each re-verified by the verifier)
    quorum = created.get("governance", {}).get("quorum")  # K of the governance in force

    def silo_row(silo: str) -> dict[str, Any]:
        return silos.setdefault(
            silo,
            {"id": silo, "rounds": set(), "attested": set(), "epsilon_by_round": [], "last": None},
        )

    for silo in privacy.get("silo_budgets", {}):
        silo_row(silo)

    for entry in entries:
        event = entry.event
        body = event.body
        rnd = event.round
        kind = event.kind
        if rnd is not None and kind in _ROUND_KINDS:
            info = rounds.setdefault(rnd, _new_round(rnd))
            if body.get("recorded_at_restart") is True:
                info["recorded_at_restart"] = True
            if kind is EventKind.ROUND_OPENED:
                info["opened_at"] = event.time
            elif kind is EventKind.ROUND_CLOSED:
                info["status"], info["closed_at"] = "closed", event.time
                if "silo_level_dp" in body:
                    silo_level.append(
                        {"round": rnd, "time": event.time, **_plain(body["silo_level_dp"])}
                    )
            elif kind is EventKind.ROUND_ABORTED:
                info["status"], info["closed_at"] = "aborted", event.time
                info["reason"] = body["reason"]
            elif kind is EventKind.PARTICIPANTS:
                info["survivors"] = list(body["survivors"])
                info["dropped"] = list(body["dropped"])
                info["session_id"] = body.get("session_id")
                for silo in body["survivors"]:
                    silo_row(silo)["rounds"].add(rnd)
                for silo in body["dropped"]:
                    silo_row(silo)
            else:
                info["model_hash"] = body["model_hash"]
        if kind is EventKind.PRIVACY_ATTESTATION:
            att = body["attestation"]
            row = silo_row(body["silo"])
            claimed = float(att["epsilon"])
            recomputed = float(body["recomputed_epsilon"])
            counted = claimed
            if not math.isclose(claimed, recomputed, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
                counted = incidents.epsilon_mismatch(entry, claimed, recomputed, row["attested"])
            row["attested"].add(att["round"])
            row["epsilon_by_round"].append(
                {
                    "round": att["round"],
                    "time": event.time,
                    "epsilon": claimed,
                    "recomputed_epsilon": recomputed,
                    "epsilon_counted": counted,
                }
            )
            row["last"] = (att, body, counted)
            accountants[(str(body["accountant"]), _accountant_version(att, body))] = None
        elif kind is EventKind.ACCOUNTANT_FALLBACK:
            accountants[(str(body["to_accountant"]), str(body.get("version", "unknown")))] = None
        if kind in _INCIDENT_KINDS:
            incidents.recorded(entry)
        if kind is EventKind.ROSTER_CHANGED:
            roster_changes.append(
                {
                    "version": int(body["version"]),
                    "digest": str(body["digest"]),
                    "time": event.time,
                    "first_round": body.get("first_round"),
                    "added": list(body["added"]),
                    "removed": list(body["removed"]),
                    "rotated": _plain(body.get("rotated", [])),
                    "signers": list(body["signers"]),
                    "quorum": quorum,  # the K that had to sign this version
                }
            )
            handover = body.get("governance")
            if isinstance(handover, Mapping):  # the next versions need the new governance's K
                quorum = handover.get("quorum")

    silo_list = []
    mechanism: dict[str, Any] = {}
    versions: list[dict[str, str]] = []
    for silo in sorted(silos):
        row = silos[silo]
        last = row["last"]
        latest: Mapping[str, Any] = last[0] if last else {}
        params = {k: _plain(v) for k, v in latest.items() if k not in _NOT_PARAMETERS}
        if params:
            mechanism[silo] = params
        libraries = latest.get("library_versions")
        if isinstance(libraries, Mapping):
            versions += [
                {"silo": silo, "library": str(name), "version": str(libraries[name])}
                for name in sorted(libraries)
            ]
        silo_list.append(
            {
                "id": silo,
                "epsilon_spent": float(latest["epsilon"]) if last else 0.0,
                "recomputed_epsilon": float(last[1]["recomputed_epsilon"]) if last else None,
                "epsilon_counted": float(last[2]) if last else 0.0,
                "delta": float(latest["delta"]) if last else None,
                "budget": _budget(privacy, silo, latest),
                "accountant": str(last[1]["accountant"]) if last else None,
                "rounds": sorted(row["rounds"]),
                "epsilon_by_round": row["epsilon_by_round"],
            }
        )
    cp = verified.checkpoint
    ordered_rounds = [rounds[r] for r in sorted(rounds)]
    report: dict[str, Any] = {
        "report_schema": REPORT_SCHEMA,
        "generated_at": clock(),
        "generator": _generator(),
        "federation": verified.federation,
        "period": {
            "start": entries[0].event.time if entries else None,
            "end": entries[-1].event.time if entries else None,
        },
        "checkpoint": {
            "origin": cp.origin,
            "size": cp.size,
            "root": cp.root.hex(),
            "note": cp.text,
        },
        "unit_of_privacy": privacy.get("unit_of_privacy", "not recorded"),
        "accountants": [{"name": n, "version": v} for n, v in accountants],
        "library_versions": versions,
        "trust_model": _plain(created.get("threat_model", {})),
        "guarantees": _guarantees(
            str(created.get("threat_model", {}).get("mode", "masking")), "silo_level" in privacy
        ),
        "configuration": _flatten(created.get("config", {})),
        "roster_fingerprint": created.get("roster_fingerprint"),
        "roster_changes": roster_changes,
        "mechanism_parameters": mechanism,
        "silo_level_dp": {
            "configuration": _plain(privacy.get("silo_level")),
            "per_round": silo_level,
        }
        if silo_level or "silo_level" in privacy
        else None,
        "rounds": ordered_rounds,
        "silos": silo_list,
        "incidents": incidents.rows,
        "verification": {
            "status": "verified" if verified.anchors.fully_pinned else "unpinned",
            "entries": len(entries),
            "attestations_checked": verified.attestations_checked,
            "epsilons_recomputed": verified.epsilons_recomputed,
            "checkpoints_checked": verified.checkpoints_checked,
            "anchors": _anchors(verified.anchors),
            "statement": _pinning_statement(verified.anchors),
            "notes": list(verified.notes),
        },
        "regulatory_mapping": [
            {"section": a, "fields": b, "nist_sp_800_226": c, "eu_ai_act_article_12": d}
            for a, b, c, d in _MAPPING
        ],
        "references": [NIST_SP_800_226, EU_AI_ACT],
    }
    report["summary"] = _summary(report, verified, created, privacy)
    return report


def _generator() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"name": "secagg audit report", "version": version("secagg")}
    except PackageNotFoundError:
        return {"name": "secagg audit report", "version": "unknown"}


def _summary(
    report: Mapping[str, Any],
    verified: VerificationReport,
    created: Mapping[str, Any],
    privacy: Mapping[str, Any],
) -> dict[str, Any]:
    """The plain-language summary the report leads with (wording after NIST SP 800-226)."""
    config = created.get("config", {})
    threat = created.get("threat_model", {})
    mode = str(threat.get("mode", config.get("mode", "masking")))
    rounds = report["rounds"]
    completed = sum(r["status"] == "closed" for r in rounds)
    aborted = sum(r["status"] == "aborted" for r in rounds)
    planned = config.get("rounds")
    roster = list(verified.roster_members) or [s["id"] for s in report["silos"]]
    contributors = sorted({s for r in rounds for s in r["survivors"]})
    period = report["period"]
    size = config.get("vector_length")
    unit = str(report["unit_of_privacy"])
    what = (
        f"Federation {report['federation']!r} trained one shared model"
        + (f" of {size:,} parameters" if isinstance(size, int) else "")
        + (f" over {planned} planned rounds" if isinstance(planned, int) else "")
        + f" with {_MODE_WORDS.get(mode, mode)}. {completed} round(s) completed and "
        f"{aborted} aborted."
    )
    who = (
        f"The consortium's signed roster lists {len(roster)} silos: {_join(roster)}. "
        f"{len(contributors)} of them contributed to at least one completed round"
        + (f" ({_join(contributors)})." if contributors else ".")
    )
    when = (
        f"The ledger runs from {_when(period['start'])} (federation created) to "
        f"{_when(period['end'])}; this report was generated at {_when(report['generated_at'])}."
    )
    spent = [s for s in report["silos"] if s["epsilon_by_round"]]
    record_level = bool(spent) or "budget" in privacy or "silo_budgets" in privacy
    min_cohort = threat.get("min_cohort")
    cohort = f"at least {min_cohort} silos" if min_cohort else "several silos"
    if record_level:
        guarantee = (
            "Each silo trained on its own data with differentially private training (DP-SGD): "
            "each record's influence on a training step is clipped to a fixed bound and random "
            "noise is added inside the silo, and the coordinator only ever received the sum of "
            f"the updates of {cohort}, never one silo's update. The guarantee, per silo: "
            f"whether or not {unit} was used, the probability of anything published "
            "from the training (the model and every update) changes by at most a factor of "
            "e^epsilon, except with a probability of at most delta. Epsilon adds up over the "
            "rounds; the figures below are each silo's total."
        )
    else:
        guarantee = (
            "No record-level differential privacy was recorded for this federation: the "
            f"coordinator only ever received the sum of the updates of {cohort} (secure "
            "aggregation), but nothing in this ledger limits what that sum reveals about one "
            "record."
        )
    top = max(spent, key=lambda s: s["epsilon_counted"], default=None)
    if top is not None:
        epsilon = float(top["epsilon_counted"])
        budget = top.get("budget") or {}
        factor = math.exp(epsilon) if epsilon < 700 else math.inf
        epsilon_words = (
            "Epsilon is the privacy loss: 0 would mean the training reveals nothing about "
            f"{unit}, and the larger it is, the more it may reveal. The highest total here "
            f"is {epsilon:.3g} ({top['id']})"
            + (f", within a budget of {float(budget['epsilon']):g}" if "epsilon" in budget else "")
            + f": an observer who sees everything published can change the odds of any "
            f"conclusion about {unit} by at most a factor of e^{epsilon:.3g} = {factor:,.3g}."
            " Smaller is stronger; NIST SP 800-226 explains how to weigh a value."
        )
        deltas = sorted({float(s["delta"]) for s in spent if s["delta"] is not None})
        delta_words = (
            f"Delta ({_join([f'{d:g}' for d in deltas])}) is the small probability that the "
            "epsilon bound does not hold at all. It should be far smaller than one divided by "
            f"the number of records in a silo, so that no record is likely to be exposed outright."
        )
    else:
        epsilon_words = "No silo attested a privacy spend, so no epsilon was recorded."
        delta_words = "No delta was recorded."
    silo_level = report["silo_level_dp"]
    silo_words = None
    if silo_level and silo_level["per_round"]:
        last = silo_level["per_round"][-1]
        silo_words = (
            "On top of that, silo-level differential privacy: each silo also added integer noise "
            "before aggregation, so the sum protects one silo's whole contribution to a round "
            f"({last.get('unit_of_privacy', 'one silo per round')}): epsilon {float(last['epsilon']):.3g}, "
            f"delta {float(last['delta']):g} after {last.get('rounds', len(silo_level['per_round']))} "
            "round(s)."
        )
    return {
        "silos": roster,
        "contributors": contributors,
        "mode": mode,
        "rounds_planned": planned if isinstance(planned, int) else None,
        "rounds_completed": completed,
        "rounds_aborted": aborted,
        "what": what,
        "who": who,
        "when": when,
        "guarantee": guarantee,
        "unit_of_privacy": (
            f"The unit of privacy, the thing the guarantee protects, is {unit}. Record-level "
            "protection does not hide a silo's overall participation, only each record inside it."
        ),
        "epsilon": epsilon_words,
        "delta": delta_words,
        "silo_level": silo_words,
        "reference": "Terms and wording follow " + NIST_SP_800_226 + ".",
    }


# Colour, marker and line style all change from silo to silo, so series stay apart where they
# overlap, in greyscale and for colour-blind readers (Okabe-Ito colours).
_COLOURS: Final = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_MARKERS: Final = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
_LINESTYLES: Final = ("solid", "dotted", "dashdot", (0, (5, 1, 1, 1, 1, 1)))  # "--" is the budget's
_BUDGET_COLOUR: Final = "#555555"


def _mathtext_free(text: str) -> str:
    """A label matplotlib draws literally: ``$`` would start math mode."""
    return text.replace("$", r"\$")


def _epsilon_plot(report: Mapping[str, Any]) -> str:
    """Inline SVG: cumulative epsilon per silo per round, the budget(s) as dashed, labelled lines.

    Drawn with matplotlib on its SVG canvas (no pyplot, no global backend or style changes) and
    deterministic: fixed hash salt, no date or creator metadata. Each silo's line is the SVG group
    ``epsilon-silo-<i>`` (in report order), each budget line ``epsilon-budget-<j>``.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (``pip install secagg[report]``).
    """
    import matplotlib  # optional dependency (the "report" extra): imported only when rendering
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    silos = report["silos"]
    budgets: dict[float, list[str]] = {}
    for silo in silos:
        if silo.get("budget"):
            budgets.setdefault(float(silo["budget"]["epsilon"]), []).append(str(silo["id"]))
    with matplotlib.rc_context(
        {
            "svg.hashsalt": "secagg-audit-report",  # fixed ids of clip paths and markers: same bytes
            "svg.fonttype": "none",  # text stays text (searchable, smaller), not glyph outlines
            "font.family": "DejaVu Sans",  # ships with matplotlib: layout independent of the machine
            "font.size": 9.0,
        }
    ):
        figure = Figure(figsize=(8.6, 3.8))
        FigureCanvasSVG(figure)
        axes = figure.add_subplot()
        handles: list[Line2D] = []
        labels: list[str] = []
        for i, silo in enumerate(silos):
            series = sorted(silo["epsilon_by_round"], key=lambda p: p["round"])
            colour = _COLOURS[i % len(_COLOURS)]
            hollow = i % 2 == 1
            (line,) = axes.plot(
                [p["round"] for p in series],
                [p.get("epsilon_counted", p["epsilon"]) for p in series],
                color=colour,
                marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                # later silos are drawn thinner and smaller, every other one hollow: a silo whose
                # points coincide with an earlier one's still shows around or inside them
                linewidth=2.4 - 0.6 * (i % 3),
                markersize=8.0 - 1.5 * (i % 3),
                markerfacecolor="none" if hollow else colour,
                markeredgecolor=colour if hollow else "white",
                markeredgewidth=1.4 if hollow else 0.6,
                gid=f"epsilon-silo-{i}",
            )
            handles.append(line)
            labels.append(_mathtext_free(str(silo["id"])))
        for j, (epsilon, owners) in enumerate(sorted(budgets.items())):
            label = f"budget {epsilon:g}"
            if len(budgets) > 1:
                label += f" ({', '.join(owners)})"
            line = axes.axhline(
                epsilon,
                color=_BUDGET_COLOUR,
                linestyle="--",
                linewidth=1.2,
                gid=f"epsilon-budget-{j}",
            )
            axes.annotate(
                _mathtext_free(label),
                xy=(1.0, epsilon),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                va="bottom",
                color=_BUDGET_COLOUR,
            )
            handles.append(line)
            labels.append(_mathtext_free(label))
        axes.set_xlabel("round")
        axes.set_ylabel("epsilon (cumulative)")
        points = [
            float(p.get("epsilon_counted", p["epsilon"]))
            for silo in silos
            for p in silo["epsilon_by_round"]
        ]
        highest = max([*points, *budgets], default=0.0)
        axes.set_ylim(0.0, 1.12 * highest if highest > 0 else 1.0)  # room for the budget label
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, color="#e3e3e3", linewidth=0.8)
        axes.set_axisbelow(True)
        if (
            handles
        ):  # explicit labels: shown as given (an auto legend would drop ids starting with "_")
            axes.legend(
                handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
            )
        out = io.StringIO()
        figure.savefig(
            out,
            format="svg",
            bbox_inches="tight",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    svg = out.getvalue()
    svg = svg[svg.index("<svg") :]  # no XML declaration or DOCTYPE inside HTML
    return svg.replace(
        "<svg ",
        '<svg id="epsilon-plot" role="img" '
        'aria-label="Cumulative epsilon per silo per round against the budget" ',
        1,
    )


def render_html(report: Mapping[str, Any]) -> str:
    """Render the report as one self-contained HTML page (inline CSS and SVG, no network).

    Raises:
        ModuleNotFoundError: jinja2 or matplotlib is not installed (``pip install secagg[report]``).
    """
    import jinja2  # optional dependency (the "report" extra): imported only when rendering
    import markupsafe

    template_text = (
        resources.files("audits").joinpath("templates/report.html.j2").read_text("utf-8")
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

    def dated(text: object) -> markupsafe.Markup:
        # A date never breaks across lines (at its hyphens): it stays readable and searchable in the PDF.
        escaped = str(markupsafe.escape(str(text)))  # escaped first: only our span is markup
        return markupsafe.Markup(_DATE_RE.sub(r'<span class="when">\g<0></span>', escaped))  # noqa: S704

    env.filters["when"] = lambda time: dated(_when(time))
    env.filters["dated"] = dated
    template = env.from_string(template_text)
    return template.render(
        report=report,
        plot=markupsafe.Markup(_epsilon_plot(report)),  # noqa: S704 - matplotlib's SVG escapes its text
        versions=_version_table(report["library_versions"]),
        parameters=_parameter_table(report["mechanism_parameters"]),
        trust_words=_TRUST_WORDS,
        report_json=json.dumps(report, indent=2, sort_keys=True),
    )


def _version_table(rows: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """Library versions pivoted: one row per library, one column per silo."""
    silos: dict[str, None] = {}
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        silos[row["silo"]] = None
        table.setdefault(row["library"], {})[row["silo"]] = row["version"]
    return {"silos": list(silos), "rows": [(lib, table[lib]) for lib in sorted(table)]}


def _parameter_table(mechanism: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mechanism parameters pivoted: one row per parameter (in words), one column per silo."""
    present = {name for params in mechanism.values() for name in params}
    names = [n for n in _PARAMETER_WORDS if n in present] + sorted(present - set(_PARAMETER_WORDS))
    rows = []
    for name in names:
        cells = {silo: _cell(params.get(name)) for silo, params in mechanism.items()}
        rows.append((_PARAMETER_WORDS.get(name, name), name, cells))
    return {"silos": list(mechanism), "rows": rows}


def _cell(value: Any) -> str:
    """A parameter value as table text (a nested object as ``key value`` pairs, never a repr)."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return "; ".join(f"{r['parameter']} {r['value']}" for r in _flatten(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return _flatten(value)[0]["value"]


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    html_path = out / "report.html"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


_CHROMIUM_NAMES: Final = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The headless-capable Chromium on this machine (Debian's ``chromium`` first), or ``None``."""
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def write_pdf(
    html_path: str | Path,
    pdf_path: str | Path | None = None,
    *,
    chromium: str | None = None,
    timeout: float = 180.0,
) -> Path:
    """Print a written ``report.html`` to PDF with headless Chromium (default: ``report.pdf`` beside it).

    Args:
        html_path: the HTML file :func:`write_report` wrote.
        pdf_path: where to write the PDF.
        chromium: the browser executable; default :func:`find_chromium`.
        timeout: seconds before the browser is given up on.

    Returns:
        The PDF's path.

    Raises:
        ReportError: no Chromium was found, it failed, or it wrote no PDF.

    Notes:
        A throwaway profile and every background service off (no network, no sync, no component
        updates): printing must not depend on or leak to anything outside the machine. The page is
        ours (escaped values, no script, nothing fetched), which is why running without Chromium's
        sandbox (needed as root and in containers) is acceptable here. The PDF is written to a
        temporary name and renamed, so a failed print never leaves a truncated report.pdf.
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise ReportError(
            "no PDF: headless Chromium was not found (Debian: apt-get install chromium); "
            "report.html and report.json are written"
        )
    source = Path(html_path).resolve()
    target = Path(pdf_path) if pdf_path is not None else source.with_suffix(".pdf")
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="secagg-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-pdf-header-footer",
            f"--user-data-dir={profile}",
            f"--print-to-pdf={partial}",
            source.as_uri(),
        ]
        try:
            result = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
                command, capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            partial.unlink(missing_ok=True)
            raise ReportError(f"no PDF: {browser} could not print the report: {exc}") from exc
    if result.returncode != 0 or not partial.is_file() or partial.read_bytes()[:5] != b"%PDF-":
        partial.unlink(missing_ok=True)
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ReportError(
            f"no PDF: {browser} exited with {result.returncode} and wrote no PDF {detail[0]}".rstrip()
        )
    partial.replace(target)
    return target
