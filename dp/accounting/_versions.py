"""Library versions recorded next to every privacy number (reproducibility for auditors)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

__all__ = ["accountant_id", "library_versions", "package_version"]


@functools.cache
def package_version(distribution: str) -> str:
    """Installed version of ``distribution``, or ``"unknown"`` when it is not installed (cached per process:
    reading package metadata costs about a millisecond and the coordinator asks once per attestation)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def accountant_id(name: str) -> str:
    """``"<name>/secagg-<version>"``: which accountant, and which release of our code ran it."""
    return f"{name}/secagg-{package_version('secagg')}"


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of Python and of the libraries the privacy numbers depend on.

    Args:
        *extra: more distributions to include (``dp.training`` adds torch and opacus).
    """
    versions = {"python": platform.python_version()}
    for dist in ("secagg", "numpy", "scipy", "dp-accounting", *extra):
        versions[dist] = package_version(dist)
    return dict(sorted(versions.items()))
