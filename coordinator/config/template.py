"""Commented configuration templates (``secagg config init serve|silo DIR``), generated from the JSON Schema.

The same schema walk also feeds ``docs/configuration.md`` (``scripts/config_reference.py`` imports
:func:`key_type`, :func:`key_default` and :func:`resolve` from here), so the template, the reference and the
loader cannot disagree about a key.

A template lists every key of the file with its description, type and default:

- a required key the operator must supply (a path to enrolment material, the federation id, the pinned
  consortium key, a silo's id and the coordinator's address) is written as ``key = "FILL"``;
- a required key with a usable example (``listen``, the round count) is written with that example;
- every optional key is commented out with its default (uncommenting it changes nothing) or an example;
- an optional table is commented out whole, header included, since writing it can change behaviour (a
  ``[privacy]`` table sets a ceiling).

Once every ``FILL`` is replaced, the file loads as is.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Literal

from coordinator.config.schema import json_schema
from coordinator.errors import ConfigError

__all__ = [
    "FILL",
    "config_template",
    "key_default",
    "key_type",
    "resolve",
    "write_config_template",
]

FILL = "FILL"
"""The placeholder of a value the operator must supply; a file still holding it does not load."""

Kind = Literal["serve", "silo"]
_WIDTH = 100
# Required keys whose example works as is (everything else required is FILL).
_EXAMPLES: dict[Kind, dict[tuple[str, ...], object]] = {
    "serve": {
        ("listen",): "0.0.0.0:50051",
        ("storage", "url"): "coordinator.sqlite",
        ("rounds", "count"): 10,
        ("rounds", "clip"): 1.0,
    },
    "silo": {},
}
# Of ModelConfig's exclusive sources the template writes the initial model file; the others stay commented.
_CHOSEN: dict[tuple[str, ...], str] = {("model",): "initial_model"}
# Tables written although the schema does not require them (the loader does, unless insecure_debug_no_tls).
_WRITTEN_TABLES = frozenset({("tls",)})
_HEADER = """\
# {kind}.toml: read by `secagg {command} --config {kind}.toml` (written by `secagg config init {kind}`).
#
# Every key is listed with its description, type and default (docs/configuration.md has the same).
# Replace every "{fill}" value; relative paths are resolved against this file's directory. Optional keys
# are commented out with their defaults; uncomment a table's header along with its keys.
"""


def resolve(root: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any] | None:
    """The table definition a property refers to (``$ref``), or ``None`` for a plain value."""
    ref = prop.get("$ref")
    if ref is None:
        return None
    definition: dict[str, Any] = root["$defs"][ref.rsplit("/", 1)[-1]]
    return definition


def key_type(prop: dict[str, Any], sub: dict[str, Any] | None) -> str:
    """A key's type in words (``path``, ``integer >= 1``, ``"masking" or "paillier"``)."""
    if sub is not None:
        return "table"
    if "enum" in prop:
        return " or ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind == "string":
        if prop.get("format") == "path":
            return "path"
        if "pattern" in prop:
            return f"string matching `{prop['pattern']}`"
        return "string"
    if kind == "array":
        return f"list of {key_type(prop['items'], None)}".replace(
            "list of string", "list of strings"
        )
    if kind in ("integer", "number"):
        return f"{kind}{_bounds(prop)}"
    return str(kind)


def key_default(prop: dict[str, Any], sub: dict[str, Any] | None, required: bool) -> str:
    """A key's default in words (Markdown): a TOML literal, ``**required**``, ``absent`` or a sentence."""
    if "x-default" in prop:
        return str(prop["x-default"])
    if "default" in prop:
        return f"`{_toml(prop['default'])}`"
    if required:
        return "**required**"
    if sub is not None and not sub.get("required"):
        return "all defaults"
    return "absent"


def config_template(kind: Kind) -> str:
    """The commented TOML template of ``serve.toml`` (``"serve"``) or ``silo.toml`` (``"silo"``).

    Raises:
        ValueError: ``kind`` is neither ``"serve"`` nor ``"silo"``.
    """
    schema = json_schema(kind)
    command = "serve" if kind == "serve" else "silo"
    out = [_HEADER.format(kind=kind, command=command, fill=FILL)]
    out += _table_lines(kind, schema, schema, (), active=True)
    return "\n".join(out).rstrip("\n") + "\n"


def write_config_template(kind: Kind, directory: str | Path) -> Path:
    """Write ``DIR/serve.toml`` or ``DIR/silo.toml`` from :func:`config_template`, never replacing a file.

    Raises:
        ConfigError: the file already exists, or cannot be written.
    """
    root = Path(directory)
    path = root / f"{kind}.toml"
    text = config_template(kind)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists: refusing to overwrite it (choose another directory)"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    return path


def _table_lines(
    kind: Kind,
    root: dict[str, Any],
    table: dict[str, Any],
    path: tuple[str, ...],
    *,
    active: bool,
) -> list[str]:
    """One table: its header and description, its keys (required first), then its sub-tables."""
    lines: list[str] = []
    mark = "" if active else "# "
    if path:
        lines += _comment(table["description"])
        lines += [f"{mark}[{'.'.join(path)}]"]
    required = set(table.get("required", []))
    chosen = _CHOSEN.get(path)
    subtables: list[tuple[str, dict[str, Any], bool]] = []
    for key in sorted(table["properties"], key=lambda key: key not in required):
        prop = table["properties"][key]
        sub = resolve(root, prop)
        if sub is not None:
            written = active and (key in required or (*path, key) in _WRITTEN_TABLES)
            subtables.append((key, sub, written))
            continue
        is_required = key in required or key == chosen
        default = key_default(prop, None, key in required).replace("**required**", "required")
        lines += _comment(f"{prop['description']} ({key_type(prop, None)}; default: {default})")
        value = _value(kind, (*path, key), prop, is_required)
        live = active and is_required
        lines.append(f"{'' if live else '# '}{key} = {value}")
    lines.append("")
    for key, sub, written in subtables:
        lines += _table_lines(kind, root, sub, (*path, key), active=written)
    return lines


def _value(kind: Kind, path: tuple[str, ...], prop: dict[str, Any], required: bool) -> str:
    if "default" in prop:
        return _toml(prop["default"])
    example = _EXAMPLES[kind].get(path)
    if example is not None:
        return _toml(example)
    if required or prop.get("format") == "path" or "type" not in prop:
        return _toml(FILL)
    kind_name = prop["type"]
    if "const" in prop:
        return _toml(prop["const"])
    if kind_name == "integer":
        return _toml(max(int(prop.get("minimum", 1)), 1))
    if kind_name == "number":
        return "1.0"
    if kind_name == "boolean":
        return "false"
    if kind_name == "array":
        return "[]"
    return _toml(FILL)


def _comment(text: str) -> list[str]:
    paragraphs = text.split("\n\n")
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += textwrap.wrap(
            " ".join(paragraph.split()),
            width=_WIDTH,
            initial_indent="# ",
            subsequent_indent="# ",
            break_on_hyphens=False,
        )
    return lines


def _bounds(prop: dict[str, Any]) -> str:
    low = ("[", prop["minimum"]) if "minimum" in prop else ("(", prop.get("exclusiveMinimum"))
    high = ("]", prop["maximum"]) if "maximum" in prop else (")", prop.get("exclusiveMaximum"))
    if low[1] is not None and high[1] is not None:
        return f" in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low[1] is not None:
        return f" {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high[1] is not None:
        return f" {'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)
