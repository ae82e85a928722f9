"""Per-round privacy attestations: what a silo signs, how to verify it and re-check its epsilon.

Notes:
    A silo signs (with its roster Ed25519 key, RFC 8032) the facts of each round: the
    mechanism and its parameters and the epsilon it has spent so far. The signed bytes are
    ``DOMAIN_PREFIX`` followed by deterministic JSON (sorted keys, compact separators, no
    NaN/Infinity, Python's shortest round-trip float ``repr``), so the same attestation
    always yields the same bytes and a signature made for another purpose (a key
    advertisement, a checkpoint) can never verify as an attestation.

    The coordinator does not trust the claimed epsilon: ``check_attestation`` recomputes it
    from the accepted history plus this round's parameters with the RDP accountant
    (``recompute_epsilon``). The claimed epsilon is the silo's *RDP* spend (the number its
    live ledger enforces), so an honest claim equals the recomputation exactly: same code,
    same summation. ``EPSILON_TOLERANCE`` (relative 1e-9) only absorbs the last-digit
    differences of an independent implementation of the same math (Opacus agrees to about
    1e-12); a claim below the recomputation by more than that is under-reporting.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dp.accounting.budget import PrivacyBudget
from dp.accounting.mechanism import DP_SGD_MECHANISM, MechanismStep, validate_delta
from dp.accounting.rdp import RdpAccountant
from dp.errors import (
    AttestationError,
    AttestationRejected,
    InvalidAttestationSignature,
    InvalidPrivacyParameters,
)

__all__ = [
    "DOMAIN_PREFIX",
    "EPSILON_TOLERANCE",
    "EpsilonCheck",
    "PrivacyAttestation",
    "check_attestation",
    "verify_attestation",
]

#: Domain separation for attestation signatures (see module Notes).
DOMAIN_PREFIX = b"secagg/privacy-attestation/v1\n"

#: Relative tolerance for a claimed epsilon below the recomputation (see module Notes).
EPSILON_TOLERANCE = 1e-9

_SESSION_ID = re.compile(r"[0-9a-f]{64}")
_FIELDS = (
    "accountant",
    "delta",
    "epsilon",
    "federation",
    "library_versions",
    "max_grad_norm",
    "mechanism",
    "noise_multiplier",
    "round",
    "sample_rate",
    "session_id",
    "silo",
    "steps",
)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidPrivacyParameters(f"{name} must be a non-empty string")
    return value


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidPrivacyParameters(f"{name} must be a finite number")
    return float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class PrivacyAttestation:
    """What a silo attests about one round (all fields public; nothing secret here).

    Attributes:
        federation: federation id.
        round: round number (>= 0).
        session_id: the round's session id, 64 lowercase hex characters (SHA-256).
        silo: the attesting silo's id.
        mechanism: e.g. ``"dp-sgd/poisson-subsampled-gaussian"``.
        noise_multiplier: sigma of this round.
        sample_rate: Poisson sampling rate q of this round.
        steps: noisy optimizer steps of this round.
        max_grad_norm: per-sample clipping norm C.
        accountant: accountant name and version that produced ``epsilon``.
        epsilon: epsilon spent so far, this round included (RDP accountant).
        delta: the delta ``epsilon`` holds at.
        library_versions: library name -> version.
    """

    federation: str
    round: int
    session_id: str
    silo: str
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    accountant: str
    epsilon: float
    delta: float
    library_versions: Mapping[str, str]

    def __post_init__(self) -> None:
        for name in ("federation", "silo", "mechanism", "accountant"):
            _text(name, getattr(self, name))
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise InvalidPrivacyParameters("round must be an int >= 0")
        if not isinstance(self.session_id, str) or not _SESSION_ID.fullmatch(self.session_id):
            raise InvalidPrivacyParameters("session_id must be 64 lowercase hex characters")
        step = self.mechanism_step  # validates sigma, q and steps
        object.__setattr__(self, "noise_multiplier", step.noise_multiplier)
        object.__setattr__(self, "sample_rate", step.sample_rate)
        max_grad_norm = _real("max_grad_norm", self.max_grad_norm)
        if max_grad_norm <= 0:
            raise InvalidPrivacyParameters("max_grad_norm must be > 0")
        object.__setattr__(self, "max_grad_norm", max_grad_norm)
        epsilon = _real("epsilon", self.epsilon)
        if epsilon < 0:
            raise InvalidPrivacyParameters("epsilon must be >= 0")
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "delta", validate_delta(self.delta))
        versions = self.library_versions
        if not isinstance(versions, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
        ):
            raise InvalidPrivacyParameters("library_versions must map str to str")
        object.__setattr__(
            self, "library_versions", MappingProxyType(dict(sorted(versions.items())))
        )

    @property
    def mechanism_step(self) -> MechanismStep:
        """This round's accounting parameters."""
        return MechanismStep(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field; floats round-trip exactly through ``json``."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["library_versions"] = dict(self.library_versions)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyAttestation:
        """Inverse of ``to_dict``; rejects missing or unknown fields.

        Raises:
            InvalidPrivacyParameters: a field is missing, unknown or invalid.
        """
        if not isinstance(data, Mapping) or set(data) != set(_FIELDS):
            raise InvalidPrivacyParameters(
                f"an attestation needs exactly the fields {list(_FIELDS)}"
            )
        return cls(**{name: data[name] for name in _FIELDS})

    def signing_payload(self) -> bytes:
        """The exact bytes a silo signs: ``DOMAIN_PREFIX`` + deterministic JSON."""
        body = json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
            ensure_ascii=True,
        )
        return DOMAIN_PREFIX + body.encode("ascii")


def verify_attestation(
    attestation: PrivacyAttestation, signature: bytes, public_key_bytes: bytes
) -> None:
    """Verify a silo's Ed25519 signature over ``attestation.signing_payload()``.

    Args:
        attestation: the attestation as received.
        signature: 64-byte Ed25519 signature.
        public_key_bytes: the silo's 32-byte raw roster public key.

    Raises:
        InvalidAttestationSignature: for any failure (malformed key or signature, wrong key,
            edited attestation); the cause is not distinguished on purpose.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(public_key_bytes))
        key.verify(bytes(signature), attestation.signing_payload())
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidAttestationSignature("privacy attestation signature does not verify") from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class EpsilonCheck:
    """The coordinator's comparison of a claimed epsilon with its own recomputation.

    Attributes:
        silo: the attesting silo.
        round: the attested round.
        claimed_epsilon: epsilon in the attestation.
        recomputed_epsilon: RDP epsilon of the history plus this round.
        delta: the attestation's delta.
        accountant: the recomputing accountant (name and version).
        tolerance: relative tolerance used for under-reporting.
        ceiling_epsilon: the federation ceiling, if any.
        under_reported: claimed < recomputed beyond the tolerance.
        over_ceiling: either epsilon (or the delta) exceeds the ceiling.
    """

    silo: str
    round: int
    claimed_epsilon: float
    recomputed_epsilon: float
    delta: float
    accountant: str
    tolerance: float
    ceiling_epsilon: float | None
    under_reported: bool
    over_ceiling: bool

    @property
    def ok(self) -> bool:
        """Neither under-reported nor over the ceiling."""
        return not (self.under_reported or self.over_ceiling)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the audit ledger."""
        return {
            "accountant": self.accountant,
            "ceiling_epsilon": self.ceiling_epsilon,
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "over_ceiling": self.over_ceiling,
            "recomputed_epsilon": self.recomputed_epsilon,
            "round": self.round,
            "silo": self.silo,
            "tolerance": self.tolerance,
            "under_reported": self.under_reported,
        }


def check_attestation(
    attestation: PrivacyAttestation,
    history_before: Iterable[MechanismStep],
    *,
    ceiling: PrivacyBudget | None = None,
    strict: bool = True,
) -> EpsilonCheck:
    """Recompute the attested epsilon and compare it with the claim and the ceiling.

    Verify the signature first (``verify_attestation``); this checks the numbers.

    Args:
        attestation: the (signature-verified) attestation.
        history_before: the silo's rounds accepted before this one.
        ceiling: the federation's ceiling, if it sets one.
        strict: raise on failure (refuse); with False, return the check so the caller can
            flag it in the ledger instead.

    Returns:
        The comparison (``ok`` is True unless ``strict`` is False and a check failed).

    Raises:
        AttestationRejected: ``strict`` and the claim is under-reported or over the ceiling.
        AttestationError: the mechanism is not one this accountant can recompute.
    """
    if attestation.mechanism != DP_SGD_MECHANISM:
        raise AttestationError(f"cannot recompute epsilon for mechanism {attestation.mechanism!r}")
    accountant = RdpAccountant(history=history_before)
    accountant.record(attestation.mechanism_step)
    recomputed = accountant.epsilon(attestation.delta)
    claimed = attestation.epsilon
    under = claimed < recomputed - EPSILON_TOLERANCE * max(1.0, recomputed)
    over = ceiling is not None and (
        max(claimed, recomputed) > ceiling.epsilon or attestation.delta > ceiling.delta
    )
    check = EpsilonCheck(
        silo=attestation.silo,
        round=attestation.round,
        claimed_epsilon=claimed,
        recomputed_epsilon=recomputed,
        delta=attestation.delta,
        accountant=accountant.describe()["accountant"],
        tolerance=EPSILON_TOLERANCE,
        ceiling_epsilon=None if ceiling is None else ceiling.epsilon,
        under_reported=under,
        over_ceiling=over,
    )
    if strict and not check.ok:
        reasons = []
        if under:
            reasons.append(f"claimed epsilon {claimed:.6g} < recomputed {recomputed:.6g}")
        if over and ceiling is not None:
            reasons.append(
                f"epsilon {max(claimed, recomputed):.6g} (delta {attestation.delta:g}) over the "
                f"ceiling epsilon={ceiling.epsilon:.6g}, delta={ceiling.delta:g}"
            )
        raise AttestationRejected(
            f"attestation of silo {attestation.silo!r} round {attestation.round} rejected: "
            + "; ".join(reasons),
            check=check,
        )
    return check
