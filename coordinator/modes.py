"""The mode registry: an aggregation mode's name -> its plug-ins, found by import path (and users' entry points).

Each layer looks up only its own part (the round driver, the server builder, the silo SDK), and only when a
federation uses that mode: the masking path never imports ``phe``, ``gmpy2`` or ``secagg.paillier``, so the
``paillier`` extra stays optional (``tests/coordinator/test_modes.py`` blocks them and runs the masking path).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from coordinator.errors import ConfigError

__all__ = ["MODES", "Mode", "call_entry_point", "load"]

Part = Literal["rounds", "server", "silo"]


@dataclass(frozen=True)
class Mode:
    """Where one mode's plug-ins live (``module:attribute``) and the extra its dependencies come in."""

    name: str
    rounds: str
    server: str
    silo: str
    extra: str | None = None


MODES: dict[str, Mode] = {
    "masking": Mode(
        name="masking",
        rounds="coordinator.rounds.masking:MaskingRounds",
        server="coordinator.server.masking:build",
        silo="coordinator.sdk.masking:run_example_silo",
    ),
    "paillier": Mode(
        name="paillier",
        rounds="coordinator.rounds.paillier:PaillierRounds",
        server="coordinator.server.paillier:build",
        silo="coordinator.sdk.paillier:run_example_paillier_silo",
        extra="paillier",
    ),
}


def load(mode: str, part: Part) -> Any:
    """The plug-in ``part`` of ``mode``, imported now.

    Raises:
        ConfigError: the mode is unknown, or its optional dependencies are not installed.
    """
    spec = MODES.get(mode)
    if spec is None:
        raise ConfigError(f"unknown aggregation mode {mode!r}; known: {', '.join(sorted(MODES))}")
    module, _, attribute = getattr(spec, part).partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as exc:
        if spec.extra is None or (exc.name or "").startswith("coordinator"):
            raise
        raise ConfigError(
            f"the {mode} mode needs the {spec.extra!r} extra: pip install 'secagg[{spec.extra}]' "
            f"({exc.name} is missing)"
        ) from exc


def call_entry_point(spec: str, what: str) -> Any:
    """Import ``"package.module:function"`` and call it with no arguments (a user's model factory or task).

    Raises:
        ConfigError: the module cannot be imported, has no such function, or the call failed: one line naming
            ``what`` (e.g. ``[model] factory``) and the exception.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{what} {spec}: cannot import {module_name} ({exc}); install it or add its directory to "
            "PYTHONPATH"
        ) from exc
    function: Callable[[], Any] | None = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{what} {spec}: {module_name} has no function {attribute!r}")
    try:
        return function()
    except ConfigError:
        raise
    except Exception as exc:
        message = f"{what} {spec} raised {type(exc).__name__}: {exc}"
        raise ConfigError(message.splitlines()[0]) from exc
