"""The public surfaces of Paillier mode and its primitives: sorted, importable ``__all__`` re-exported per role."""

from __future__ import annotations

from types import ModuleType

import pytest

import secagg.hazmat.paillier
import secagg.paillier
from tests.secagg.test_public_api import isort_key


@pytest.mark.parametrize(
    "package", [secagg.paillier, secagg.hazmat.paillier], ids=lambda p: p.__name__
)
def test_all_is_sorted_unique_and_defined_in_the_role_modules(package: ModuleType) -> None:
    names = list(package.__all__)
    assert names == sorted(names, key=isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(package, name)
        if callable(obj):  # classes and functions live in one module each, behind the package
            assert obj.__module__.startswith(f"{package.__name__}."), (name, obj.__module__)


def test_session_id_is_bound_to_nonce_and_model() -> None:
    a = secagg.paillier.session_id_for(b"\x00" * secagg.paillier.SESSION_NONCE_BYTES, b"m" * 32)
    assert len(a) == 32
    assert a != secagg.paillier.session_id_for(b"\x01" * 16, b"m" * 32)
    assert a != secagg.paillier.session_id_for(b"\x00" * 16, b"n" * 32)
