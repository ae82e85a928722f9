"""The ``storage`` key: a SQLite path (relative to the file) or a ``[storage]`` table with a PostgreSQL URL."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from coordinator.config import ServeConfig, StorageConfig
from coordinator.errors import ConfigError


def _with_storage(serve_path: Path, value: object) -> Path:
    doc = tomllib.loads(serve_path.read_text())
    doc["storage"] = value
    serve_path.write_text(tomli_w.dumps(doc))
    return serve_path


def test_a_plain_path_is_a_sqlite_file_beside_the_config(
    demo_configs: tuple[Path, list[Path]],
) -> None:
    serve_path, _ = demo_configs
    serve = ServeConfig.load(_with_storage(serve_path, "state/coordinator.sqlite"))
    assert serve.storage.target == serve_path.parent / "state" / "coordinator.sqlite"


def test_a_storage_table_takes_a_postgresql_url_or_a_path(
    demo_configs: tuple[Path, list[Path]],
) -> None:
    serve_path, _ = demo_configs
    url = "postgresql://secagg@db.example:5432/federation"
    serve = ServeConfig.load(_with_storage(serve_path, {"url": url}))
    assert serve.storage == StorageConfig(url=url)
    assert serve.storage.target == url
    serve = ServeConfig.load(_with_storage(serve_path, {"url": "c.sqlite"}))
    assert serve.storage.target == serve_path.parent / "c.sqlite"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"url": ""}, "storage.url"),
        ({"path": "x"}, "storage"),
        ({}, "storage.url"),
        (3, "storage: expected a path or a \\[storage\\] table"),
    ],
)
def test_a_bad_storage_names_the_key(
    demo_configs: tuple[Path, list[Path]], value: object, message: str
) -> None:
    serve_path, _ = demo_configs
    with pytest.raises(ConfigError, match=message) as caught:
        ServeConfig.load(_with_storage(serve_path, value))
    assert "\n" not in str(caught.value)
