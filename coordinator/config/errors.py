"""One-line configuration errors: pydantic's validation errors said in the words of a TOML file.

Every message names the key as it is written in the file and says what is wrong in words, never in pydantic's
error codes or with its documentation links. Two shapes, kept from the hand-written reader these models replace:

- what the file *says* is wrong (a type, a missing or unknown key, an unreadable path) names the dotted key:
  ``rounds.count: expected an integer, got a number``, ``unknown key 'rounds.treshold' (did you mean
  'threshold'?); allowed here: ...``, ``missing required table [tls]``;
- a value that breaks a rule names its table, then the key and the rule: ``[rounds] count must be >= 1``,
  ``[task] delta must be in (0, 1)`` (top-level keys: ``max_message_bytes: must be between 65536 and ...``).

Only the first error is reported: it is the one to fix first, and one line is what an operator reads.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from coordinator.errors import ConfigError

__all__ = ["describe", "in_file", "kind", "missing_error", "rule_error", "value_error"]

_RULE = "config_rule"
_VALUE = "config_value"
_MISSING = "config_missing"

# What a TOML value of the expected type is called, by pydantic's type-error code.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "bytes_type": "a string",
    "model_type": "a table",
    "dict_type": "a table",
    "list_type": "a list",
    "frozen_set_type": "a list",
    "set_type": "a list",
    "tuple_type": "a list",
}

_KINDS: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
    datetime.datetime: "a date-time",
    datetime.date: "a date",
    datetime.time: "a time",
}


def rule_error(message: str, *, key: str | None = None) -> PydanticCustomError:
    """A value that breaks a rule, said as ``[table] key message`` (raise it inside a validator).

    Args:
        message: the rule, e.g. ``"must be in [0, num_shards) = [0, 3)"``.
        key: the key the rule is about, when raised by a model validator rather than a field's.
    """
    return PydanticCustomError(_RULE, "{message}", {"message": message, "key": key})


def value_error(message: str, *, key: str | None = None) -> PydanticCustomError:
    """A value the file cannot mean, said as ``table.key: message`` (raise it inside a validator)."""
    return PydanticCustomError(_VALUE, "{message}", {"message": message, "key": key})


def missing_error(key: str, reason: str) -> PydanticCustomError:
    """A table that is optional in the schema but required here, said as ``missing required table [key] (reason)``."""
    return PydanticCustomError(_MISSING, "{message}", {"message": reason, "key": key})


def kind(value: object) -> str:
    """What a TOML value is, in words (``"an integer"``, ``"a table"``)."""
    return _KINDS.get(type(value), type(value).__name__)


def describe(error: ValidationError, model: type[BaseModel], table: Sequence[str] = ()) -> str:
    """The one-line message for the first error of ``error``, raised while validating ``model``.

    Args:
        error: what pydantic raised.
        model: the model that was validated (to look up allowed keys and a key's bounds).
        table: where ``model`` sits in the file (``("rounds",)``), when it was validated on its own.
    """
    details = error.errors(include_url=False)[0]
    loc = tuple(str(part) for part in details["loc"])
    context = details.get("ctx") or {}
    key = context.get("key")
    at_table = key is None and _model_at(model, loc) is not None
    if key is not None:
        loc = (*loc, key)
    where = (*table, *loc)
    code = details["type"]
    if code == "extra_forbidden":
        return _unknown(where, _model_at(model, loc[:-1]))
    if code == "missing":
        field = _field_at(model, loc)
        is_table = field is not None and _model_in(field.annotation) is not None
        return (
            f"missing required table [{_dotted(where)}]"
            if is_table
            else f"missing required key {_dotted(where)!r}"
        )
    if code == _MISSING:
        return f"missing required table [{_dotted(where)}] ({context['message']})"
    if code in _EXPECTED:
        return _keyed(where, f"expected {_EXPECTED[code]}, got {kind(details['input'])}")
    if code == "finite_number":
        return _keyed(where, "must be finite")
    if code == "string_too_short":
        return _keyed(where, "must not be empty")
    if code == "literal_error":
        return _rule(where, at_table, f"must be {context['expected']}")
    if code in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _rule(where, at_table, _bounds(_field_at(model, loc), context))
    if code == _RULE:
        return _rule(where, at_table, context["message"])
    if code == _VALUE:
        return _keyed(where, context["message"])
    if code == "value_error":  # a ValueError raised by a validator or a library it calls
        return _keyed(where, str(context.get("error", details["msg"])))
    return _keyed(where, details["msg"])


@contextlib.contextmanager
def in_file(file: Path) -> Iterator[None]:
    """Prefix every :class:`ConfigError` raised inside with the file it concerns."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from exc


def _dotted(loc: Sequence[str]) -> str:
    return ".".join(loc)


def _keyed(where: Sequence[str], message: str) -> str:
    return f"{_dotted(where)}: {message}" if where else message


def _rule(where: Sequence[str], at_table: bool, message: str) -> str:
    if at_table:
        return f"[{_dotted(where)}]: {message}" if where else message
    table, key = where[:-1], where[-1]
    return f"[{_dotted(table)}] {key} {message}" if table else f"{key}: {message}"


def _unknown(where: Sequence[str], parent: type[BaseModel] | None) -> str:
    allowed = sorted(parent.model_fields) if parent is not None else []
    close = difflib.get_close_matches(where[-1], allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {_dotted(where)!r}{hint}; allowed here: {', '.join(allowed)}"


def _bounds(field: FieldInfo | None, context: dict[str, Any]) -> str:
    """The whole allowed range of a number (``(0, 1)``, not only the bound that failed)."""
    lower: tuple[bool, object] | None = None  # (inclusive, bound)
    upper: tuple[bool, object] | None = None
    for constraint in field.metadata if field is not None else []:
        if isinstance(constraint, annotated_types.Gt):
            lower = (False, constraint.gt)
        elif isinstance(constraint, annotated_types.Ge):
            lower = (True, constraint.ge)
        elif isinstance(constraint, annotated_types.Lt):
            upper = (False, constraint.lt)
        elif isinstance(constraint, annotated_types.Le):
            upper = (True, constraint.le)
    if lower is None and upper is None:  # not from a field's constraints: say the bound that failed
        for name, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if name in context:
                return f"must be {word} {_number(context[name])}"
    if lower is not None and upper is not None:
        if lower[0] and upper[0]:
            return f"must be between {_number(lower[1])} and {_number(upper[1])}"
        opening, closing = "[" if lower[0] else "(", "]" if upper[0] else ")"
        return f"must be in {opening}{_number(lower[1])}, {_number(upper[1])}{closing}"
    if lower is not None:
        if not lower[0] and lower[1] == 0:
            return "must be a positive finite number"
        return f"must be {'>=' if lower[0] else '>'} {_number(lower[1])}"
    assert upper is not None
    return f"must be {'<=' if upper[0] else '<'} {_number(upper[1])}"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _field_at(model: type[BaseModel], loc: Sequence[str]) -> FieldInfo | None:
    """The field a key path names, following nested tables."""
    parent = _model_at(model, loc[:-1])
    return parent.model_fields.get(loc[-1]) if parent is not None and loc else None


def _model_at(model: type[BaseModel], loc: Sequence[str]) -> type[BaseModel] | None:
    """The table model a key path names (``()`` is ``model`` itself), or ``None`` if it names no table."""
    current: type[BaseModel] | None = model
    for part in loc:
        field = current.model_fields.get(part) if current is not None else None
        current = _model_in(field.annotation) if field is not None else None
    return current


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model in an annotation such as ``TLSPaths | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
