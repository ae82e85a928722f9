"""Differential privacy for silos: DP-SGD training, privacy accounting, budgets, attestations.

``import dp`` stays free of torch: everything here comes from ``dp.accounting``. The trainer
lives in ``dp.training`` (``from dp.training import PrivateTrainer``), which needs the
``train`` extra (torch, opacus, scikit-learn).
"""

from __future__ import annotations

from dp.accounting import (
    DP_SGD_MECHANISM,
    RANDOMNESS_STATEMENT,
    BudgetLedger,
    EpsilonCheck,
    EpsilonReport,
    MechanismStep,
    PrivacyAttestation,
    PrivacyBudget,
    RdpAccountant,
    check_attestation,
    check_ceiling,
    recompute_epsilon,
    tight_epsilon,
    verify_attestation,
)
from dp.errors import (
    AccountingError,
    AttestationError,
    AttestationRejected,
    BudgetExceeded,
    InvalidAttestationSignature,
    InvalidPrivacyParameters,
    PrivacyError,
)

__all__ = [
    "DP_SGD_MECHANISM",
    "RANDOMNESS_STATEMENT",
    "AccountingError",
    "AttestationError",
    "AttestationRejected",
    "BudgetExceeded",
    "BudgetLedger",
    "EpsilonCheck",
    "EpsilonReport",
    "InvalidAttestationSignature",
    "InvalidPrivacyParameters",
    "MechanismStep",
    "PrivacyAttestation",
    "PrivacyBudget",
    "PrivacyError",
    "RdpAccountant",
    "check_attestation",
    "check_ceiling",
    "recompute_epsilon",
    "tight_epsilon",
    "verify_attestation",
]
