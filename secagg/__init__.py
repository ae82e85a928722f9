"""Secure aggregation for cross-silo federated learning: the masking protocol's public surface.

Dangerous primitives live in :mod:`secagg.hazmat`; the roles are built on them in :mod:`secagg.masking` and
:mod:`secagg.paillier` (the latter needs the ``paillier`` extra and is never imported from here).
"""

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
from secagg.masking.client import SecAggClient
from secagg.masking.config import (
    PROTOCOL_VERSION,
    RoundConfig,
    check_threshold,
    minimum_threshold,
)
from secagg.masking.graph import (
    CommunicationGraph,
    GraphParameters,
    check_graph_security,
    communication_graph,
    secaggplus_parameters,
)
from secagg.masking.messages import (
    Advertisement,
    EncryptedShare,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.masking.server import AggregateResult, SecAggServer
from secagg.roster import Roster

__all__ = [
    "PROTOCOL_VERSION",
    "Advertisement",
    "AggregateResult",
    "CommunicationGraph",
    "DecryptionError",
    "EncryptedShare",
    "GraphParameters",
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
    "check_graph_security",
    "check_threshold",
    "communication_graph",
    "minimum_threshold",
    "secaggplus_parameters",
]
