"""The ``[metrics]`` table: absent means no listener; ``listen`` is ``host:port`` (port 0 allowed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from coordinator.config import MetricsConfig, ServeConfig
from coordinator.errors import ConfigError


def _with_metrics(serve_path: Path, value: object) -> Path:
    doc = tomllib.loads(serve_path.read_text())
    doc["metrics"] = value
    serve_path.write_text(tomli_w.dumps(doc))
    return serve_path


def test_absent_means_no_listener_and_a_table_loads(demo_configs: tuple[Path, list[Path]]) -> None:
    serve_path, _ = demo_configs
    assert ServeConfig.load(serve_path).metrics is None
    for listen in ("127.0.0.1:9464", "[::1]:0", "metrics.internal:9464"):
        serve = ServeConfig.load(_with_metrics(serve_path, {"listen": listen}))
        assert serve.metrics == MetricsConfig(listen=listen)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"listen": "nope"}, "metrics.listen: expected host:port"),
        ({"listen": "127.0.0.1:70000"}, "metrics.listen: port 70000 is out of range"),
        ({}, "metrics.listen"),
        ({"listen": "127.0.0.1:1", "extra": 1}, "metrics"),
    ],
)
def test_a_bad_metrics_table_names_the_key(
    demo_configs: tuple[Path, list[Path]], value: object, message: str
) -> None:
    serve_path, _ = demo_configs
    with pytest.raises(ConfigError, match=message) as caught:
        ServeConfig.load(_with_metrics(serve_path, value))
    assert "\n" not in str(caught.value)
