"""The exception tree of ``dp``: every failure of training, accounting and budgets.

::

    PrivacyError
    ├── InvalidPrivacyParameters   epsilon/delta/noise/sample rate out of range, or not finite
    │   └── IncompatibleModel         a layer DP-SGD cannot train (BatchNorm): names the layer and the fix
    ├── BudgetExceeded             the next round would spend more than the silo's budget
    ├── AccountingError            an accountant failed (after any recorded fallback)
    ├── AttestationError           a privacy attestation cannot be accepted
    │   ├── InvalidAttestationSignature   the Ed25519 signature does not verify (opaque)
    │   └── AttestationRejected           claimed epsilon below the recomputation, or over the ceiling
    └── DistributedDPError         silo-level distributed DP (dp.distributed) cannot proceed
        ├── BitWidthTooSmall          the modular sum cannot hold n silos' encodings at this width
        ├── TooFewContributors        fewer contributions than the noise shares were sized for
        └── RoundingFailed            conditional rounding did not meet its norm bound

Notes:
    Opacus signals an exhausted budget with a bare ``ValueError``; we give it its own type
    so callers can refuse a round deliberately and auditors can count refusals.
    Verification failures raise and never return ``False`` (pyca/cryptography's rule), so a
    forgotten check cannot silently pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - import for annotations only
    from dp.accounting.attestation import EpsilonCheck

__all__ = [
    "AccountingError",
    "AttestationError",
    "AttestationRejected",
    "BitWidthTooSmall",
    "BudgetExceeded",
    "DistributedDPError",
    "IncompatibleModel",
    "InvalidAttestationSignature",
    "InvalidPrivacyParameters",
    "PrivacyError",
    "RoundingFailed",
    "TooFewContributors",
]


class PrivacyError(Exception):
    """Root of every error raised by ``dp``."""


class InvalidPrivacyParameters(PrivacyError):
    """A privacy parameter is out of range or not finite."""


class IncompatibleModel(InvalidPrivacyParameters):
    """The model has a layer DP-SGD cannot train (BatchNorm); the message names it and the fix."""


class BudgetExceeded(PrivacyError):
    """Training the next round would exceed the privacy budget."""


class AccountingError(PrivacyError):
    """An accountant could not produce a number."""


class AttestationError(PrivacyError):
    """A privacy attestation cannot be accepted."""


class InvalidAttestationSignature(AttestationError):
    """The attestation's Ed25519 signature does not verify under the given public key.

    Every cause (malformed key, wrong length, wrong signer, edited payload) folds into this
    one error so a caller learns nothing about which check failed.
    """


class AttestationRejected(AttestationError):
    """The attestation's epsilon is below the recomputed value or above the ceiling.

    Attributes:
        check: the full comparison, for the audit ledger.
    """

    def __init__(self, message: str, *, check: EpsilonCheck) -> None:
        super().__init__(message)
        self.check = check


class DistributedDPError(PrivacyError):
    """Silo-level distributed DP (``dp.distributed``) cannot proceed safely."""


class BitWidthTooSmall(DistributedDPError):
    """The modular sum's bit width cannot hold the sum of the silos' encodings."""


class TooFewContributors(DistributedDPError):
    """A sum holds fewer contributions than the noise shares were sized for.

    Decoding it would publish an aggregate with less noise than the guarantee assumes.
    """


class RoundingFailed(DistributedDPError):
    """Conditional stochastic rounding did not meet its norm bound within its retry budget."""
