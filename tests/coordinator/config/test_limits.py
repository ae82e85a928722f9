"""The ``[limits]`` table: defaults when absent, validation with one-line errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from coordinator.config import LimitsConfig, ServeConfig
from coordinator.errors import ConfigError


def _with_limits(serve_path: Path, value: object) -> Path:
    doc = tomllib.loads(serve_path.read_text())
    doc["limits"] = value
    serve_path.write_text(tomli_w.dumps(doc))
    return serve_path


def test_absent_means_the_defaults(demo_configs: tuple[Path, list[Path]]) -> None:
    serve_path, _ = demo_configs
    limits = ServeConfig.load(serve_path).limits
    assert limits == LimitsConfig()
    assert (
        limits.calls_per_silo,
        limits.streams_per_silo,
        limits.max_concurrent_rpcs,
        limits.workers,
    ) == (16, 2, 4096, 8)


def test_a_table_sets_the_limits(demo_configs: tuple[Path, list[Path]]) -> None:
    serve_path, _ = demo_configs
    table = {"calls_per_silo": 4, "streams_per_silo": 1, "max_concurrent_rpcs": 64, "workers": 2}
    assert ServeConfig.load(_with_limits(serve_path, table)).limits == LimitsConfig(**table)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"calls_per_silo": 0}, r"\[limits\] calls_per_silo"),
        ({"streams_per_silo": -1}, r"\[limits\] streams_per_silo"),
        ({"workers": 0}, r"\[limits\] workers"),
        ({"workers": 1000}, r"\[limits\] workers"),
        ({"max_concurrent_rpcs": "many"}, "limits.max_concurrent_rpcs: expected an integer"),
        (
            {"calls_per_silo": 2, "streams_per_silo": 3},
            "streams_per_silo.*cannot exceed calls_per_silo",
        ),
        ({"calls_per_silo": 32, "max_concurrent_rpcs": 8}, "calls_per_silo.*max_concurrent_rpcs"),
        ({"per_silo": 3}, "limits"),
    ],
)
def test_a_bad_limits_table_names_the_key(
    demo_configs: tuple[Path, list[Path]], value: object, message: str
) -> None:
    serve_path, _ = demo_configs
    with pytest.raises(ConfigError, match=message) as caught:
        ServeConfig.load(_with_limits(serve_path, value))
    assert "\n" not in str(caught.value)
