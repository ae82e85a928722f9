"""The unit of privacy accounting: one round's mechanism parameters, validated.

Notes:
    One ``MechanismStep`` is ``steps`` iterations of the Poisson-subsampled Gaussian
    mechanism (DP-SGD, Abadi et al. CCS 2016) with noise multiplier ``sigma`` (noise std
    over the clipping norm) and sampling probability ``q``; this is exactly what Opacus'
    accountants record as ``(noise_multiplier, sample_rate, steps)``. The neighbouring
    relation is add-or-remove-one-record, the relation both Opacus' RDP analysis and
    Poisson sampling assume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dp.errors import InvalidPrivacyParameters

__all__ = ["DP_SGD_MECHANISM", "MechanismStep", "validate_delta", "validate_epsilon"]

#: Mechanism label recorded in attestations and reports for Opacus DP-SGD.
DP_SGD_MECHANISM = "dp-sgd/poisson-subsampled-gaussian"


def _real(name: str, value: object) -> float:
    # bool is an int subclass; a True noise multiplier is a bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyParameters(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidPrivacyParameters(f"{name} must be finite, got {result!r}")
    return result


def validate_delta(delta: object) -> float:
    """Return ``delta`` as a float, or raise ``InvalidPrivacyParameters`` unless 0 < delta < 1."""
    value = _real("delta", delta)
    if not 0.0 < value < 1.0:
        raise InvalidPrivacyParameters(f"delta must be in (0, 1), got {value!r}")
    return value


def validate_epsilon(epsilon: object, *, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float, or raise ``InvalidPrivacyParameters`` unless finite > 0."""
    value = _real(name, epsilon)
    if value <= 0.0:
        raise InvalidPrivacyParameters(f"{name} must be > 0, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class MechanismStep:
    """``steps`` DP-SGD iterations at one (noise multiplier, sample rate).

    Args:
        noise_multiplier: sigma > 0, the Gaussian noise std divided by ``max_grad_norm``.
        sample_rate: Poisson sampling probability q, 0 < q <= 1.
        steps: number of noisy optimizer steps, >= 1.

    Raises:
        InvalidPrivacyParameters: a value is out of range, not finite, or of the wrong type.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        sigma = _real("noise_multiplier", self.noise_multiplier)
        if sigma <= 0.0:
            raise InvalidPrivacyParameters(f"noise_multiplier must be > 0, got {sigma!r}")
        q = _real("sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise InvalidPrivacyParameters(f"sample_rate must be in (0, 1], got {q!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidPrivacyParameters(f"steps must be an int >= 1, got {self.steps!r}")
        # Normalise ints to floats so equal parameters compare and hash equal (cache keys).
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", q)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready dict; floats survive ``json`` exactly (``repr`` round-trips)."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MechanismStep:
        """Inverse of ``to_dict``; rejects missing or extra keys."""
        expected = {"noise_multiplier", "sample_rate", "steps"}
        if not isinstance(data, Mapping) or set(data) != expected:
            raise InvalidPrivacyParameters(
                f"a mechanism step needs exactly the keys {sorted(expected)}"
            )
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sample_rate=data["sample_rate"],
            steps=data["steps"],
        )
