"""DP-SGD training in a silo with Opacus: the only part of ``dp`` that imports torch or opacus.

Notes:
    How randomness is produced and what that covers is stated in ``RANDOMNESS_STATEMENT``
    (re-exported from ``dp.accounting.randomness`` so torch-free code can quote it).
"""

from __future__ import annotations

from dp.accounting.randomness import RANDOMNESS_STATEMENT
from dp.training.params import get_flat_params, set_flat_params
from dp.training.rng import cryptographic_generator
from dp.training.task import Task, check_model
from dp.training.trainer import (
    PrivateTrainer,
    RoundResult,
    run_dp_sgd,
    training_library_versions,
)

__all__ = [
    "RANDOMNESS_STATEMENT",
    "PrivateTrainer",
    "RoundResult",
    "Task",
    "check_model",
    "cryptographic_generator",
    "get_flat_params",
    "run_dp_sgd",
    "set_flat_params",
    "training_library_versions",
]
