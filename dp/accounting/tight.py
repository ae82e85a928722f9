"""The tight accountant for reported numbers: PLD with a time limit and a recorded RDP fallback.

Notes:
    Reported epsilons come from the privacy loss distribution (PLD) accountant of Google's
    ``dp-accounting`` (Meiser and Mohammadi, CCS 2018; Koskela, Jalko, Honkela, AISTATS
    2020; Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots", PETS 2022), with
    its default pessimistic discretisation, so the number is an upper bound on the true
    epsilon up to the discretisation interval. For sample rate 0.01, noise multiplier 1.0,
    10,000 steps and delta 1e-5 it gives 6.19, as Opacus 1.6's PRV accountant does, where
    RDP gives 6.71. GDP (the CLT approximation) is never used: it is not an upper bound.

    The computation runs in a separate interpreter (``python -m
    dp.accounting._pld_worker``) under ``subprocess.run(timeout=...)``: a Python thread
    cannot be cancelled, so a timed-out thread would keep burning a core of the silo; a
    child process is killed at the deadline. A fresh interpreter (not ``fork``) avoids
    forking a process whose torch thread pools are running, and (unlike ``multiprocessing``
    spawn) never re-imports the caller's ``__main__``. When the worker fails, times out or
    returns a non-finite number, the report falls back to the RDP accountant and records
    why in ``fallback_reason``.

    Epsilon is validated finite; a negative value (numerical noise of the discretisation
    around 0) is clamped to 0 and ``clamped`` is set: (eps, delta)-DP with eps < 0 implies
    (0, delta)-DP, so the clamp only weakens the claim.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dp.accounting._rdp import CONVERSION as RDP_CONVERSION
from dp.accounting._versions import package_version
from dp.accounting.mechanism import MechanismStep, validate_delta
from dp.accounting.rdp import RdpAccountant
from dp.errors import AccountingError, InvalidPrivacyParameters

__all__ = ["PLD_CONVERSION", "EpsilonReport", "tight_epsilon"]

#: How the PLD accountant turns a distribution into (epsilon, delta).
PLD_CONVERSION = (
    "pld: smallest epsilon with hockey-stick divergence <= delta of the pessimistic "
    "discretised privacy loss distribution (dp-accounting PLDAccountant, add-or-remove-one)"
)

_WORKER_MODULE = "dp.accounting._pld_worker"
_MAX_REASON_CHARS = 300


@dataclass(frozen=True, kw_only=True, slots=True)
class EpsilonReport:
    """A reported epsilon with everything needed to reproduce it.

    Attributes:
        epsilon: finite, >= 0.
        delta: the delta it holds at.
        accountant: ``"pld"`` or, after a fallback, ``"rdp"``.
        library: the library that computed it (``"dp-accounting"`` or ``"secagg"``).
        library_version: that library's installed version.
        conversion: how the accountant's curve became (epsilon, delta).
        parameters: accountant parameters (discretisation, neighbouring relation, steps...).
        fallback_reason: why the tight accountant was not used, or None.
        clamped: a negative numerical result was clamped to 0.
    """

    epsilon: float
    delta: float
    accountant: str
    library: str
    library_version: str
    conversion: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    fallback_reason: str | None = None
    clamped: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.epsilon) or self.epsilon < 0.0:
            raise AccountingError(
                f"a reported epsilon must be finite and >= 0, got {self.epsilon!r}"
            )
        validate_delta(self.delta)
        if self.accountant not in {"pld", "rdp"}:
            raise AccountingError(f"unknown accountant {self.accountant!r} (GDP is never reported)")
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the audit ledger and reports."""
        return {
            "accountant": self.accountant,
            "clamped": self.clamped,
            "conversion": self.conversion,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "fallback_reason": self.fallback_reason,
            "library": self.library,
            "library_version": self.library_version,
            "parameters": dict(self.parameters),
        }


def _summary(history: list[MechanismStep]) -> dict[str, Any]:
    return {
        "rounds": len(history),
        "total_steps": sum(step.steps for step in history),
        "distinct_mechanisms": len({(s.noise_multiplier, s.sample_rate) for s in history}),
        "neighboring_relation": "add_or_remove_one",
    }


def _rdp_report(history: list[MechanismStep], delta: float, reason: str) -> EpsilonReport:
    accountant = RdpAccountant(history=history)
    epsilon, order = accountant.epsilon_and_order(delta)
    return EpsilonReport(
        epsilon=epsilon,
        delta=delta,
        accountant="rdp",
        library="secagg",
        library_version=package_version("secagg"),
        conversion=RDP_CONVERSION,
        parameters={**_summary(history), "orders": "opacus-default", "optimal_order": order},
        fallback_reason=reason[:_MAX_REASON_CHARS],
    )


def _run_worker(job: dict[str, Any], time_limit_s: float) -> float:
    """Run the PLD worker; return its epsilon or raise ``AccountingError`` with the reason."""
    # The child must import this very ``dp`` package, whether or not it is installed.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(  # noqa: S603 - fixed argv: this interpreter and our module
            [sys.executable, "-m", _WORKER_MODULE],
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=time_limit_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AccountingError(f"PLD accountant timed out after {time_limit_s:g} s") from exc
    except OSError as exc:
        raise AccountingError(f"PLD worker could not start: {exc}") from exc
    if completed.returncode != 0:
        lines = completed.stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "no output"
        raise AccountingError(f"PLD worker exited with {completed.returncode}: {last}")
    try:
        epsilon = float(json.loads(completed.stdout)["epsilon"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AccountingError("PLD worker returned malformed output") from exc
    if not math.isfinite(epsilon):
        raise AccountingError(f"PLD accountant returned a non-finite epsilon ({epsilon!r})")
    return epsilon


def tight_epsilon(
    history: Iterable[MechanismStep],
    delta: float,
    *,
    time_limit_s: float = 60.0,
    value_discretization_interval: float = 1e-4,
) -> EpsilonReport:
    """Epsilon of ``history`` at ``delta`` with the PLD accountant, falling back to RDP.

    Args:
        history: every round the silo trained.
        delta: target delta.
        time_limit_s: wall-clock limit for the PLD computation (including interpreter start,
            about 1 s).
        value_discretization_interval: PLD discretisation; smaller is tighter and slower.

    Returns:
        An ``EpsilonReport``; ``fallback_reason`` is set when the number came from RDP.

    Raises:
        InvalidPrivacyParameters: bad delta, time limit or interval.
        AccountingError: even the RDP fallback could not produce a finite epsilon.
    """
    steps = list(history)
    if not all(isinstance(step, MechanismStep) for step in steps):
        raise TypeError("history must contain MechanismStep objects")
    delta = validate_delta(delta)
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise InvalidPrivacyParameters("time_limit_s must be finite and > 0")
    if not (math.isfinite(value_discretization_interval) and value_discretization_interval > 0):
        raise InvalidPrivacyParameters("value_discretization_interval must be finite and > 0")
    parameters = {
        **_summary(steps),
        "value_discretization_interval": value_discretization_interval,
        "pessimistic_estimate": True,
        "time_limit_s": time_limit_s,
    }
    if not steps:
        epsilon, clamped = 0.0, False
    else:
        job = {
            "history": [[s.noise_multiplier, s.sample_rate, s.steps] for s in steps],
            "delta": delta,
            "value_discretization_interval": value_discretization_interval,
        }
        try:
            raw = _run_worker(job, time_limit_s)
        except AccountingError as exc:
            return _rdp_report(steps, delta, str(exc))
        epsilon, clamped = max(raw, 0.0), raw < 0.0
    return EpsilonReport(
        epsilon=epsilon,
        delta=delta,
        accountant="pld",
        library="dp-accounting",
        library_version=package_version("dp-accounting"),
        conversion=PLD_CONVERSION,
        parameters=parameters,
        clamped=clamped,
    )
