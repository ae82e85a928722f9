"""Secure aggregation for cross-silo federated learning: the masking protocol, its primitives and roles.

Dangerous primitives live in :mod:`secagg.hazmat`; the protocol roles here are built on them.
"""

from secagg.client import SecAggClient
from secagg.config import PROTOCOL_VERSION, RoundConfig, check_threshold, minimum_threshold
from secagg.errors import (
    DecryptionError,
    InvalidParameters,
    InvalidSignature,
    ProtocolError,
    ProtocolViolation,
    RoundAborted,
    SecAggError,
)
from secagg.hazmat.quantize import Quantizer
from secagg.messages import (
    Advertisement,
    EncryptedShare,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.roster import Roster
from secagg.server import AggregateResult, SecAggServer

__all__ = [
    "PROTOCOL_VERSION",
    "Advertisement",
    "AggregateResult",
    "DecryptionError",
    "EncryptedShare",
    "InvalidParameters",
    "InvalidSignature",
    "ProtocolError",
    "ProtocolViolation",
    "Quantizer",
    "Roster",
    "RoundAborted",
    "RoundConfig",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "ShareKeys",
    "Stage",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_threshold",
    "minimum_threshold",
]
