"""What a silo imports: the SDK for both aggregation modes (transport, run loop, policy, local histories).

Masking mode is :class:`Silo`; Paillier mode is :class:`coordinator.sdk.paillier.PaillierSilo` (imported from
its module, so the ``paillier`` extra stays optional). Both are a :class:`SiloClient`: the one round loop over
one :class:`Transport`.
"""

from coordinator.config import SiloPolicy
from coordinator.sdk.loop import PrivateUpdate, RoundReport, SiloClient
from coordinator.sdk.masking import RoundContext, Silo
from coordinator.sdk.transport import RetryPolicy, Transport

__all__ = [
    "PrivateUpdate",
    "RetryPolicy",
    "RoundContext",
    "RoundReport",
    "Silo",
    "SiloClient",
    "SiloPolicy",
    "Transport",
]
