"""The exception tree of ``coordinator``: service, store, SDK and CLI failures.

::

    CoordinatorError
    ├── ConfigError          a federation or silo configuration file is invalid
    ├── StoreError           persistence failed
    ├── NotFound             unknown federation or round
    ├── StageError           a call arrived in the wrong stage of a round
    ├── DuplicateSubmission  a second submission for the same round
    ├── Unauthorized         the caller is not who it claims, or not on the roster
    └── InvalidInput         malformed, oversized or wrong-length input
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CoordinatorError",
    "DuplicateSubmission",
    "InvalidInput",
    "NotFound",
    "StageError",
    "StoreError",
    "Unauthorized",
]


class CoordinatorError(Exception):
    """Root of every error raised by ``coordinator``."""


class ConfigError(CoordinatorError):
    """A configuration file is invalid."""


class StoreError(CoordinatorError):
    """Persistence failed."""


class NotFound(CoordinatorError):
    """Unknown federation or round."""


class StageError(CoordinatorError):
    """A call arrived in the wrong stage of a round."""


class DuplicateSubmission(CoordinatorError):
    """A second submission for the same round."""


class Unauthorized(CoordinatorError):
    """The caller is not who it claims to be, or not on the roster."""


class InvalidInput(CoordinatorError):
    """Malformed, oversized or wrong-length input."""
