"""A realistic federation's audit ledger, with real Ed25519 keys and a real RDP accountant."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from dp_accounting.rdp import RdpAccountant

from audits import (
    AuditBundle,
    CheckpointSigner,
    Event,
    EventKind,
    Ledger,
    load_bundle,
    write_bundle,
)
from dp.accounting import DP_SGD_MECHANISM, MechanismStep, recompute_epsilon

ORIGIN = "secagg.test/audit/fed-1"
FEDERATION = "fed-1"
SILOS = ("hospital-a", "hospital-b", "hospital-c")
DELTA = 1e-5
PREFIX = b"secagg/privacy-attestation/v1\n"


def rdp_epsilon(silo: str, attestations: Sequence[Mapping[str, Any]]) -> float:
    """Recompute a silo's cumulative epsilon from its attestations' DP-SGD parameters."""
    steps = tuple((a["sample_rate"], a["noise_multiplier"], a["steps"]) for a in attestations)
    return _google_rdp_epsilon(steps, attestations[-1]["delta"])


@functools.cache
def _google_rdp_epsilon(steps: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Google's RDP accountant over a history (cached: every test's ledger repeats the same histories)."""
    accountant = RdpAccountant()
    for sample_rate, noise_multiplier, count in steps:
        event = dpa.PoissonSampledDpEvent(sample_rate, dpa.GaussianDpEvent(noise_multiplier))
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def secagg_rdp_epsilon(silo: str, attestations: Sequence[Mapping[str, Any]]) -> float:
    """The coordinator's recomputation (dp.accounting's RDP accountant) over the whole history."""
    steps = [
        MechanismStep(
            noise_multiplier=a["noise_multiplier"], sample_rate=a["sample_rate"], steps=a["steps"]
        )
        for a in attestations
    ]
    return recompute_epsilon(steps, attestations[-1]["delta"])


class Clock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> str:
        self.t += 1
        return f"2025-03-01T10:{self.t // 60 % 60:02d}:{self.t % 60:02d}.000000Z"


@dataclass
class Federation:
    ledger: Ledger
    signer: CheckpointSigner
    silo_private: dict[str, Ed25519PrivateKey]
    silo_keys: dict[str, bytes]
    roster: bytes
    clock: Clock
    epsilon: Callable[[str, Sequence[Mapping[str, Any]]], float] = rdp_epsilon
    mechanism: str = "dp-sgd"

    def event(self, kind: EventKind, round: int | None, body: Mapping[str, Any]) -> Event:
        return Event.now(kind, federation=FEDERATION, round=round, body=body, clock=self.clock)

    def attestation_event(
        self, silo: str, rnd: int, history: list[dict[str, Any]], **override: Any
    ) -> Event:
        att: dict[str, Any] = {
            "session_id": session_of(rnd),
            "accountant": "rdp",
            "delta": DELTA,
            "federation": FEDERATION,
            "library_versions": {"dp-accounting": "0.6.0"},
            "max_grad_norm": 1.0,
            "mechanism": self.mechanism,
            "noise_multiplier": 1.1 + 0.1 * SILOS.index(silo),
            "round": rnd,
            "sample_rate": 0.02,
            "silo": silo,
            "steps": 50,
        }
        att["epsilon"] = self.epsilon(silo, [*history, att])
        att.update(override)
        history.append(att)
        payload = PREFIX + json.dumps(att, sort_keys=True, separators=(",", ":")).encode()
        signature = self.silo_private[silo].sign(payload)
        body = {
            "silo": silo,
            "attestation": att,
            "signature": signature.hex(),
            "signing_payload": payload.hex(),
            "recomputed_epsilon": self.epsilon(silo, history),
            "accountant": "rdp",
        }
        return self.event(EventKind.PRIVACY_ATTESTATION, rnd, body)


def session_of(rnd: int) -> str:
    """The session id of round ``rnd`` in these federations (what participants and attestations name)."""
    return hashlib.sha256(f"session-{rnd}".encode()).hexdigest()


def roster_fingerprint(roster: bytes) -> str:
    """How these tests fingerprint their stand-in roster (the real one hashes its signed payload)."""
    return hashlib.sha256(roster).hexdigest()


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, kw_only=True)
class Writer:
    """How the coordinator writing a test ledger behaves; the default is an honest one.

    Attributes:
        omit_attestation: (round, silo) whose attestation the coordinator leaves out of the ledger
            although the silo is listed among the round's contributors.
        participants_session: round -> the session id its participants record names instead of the
            one every attestation of the round is bound to (``None``: none, as old coordinators).
        record_level: whether ``federation_created`` has the ``[privacy]`` table.
        silo_level: the federation also runs silo-level distributed DP (a release per closed round).
        omit_release: a round whose closing record leaves out its silo-level release.
    """

    omit_attestation: tuple[int, str] | None = None
    participants_session: Mapping[int, str | None] = field(default_factory=dict)
    record_level: bool = True
    silo_level: bool = False
    omit_release: int | None = None


SILO_LEVEL = {
    "unit_of_privacy": "one silo's contribution to one round",
    "mechanism": "skellam",
    "noise_multiplier": 0.5,
    "bits": 20,
    "min_honest_survivors": 2,
    "planned_epsilon": 40.0,
    "delta": DELTA,
}


def silo_level_release(completed: int, contributors: int) -> dict[str, Any]:
    """A silo-level DP release as the coordinator records it in ``round_closed``."""
    return {
        "epsilon": 7.5 * completed**0.5,
        "delta": DELTA,
        "rounds": completed,
        "mechanism": "skellam",
        "rdp_order": 8,
        "unit_of_privacy": SILO_LEVEL["unit_of_privacy"],
        "noise_multiplier": 0.5,
        "bits": 20,
        "contributors": contributors,
        "wraps": 0,
    }


def build_federation(
    path: Path | str,
    rounds: int = 3,
    *,
    secagg_accountant: bool = False,
    writer: Writer = Writer(),
) -> Federation:
    """A federation's ledger; ``secagg_accountant``: epsilons as the coordinator computes them
    (dp.accounting RDP, DP-SGD mechanism label) instead of Google's dp_accounting; ``writer``:
    what the coordinator writing it leaves out or gets wrong."""
    ledger = Ledger(path, origin=ORIGIN)
    signer = CheckpointSigner.generate(key_name=ORIGIN)
    private = {s: Ed25519PrivateKey.generate() for s in SILOS}
    keys = {s: _raw(k) for s, k in private.items()}
    roster = json.dumps({"silos": {s: k.hex() for s, k in keys.items()}}, sort_keys=True).encode()
    fed = Federation(ledger, signer, private, keys, roster, Clock())
    if secagg_accountant:
        fed.epsilon, fed.mechanism = secagg_rdp_epsilon, DP_SGD_MECHANISM
    ledger.append(
        fed.event(
            EventKind.FEDERATION_CREATED,
            None,
            {
                "config": {"rounds": rounds, "vector_length": 31, "quantization_bits": 16},
                "roster_fingerprint": roster_fingerprint(roster),
                "threat_model": {"n": 3, "t": 2, "c": 0, "min_cohort": 3, "mode": "masking"},
            }
            | _privacy(writer),
        )
    )
    ledger.checkpoint(signer)
    histories: dict[str, list[dict[str, Any]]] = {s: [] for s in SILOS}
    model = hashlib.sha256(b"model-0").hexdigest()
    for rnd in range(1, rounds + 1):
        batch = [
            fed.event(EventKind.ROUND_OPENED, rnd, {"model_hash": model}),
            fed.event(
                EventKind.KEY_FINGERPRINTS,
                rnd,
                {
                    "fingerprints": {
                        s: hashlib.sha256(f"{s}{rnd}".encode()).hexdigest() for s in SILOS
                    }
                },
            ),
        ]
        dropped = ["hospital-c"] if rnd == 2 else []
        survivors = [s for s in SILOS if s not in dropped]
        batch.append(
            fed.event(
                EventKind.PARTICIPANTS,
                rnd,
                {
                    "survivors": survivors,
                    "dropped": dropped,
                    "stage": "unmask",
                }
                | _session(writer, rnd),
            )
        )
        for silo in survivors:
            if writer.record_level and writer.omit_attestation != (rnd, silo):
                batch.append(fed.attestation_event(silo, rnd, histories[silo]))
        model = hashlib.sha256(f"model-{rnd}".encode()).hexdigest()
        batch.append(fed.event(EventKind.GLOBAL_MODEL, rnd, {"model_hash": model}))
        closed: dict[str, Any] = {"global_model_hash": model}
        if writer.silo_level and writer.omit_release != rnd:
            closed["silo_level_dp"] = silo_level_release(rnd, len(survivors))
        batch.append(fed.event(EventKind.ROUND_CLOSED, rnd, closed))
        ledger.append_many(batch)
        ledger.checkpoint(signer)
    ledger.append(
        fed.event(
            EventKind.INCIDENT,
            None,
            {
                "severity": "warning",
                "description": "hospital-c missed the round 2 deadline",
                "silo": "hospital-c",
            },
        )
    )
    ledger.checkpoint(signer)
    return fed


def _session(writer: Writer, rnd: int) -> dict[str, Any]:
    """What the participants record says about the session (``None``: nothing, as old coordinators)."""
    session = writer.participants_session.get(rnd, session_of(rnd))
    return {} if session is None else {"session_id": session}


def _privacy(writer: Writer) -> dict[str, Any]:
    privacy: dict[str, Any] = {}
    if writer.record_level:
        privacy |= {
            "unit_of_privacy": "one patient record (add/remove) in one silo",
            "budget": {"epsilon": 8.0, "delta": DELTA},
        }
    if writer.silo_level:
        privacy["silo_level"] = SILO_LEVEL
    return {"privacy": privacy} if privacy else {}


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = build_federation(tmp_path / "ledger.sqlite")
    yield fed
    fed.ledger.close()


@pytest.fixture
def bundle_dir(tmp_path: Path, federation: Federation) -> Path:
    return write_bundle(
        federation.ledger,
        tmp_path / "bundle",
        roster_bytes=federation.roster,
        audit_public_key=federation.signer.public_key,
    )


def history_of(fed: Federation, silo: str) -> list[dict[str, Any]]:
    """The attestations ``silo`` has in ``fed``'s ledger so far, oldest first."""
    return [
        dict(json.loads(e)["body"]["attestation"])
        for e in fed.ledger.entries()
        if f'"silo":"{silo}"'.encode() in e and b'"privacy_attestation"' in e
    ]


def export(fed: Federation, out: Path) -> AuditBundle:
    """Checkpoint ``fed``'s ledger and load its bundle, written to ``out``."""
    fed.ledger.checkpoint(fed.signer)
    return load_bundle(
        write_bundle(
            fed.ledger, out, roster_bytes=fed.roster, audit_public_key=fed.signer.public_key
        )
    )
