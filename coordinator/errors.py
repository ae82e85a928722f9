"""The exception tree of ``coordinator``: service, store, SDK and CLI failures.

::

    CoordinatorError
    ├── ConfigError          a federation or silo configuration file is invalid
    ├── PKIError             consortium keys or certificates cannot be created or loaded
    ├── StoreError           persistence failed
    ├── NotFound             unknown federation or round
    ├── StageError           a call arrived in the wrong stage of a round
    ├── DuplicateSubmission  a second submission for the same round
    ├── Unauthorized         the caller is not who it claims, or not on the roster
    │   └── PrivacyRefused   a privacy attestation under-reports epsilon or exceeds the federation ceiling
    ├── InvalidInput         malformed, oversized or wrong-length input
    ├── Aborted              the coordinator aborted the round (too few silos, restart)
    ├── Overloaded           a call beyond one of the coordinator's concurrency limits (``[limits]``)
    ├── Unavailable          the coordinator could not be reached, even after retries
    └── AuditFailure         the coordinator's audit log failed a silo's witness check (history rewritten)

The silo SDK raises the same types: :mod:`coordinator.wire.errors` is the one two-way table between these
classes and gRPC status codes, so code on both sides catches one tree.
"""

from __future__ import annotations

__all__ = [
    "Aborted",
    "AuditFailure",
    "ConfigError",
    "CoordinatorError",
    "DuplicateSubmission",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "PKIError",
    "PrivacyRefused",
    "StageError",
    "StoreError",
    "Unauthorized",
    "Unavailable",
]


class CoordinatorError(Exception):
    """Root of every error raised by ``coordinator``."""


class ConfigError(CoordinatorError):
    """A configuration file is invalid."""


class PKIError(CoordinatorError):
    """Consortium keys or certificates cannot be created or loaded (the message never holds key material)."""


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


class PrivacyRefused(Unauthorized):
    """The coordinator refused a silo's contribution on privacy grounds (recorded in the audit ledger)."""


class InvalidInput(CoordinatorError):
    """Malformed, oversized or wrong-length input."""


class Aborted(CoordinatorError):
    """The coordinator aborted the round."""


class Overloaded(CoordinatorError):
    """The coordinator refused a call beyond one of its concurrency limits (``[limits]`` in serve.toml).

    Transient: the SDK retries it with backoff; a silo that keeps hitting it has too many calls in flight.
    """


class Unavailable(CoordinatorError):
    """The coordinator could not be reached, even after retries."""


class AuditFailure(CoordinatorError):
    """The coordinator's signed audit log does not extend what this silo saw before, or is not validly signed."""
