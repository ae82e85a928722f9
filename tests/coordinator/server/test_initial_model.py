"""Round 0's model comes from exactly what ``[model]`` names: a file, a factory's torch module, or zeros."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.config import ModelConfig
from coordinator.errors import ConfigError
from coordinator.server.app import initial_model
from dp.training import get_flat_params
from tests.coordinator.server import factories

FACTORIES = "tests.coordinator.server.factories"


def test_a_factory_s_torch_module_is_flattened_with_its_own_initialisation() -> None:
    vector = initial_model(ModelConfig(factory=f"{FACTORIES}:small_cnn"))
    expected = get_flat_params(factories.small_cnn())
    assert vector.dtype == np.float32
    assert np.array_equal(vector, expected)
    assert np.count_nonzero(vector) > len(vector) // 2  # PyTorch's initialisation, not zeros


def test_a_factory_may_return_a_flat_array_and_a_written_size_must_match() -> None:
    spec = f"{FACTORIES}:flat_vector"
    assert np.array_equal(
        initial_model(ModelConfig(factory=spec, size=5)), factories.flat_vector().astype(np.float32)
    )
    with pytest.raises(ConfigError, match=r"^\[model\] size 6 does not match the 5 parameters of"):
        initial_model(ModelConfig(factory=spec, size=6))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "no_such_pkg.models:make",
            r"cannot import no_such_pkg.models .*install it or add its directory",
        ),
        (f"{FACTORIES}:missing", r"has no function 'missing'"),
        (f"{FACTORIES}:broken", r"raised RuntimeError: checkpoint missing$"),
        (f"{FACTORIES}:not_a_model", r"must return a torch module or a 1-D float array, got str"),
    ],
)
def test_a_bad_factory_is_one_line_naming_it(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        initial_model(ModelConfig(factory=spec))
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("[model] factory")


def test_a_file_and_zeros(tmp_path: Path) -> None:
    path = tmp_path / "start.npy"
    np.save(path, np.arange(4, dtype=np.float32))
    assert np.array_equal(initial_model(ModelConfig(initial_model=path, size=4)), np.arange(4))
    assert np.array_equal(initial_model(ModelConfig(init="zeros", size=3)), np.zeros(3))


@pytest.mark.parametrize("spec", ["pkg.module", "pkg module:make", ":make", "pkg.:make"])
def test_a_factory_must_be_written_module_colon_function(spec: str) -> None:
    with pytest.raises(ConfigError, match="factory"):
        ModelConfig(factory=spec)
