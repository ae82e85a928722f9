"""The JSON Schema and the generated reference: current, complete, and in step with the README and the writer."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest

import coordinator.config
from coordinator.config import json_schema

ROOT = Path(__file__).resolve().parents[3]
Kind = Literal["serve", "silo"]
KINDS: tuple[Kind, ...] = ("serve", "silo")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tables(schema: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every table of a schema with its key path, the file's top level first."""

    def walk(
        table: dict[str, Any], path: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
        yield path, table
        for key, prop in table["properties"].items():
            if "$ref" in prop:
                yield from walk(schema["$defs"][prop["$ref"].rsplit("/", 1)[-1]], (*path, key))

    return walk(schema, ())


def _schema_keys(schema: dict[str, Any]) -> set[str]:
    return {
        ".".join((*path, key)) for path, table in _tables(schema) for key in table["properties"]
    }


def _doc_keys(doc: Mapping[str, Any], path: tuple[str, ...] = ()) -> set[str]:
    keys = set()
    for key, value in doc.items():
        keys.add(".".join((*path, key)))
        if isinstance(value, Mapping):
            keys |= _doc_keys(value, (*path, key))
    return keys


def test_the_generated_reference_is_current() -> None:
    for path, text in _script().outputs().items():
        assert path.exists(), f"{path} is missing: run `make config-docs`"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run `make config-docs`"


@pytest.mark.parametrize("kind", KINDS)
def test_every_key_and_table_is_described(kind: Kind) -> None:
    schema = json_schema(kind)
    assert schema["title"] == f"{kind}.toml"
    for path, table in _tables(schema):
        assert table.get("description"), path
        assert table["additionalProperties"] is False, path  # unknown keys are refused
        for key, prop in table["properties"].items():
            assert prop.get("description", "").strip(), (*path, key)
            assert "``" not in prop["description"], (*path, key)  # Markdown, not reStructuredText
            assert "null" not in str(prop), (
                *path,
                key,
            )  # TOML has no null: optional keys are left out
        for key in table.get(
            "required", []
        ):  # a key the loader derives is not required in the file
            assert "x-default" not in table["properties"][key], (*path, key)


def test_every_key_the_readme_shows_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "the README shows no TOML example"
    known = {kind: _schema_keys(json_schema(kind)) for kind in KINDS}
    for block in blocks:
        keys = _doc_keys(tomllib.loads(block))
        assert any(keys <= known[kind] for kind in KINDS), (
            f"README keys in neither schema: {sorted(keys - known['serve'])} (serve.toml), "
            f"{sorted(keys - known['silo'])} (silo.toml)"
        )


def test_the_demo_files_say_only_what_the_schema_knows(
    demo_configs: tuple[Path, list[Path]],
) -> None:
    serve_path, silo_paths = demo_configs
    files: list[tuple[Kind, Path]] = [("serve", serve_path), ("silo", silo_paths[0])]
    for kind, path in files:
        schema = json_schema(kind)
        keys = _doc_keys(tomllib.loads(path.read_text(encoding="utf-8")))
        assert keys <= _schema_keys(schema), sorted(keys - _schema_keys(schema))
        assert set(schema["required"]) <= keys


def test_deadlines_are_documented_per_mode() -> None:
    keys = _schema_keys(json_schema("serve"))
    assert {f"deadlines.masking.{s}" for s in ("advertise", "share_keys", "masked_input")} <= keys
    assert {"deadlines.paillier.collect", "deadlines.paillier.decrypt"} <= keys
    assert "deadlines.round_start" not in keys


def test_json_schema_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'serve' or 'silo'"):
        json_schema("roster")  # type: ignore[arg-type]


def test_public_surface_is_sorted_and_importable() -> None:
    names = list(coordinator.config.__all__)
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    namespace: dict[str, object] = {}
    exec("from coordinator.config import *", namespace)
    assert set(names) <= set(namespace)
