"""Canonical JSON (RFC 8785, JCS): the one byte encoding of every ledger entry.

Notes:
    A tamper-evident log hashes bytes, so the same event must always produce the same bytes,
    whichever program wrote it. We follow RFC 8785 (JSON Canonicalization Scheme): object
    members sorted by their names' UTF-16 code units, no insignificant whitespace, strings
    escaped minimally (RFC 8785 section 3.2.2.2), and numbers serialized as ECMAScript's
    ``Number.prototype.toString`` does (section 3.2.2.3). Integers are accepted only inside
    the I-JSON exact range |x| <= 2**53 (RFC 7493 section 2.2): a larger integer would silently
    lose precision in every other JCS implementation, which for an audit record is a lie.
    NaN and the infinities have no JSON form and are rejected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from json.encoder import encode_basestring  # the C-accelerated escaper when available
from typing import Any

__all__ = ["MAX_EXACT_INT", "canonical_json", "es_number", "parse_canonical"]

#: Largest magnitude of an integer that every IEEE-754 double (and so every JCS peer) holds exactly.
MAX_EXACT_INT = 2**53


def es_number(value: float | int) -> str:
    """Serialize a number the way ECMAScript's ``Number::toString`` does (RFC 8785 3.2.2.3).

    Args:
        value: a finite float, or an int with ``abs(value) <= 2**53``.

    Returns:
        The JCS text of the number.

    Raises:
        ValueError: NaN, an infinity, or an integer outside the exact range.
    """
    if isinstance(value, bool):
        raise TypeError("a bool is not a number in canonical JSON")
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise ValueError(f"integer {value} is outside the exact range +-2**53 (RFC 7493 2.2)")
        return str(value)
    if not math.isfinite(value):
        raise ValueError("NaN and Infinity have no canonical JSON form (RFC 8785 3.2.2.3)")
    if value == 0.0:
        return "0"  # also -0.0: ECMAScript prints "0"
    text = repr(value)
    if "e" not in text:
        # Between 1e-4 and 1e16 Python and ECMAScript print the same shortest digits in
        # fixed notation; only Python's trailing ".0" differs.
        return text[:-2] if text.endswith(".0") else text
    # Python's repr is the shortest string that round-trips (the same digits ECMAScript picks);
    # only the layout differs, so we re-lay the digits out by the ECMAScript rules.
    sign, digit_tuple, exponent = Decimal(text).as_tuple()
    assert isinstance(exponent, int)  # finite by the check above
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    k = len(digits)
    n = exponent + k  # value = 0.d1d2...dk * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return "-" + text if sign else text


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like the sequence of 16-bit code units (RFC 8785
    # 3.2.3); "surrogatepass" keeps lone surrogates from crashing the sort (they fail later).
    return name.encode("utf-16-be", "surrogatepass")


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(encode_basestring(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int | float):
        out.append(es_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        for key in _sorted_keys(value):
            if not first:
                out.append(",")
            first = False
            out.append(encode_basestring(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _sorted_keys(value: Mapping[Any, Any]) -> list[str]:
    keys = list(value)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"object member names must be strings, not {type(key).__name__}")
    # Code point order equals UTF-16 code unit order for ASCII names (the common case).
    if all(key.isascii() for key in keys):
        keys.sort()
    else:
        keys.sort(key=_utf16_key)
    return keys


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value (dict/Mapping, list/tuple, str, int, float, bool, None) per RFC 8785.

    Args:
        value: the value; mappings must have ``str`` keys.

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        TypeError: a value that is not JSON.
        ValueError: a number without a canonical form, or a string with a lone surrogate.

    Notes:
        Python's ``json`` string escaper with ``ensure_ascii=False`` escapes exactly the set
        RFC 8785 3.2.2.2 asks for (quote, backslash, the five short forms, other controls as
        lowercase ``\\u00xx``) and leaves everything else literal, so we reuse its C version.
    """
    out: list[str] = []
    _encode(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("a string holds a lone surrogate: not valid I-JSON") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_int(text: str) -> int | float:
    # JCS numbers are IEEE-754 doubles: an integer literal beyond 2**53 (as a large float
    # prints, e.g. 9007199254740994) is that double, not an exact Python int.
    value = int(text)
    return value if abs(value) <= MAX_EXACT_INT else float(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise ValueError(f"duplicate object member {key!r} (RFC 7493 2.3)")
        result[key] = item
    return result


def parse_canonical(data: bytes) -> Any:
    """Parse bytes that must already be canonical JSON, and return the value.

    Args:
        data: the bytes.

    Returns:
        The decoded value (dicts, lists, str, int, float, bool, None).

    Raises:
        ValueError: not UTF-8, not JSON, a duplicate member name, NaN/Infinity, or bytes that
            differ from the canonical encoding of what they decode to.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at character {exc.pos}") from exc
    if canonical_json(value) != data:
        raise ValueError("not in canonical form (RFC 8785)")
    return value
