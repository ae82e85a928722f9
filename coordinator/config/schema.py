"""JSON Schema of ``serve.toml`` and ``silo.toml``, generated from the models (``docs/configuration.md``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from coordinator.config.serve import ServeConfig
from coordinator.config.silo import SiloConfig

__all__ = ["json_schema"]

_ROLE = re.compile(
    r":[a-z]+:`~?([^`]+)`"
)  # :func:`secagg.check_threshold` -> `secagg.check_threshold`
_MODELS: dict[str, type[ServeConfig | SiloConfig]] = {"serve": ServeConfig, "silo": SiloConfig}


class _TomlSchema(GenerateJsonSchema):
    """A schema of what a TOML file may say: TOML has no null (an optional key is left out) and keys need no titles."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        value = super().default_schema(schema)
        if "default" in value and value["default"] is None:
            del value["default"]
        return value

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def json_schema(kind: Literal["serve", "silo"]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a coordinator's (``"serve"``) or a silo's (``"silo"``) TOML file.

    Every key has a ``description``. A key the loader derives when it is left out (the threshold from the
    roster, a silo's shard) is not ``required`` and says its default in ``x-default``. Relative paths are
    resolved against the file's directory.

    Raises:
        ValueError: ``kind`` is neither ``"serve"`` nor ``"silo"``.
    """
    model = _MODELS.get(kind)
    if model is None:
        raise ValueError(f"kind must be 'serve' or 'silo', not {kind!r}")
    schema = model.model_json_schema(schema_generator=_TomlSchema)
    for table in [schema, *schema.get("$defs", {}).values()]:
        for node in [table, *table.get("properties", {}).values()]:
            if "description" in node:
                node["description"] = _markdown(node["description"])
        derived = {k for k, v in table.get("properties", {}).items() if "x-default" in v}
        required = [k for k in table.get("required", []) if k not in derived]
        if required:
            table["required"] = required
        else:
            table.pop("required", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind}.toml",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _markdown(docstring: str) -> str:
    """A docstring as Markdown, as editors show a schema's descriptions: code in single backticks, paragraphs
    unwrapped."""
    text = _ROLE.sub(r"`\1`", docstring).replace("``", "`")
    paragraphs = (" ".join(line.strip() for line in p.splitlines()) for p in text.split("\n\n"))
    return "\n\n".join(paragraphs)
