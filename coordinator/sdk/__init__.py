"""What a silo imports: the SDK for both aggregation modes (transport, run loop, policy, local histories)."""

from coordinator.config import SiloPolicy
from coordinator.sdk.masking import PrivateUpdate, RetryPolicy, RoundContext, RoundReport, Silo

__all__ = ["PrivateUpdate", "RetryPolicy", "RoundContext", "RoundReport", "Silo", "SiloPolicy"]
