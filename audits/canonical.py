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

__all__ = ["MAX_EXACT_INT", "canonical_json", "es_number", "fast_path_decides", "parse_canonical"]

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


def _parse_checked(data: bytes) -> Any:
    """The reference check: parse strictly, re-encode with :func:`canonical_json`, compare."""
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


class _NotFast(Exception):
    """The fast path cannot decide these bytes; the reference check will."""


def _fast_int(text: str) -> int:
    # "-0" is not canonical ("0" is); beyond 2**53 the literal is a double: both are rare,
    # so the reference path handles them.
    value = int(text)
    if abs(value) > MAX_EXACT_INT or text == "-0":
        raise _NotFast
    return value


def _fast_float(text: str) -> float:
    # Every float literal must already be its own ECMAScript form (RFC 8785 3.2.2.3): this
    # rejects "1.0", "1.50", "1E-7", "-0.0", "1e+16" (an integer below 1e21 prints as one) and
    # overflow to infinity, none of which the C re-encoding below would notice.
    value = float(text)
    # Without an exponent or a trailing ".0", Python's repr is the ECMAScript text (see
    # es_number): the common case, decided without the general formatter.
    if repr(value) == text and "e" not in text and not text.endswith(".0"):
        return value
    try:
        canonical = es_number(value)
    except ValueError:
        raise _NotFast from None
    if canonical != text:
        raise _NotFast
    return value


def _fast_constant(name: str) -> Any:
    raise _NotFast


_fast_decoder = json.JSONDecoder(
    parse_float=_fast_float, parse_int=_fast_int, parse_constant=_fast_constant
)
_fast_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
_DIGITS = frozenset("0123456789")
_MANTISSA = frozenset("0123456789.-")
_ES_OF_REPR: dict[str, str] = {}


def _es_exponents(encoded: str) -> str:
    """Rewrite each float Python printed with a negative exponent ("1e-05") in ECMAScript form.

    Finds "e-" (in no other non-string token the encoder writes), widens it to the number
    around it and replaces every occurrence of that text; text inside strings may be
    rewritten too, which can only make the comparison in :func:`_parse_fast` fail. (A regex
    over the whole text backtracks on every digit run of the long hex strings in ledger
    entries, which made it the slowest step.)
    """
    at = encoded.find("e-")
    while at >= 0:
        start = at
        while start > 0 and encoded[start - 1] in _MANTISSA:
            start -= 1
        end = at + 2
        while end < len(encoded) and encoded[end] in _DIGITS:
            end += 1
        token = encoded[start:end]
        text = _ES_OF_REPR.get(token)
        if text is None:
            try:
                text = es_number(float(token))
            except ValueError:  # not a number after all (e.g. "1.2.3e-5" inside a string)
                text = token
            if len(_ES_OF_REPR) < 4096:  # a ledger repeats a few (delta = 1e-05): bounded
                _ES_OF_REPR[token] = text
        if text != token:
            encoded = encoded.replace(token, text)
            end = start + len(text)
        at = encoded.find("e-", end)
    return encoded


def _parse_fast(data: bytes) -> Any:
    """Decide canonical ASCII bytes with the C JSON codec; raise ``_NotFast`` if unsure.

    Accepts exactly when the bytes equal :func:`canonical_json` of what they decode to:

    - float literals are checked one by one against their ECMAScript text (``_fast_float``)
      and integer literals for ``-0`` and the exact range (``_fast_int``);
    - the C encoder then re-encodes the value compactly with sorted keys and the same minimal
      string escaper as :func:`canonical_json`. For ASCII names, code point order is UTF-16
      code unit order (RFC 8785 3.2.3). The C encoder prints floats with ``repr``, which
      differs from ECMAScript only for negative exponents below 1e-4 (``1e-05`` for
      ``0.00001``); those tokens are rewritten to their ECMAScript text;
    - a duplicate member collapses to one in the re-encoding, so its bytes never match.

    A rewrite changes only number characters, so the token structure stays the canonical
    one the encoder wrote; if the result equals the input, each rewritten token is an input
    number literal, already checked to be canonical, and a rewrite inside a string would
    have changed that string, so it cannot equal the input. Every failure here falls back to
    the reference check, so the result is always the reference result.
    """
    if not data.isascii():
        raise _NotFast
    text = data.decode("ascii")
    try:
        value = _fast_decoder.decode(text)
    except ValueError:
        raise _NotFast from None
    encoded = _fast_encoder.encode(value)
    if "e-" in encoded:
        encoded = _es_exponents(encoded)
    if encoded != text:
        raise _NotFast
    return value


def parse_canonical(data: bytes, *, fast_path: bool = True) -> Any:
    """Parse bytes that must already be canonical JSON, and return the value.

    Args:
        data: the bytes.
        fast_path: decide ASCII bytes with the C codec first (the default). ``False`` decides with the
            reference parse-and-re-encode check alone: slower, and by design the same result.

    Returns:
        The decoded value (dicts, lists, str, int, float, bool, None).

    Raises:
        ValueError: not UTF-8, not JSON, a duplicate member name, NaN/Infinity, or bytes that
            differ from the canonical encoding of what they decode to.

    Notes:
        ASCII bytes (every ledger entry the coordinator writes) are decided by the C JSON
        codec plus a check of each number literal, several times faster than re-encoding in
        Python; anything that path cannot accept (non-ASCII text, a rare number form, or any
        error) is decided by the reference parse-and-re-encode check, which also produces the
        error message. Both accept exactly the same bytes and return the same value (a
        hypothesis test compares them).
    """
    if fast_path:
        try:
            return _parse_fast(data)
        except _NotFast:
            pass
    return _parse_checked(data)


def fast_path_decides(data: bytes) -> bool:
    """Whether :func:`parse_canonical` decides ``data`` on its fast path (speed only: the result is the same).

    For tests and benchmarks of the fast path's coverage; it never raises for bad input (the reference
    check decides that, and this returns ``False``).
    """
    try:
        _parse_fast(data)
    except _NotFast:
        return False
    return True
