"""Privacy accounting without torch: RDP and PLD accountants, budgets, attestations.

The coordinator and the auditor import this package to recompute epsilon; it never imports
torch or opacus (import-linter checks it).
"""

from __future__ import annotations

from dp.accounting._rdp import CONVERSION as RDP_CONVERSION
from dp.accounting._rdp import DEFAULT_ORDERS
from dp.accounting._versions import library_versions
from dp.accounting.attestation import (
    DOMAIN_PREFIX,
    EPSILON_TOLERANCE,
    EpsilonCheck,
    PrivacyAttestation,
    check_attestation,
    verify_attestation,
)
from dp.accounting.budget import (
    BudgetLedger,
    PrivacyBudget,
    check_ceiling,
    check_delta_for_records,
)
from dp.accounting.mechanism import DP_SGD_MECHANISM, MechanismStep
from dp.accounting.randomness import RANDOMNESS_STATEMENT
from dp.accounting.rdp import (
    MAX_NOISE_MULTIPLIER,
    RdpAccountant,
    calibrate_noise_multiplier,
    epsilon_trajectory,
    recompute_epsilon,
)
from dp.accounting.tight import PLD_CONVERSION, EpsilonReport, tight_epsilon

__all__ = [
    "DEFAULT_ORDERS",
    "DOMAIN_PREFIX",
    "DP_SGD_MECHANISM",
    "EPSILON_TOLERANCE",
    "MAX_NOISE_MULTIPLIER",
    "PLD_CONVERSION",
    "RANDOMNESS_STATEMENT",
    "RDP_CONVERSION",
    "BudgetLedger",
    "EpsilonCheck",
    "EpsilonReport",
    "MechanismStep",
    "PrivacyAttestation",
    "PrivacyBudget",
    "RdpAccountant",
    "calibrate_noise_multiplier",
    "check_attestation",
    "check_ceiling",
    "check_delta_for_records",
    "epsilon_trajectory",
    "library_versions",
    "recompute_epsilon",
    "tight_epsilon",
    "verify_attestation",
]
