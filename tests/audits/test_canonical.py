"""RFC 8785 known answers (Appendix B numbers, sections 3.2.2-3.2.3) and properties."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audits.canonical import canonical_json, es_number, fast_path_decides, parse_canonical

# RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    return float(struct.unpack(">d", bytes.fromhex(bits))[0])


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_appendix_b_numbers(bits: str, expected: str) -> None:
    assert es_number(_double(bits)) == expected
    assert canonical_json(_double(bits)) == expected.encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinity_are_rejected(bits: str) -> None:
    with pytest.raises(ValueError, match="NaN and Infinity"):
        canonical_json({"x": _double(bits)})


def test_section_3_2_2_sample_object() -> None:
    # RFC 8785 section 3.2.2: input with odd numbers, escapes and literals; output in 3.2.3.
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical_json(json.loads(source)) == expected


def test_section_3_2_3_sorting_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3: the emoji (surrogate pair D83D) sorts before U+FB33.
    obj = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    names = [v for _, v in json.loads(canonical_json(obj)).items()]
    assert names == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


def test_integers_outside_exact_range_are_rejected() -> None:
    assert canonical_json(2**53) == b"9007199254740992"
    with pytest.raises(ValueError, match="exact range"):
        canonical_json(2**53 + 1)


def test_non_json_values_and_keys_are_rejected() -> None:
    with pytest.raises(TypeError):
        canonical_json({"a": {1, 2}})
    with pytest.raises(TypeError):
        canonical_json({1: "a"})
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json("\ud800")


def test_parse_canonical_rejects_non_canonical_and_duplicates() -> None:
    assert parse_canonical(b'{"a":1,"b":[true]}') == {"a": 1, "b": [True]}
    for bad in (b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0}', b'{"a":1,"a":1}', b"\xff", b"{"):
        with pytest.raises(ValueError, match=r"canonical|duplicate|UTF-8|JSON"):
            parse_canonical(bad)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_round_trip_is_stable(value: object) -> None:
    data = canonical_json(value)
    parsed = parse_canonical(data)  # also checks that data is canonical
    assert canonical_json(parsed) == data


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_text_round_trips_exactly(x: float) -> None:
    text = es_number(x)
    assert float(text) == x or (x == 0 and float(text) == 0)
    assert not math.isnan(float(text))


# ------------------------------------------- the fast parse path agrees with the reference


def _reference(data: bytes) -> object:
    """The reference check alone (parse strictly, re-encode, compare), without the fast path."""
    return parse_canonical(data, fast_path=False)


def _outcome(parse: Callable[[bytes], object], data: bytes) -> tuple[str, str]:
    try:
        return ("ok", repr(parse(data)))  # repr keeps 1 and 1.0 and True apart
    except ValueError:
        return ("rejected", "")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a":0.00001}', 1e-05),
        (b'{"a":1e-7}', 1e-07),
        (b'{"a":-2.5e-7}', -2.5e-07),
        (b'{"a":1e+21}', 1e21),
        (b'{"a":9007199254740994}', 9007199254740994.0),  # beyond 2**53: that double
        (b'{"a":"v1.2.3e-5"}', "v1.2.3e-5"),
        (b'{"a":"1e-05","b":0.00001}', "1e-05"),  # the repr text inside a string
        (b'{"\xc3\xa9":1}', 1),  # non-ASCII: decided by the reference path
        (b'{"a":1e-05}', None),
        (b'{"a":1.0}', None),
        (b'{"a":1e+16}', None),
        (b'{"a":1E-7}', None),
        (b'{"a":-0}', None),
        (b'{"a":-0.0}', None),
        (b'{"a":1e400}', None),
        (b'{"a":NaN}', None),
        (b'{"a":9007199254740993}', None),
        (b'{"a":"\\u0041"}', None),
        (b'{"a":"\\ud800"}', None),
        (b'{"a":1,"a":1}', None),
        (b'{"b":1,"a":1}', None),
        (b'{"a":1} ', None),
    ],
)
def test_number_and_structure_forms(data: bytes, expected: object) -> None:
    if expected is None:
        with pytest.raises(ValueError, match=r"canonical|duplicate|JSON|NaN|surrogate"):
            parse_canonical(data)
        assert _outcome(_reference, data)[0] == "rejected"
    else:
        value = parse_canonical(data)
        first = value[next(iter(value))]
        assert repr(first) == repr(expected)
        assert _outcome(parse_canonical, data) == _outcome(_reference, data)


def _variants(value: object) -> list[bytes]:
    """Ways a producer might (mis)encode a value: all must be judged like the reference."""
    return [
        canonical_json(value),
        json.dumps(value).encode(),
        json.dumps(value, separators=(",", ":")).encode(),
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode(),
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
    ]


@settings(max_examples=200, deadline=None)
@given(json_values, st.data())
def test_fast_path_agrees_with_reference(value: object, data: st.DataObject) -> None:
    for encoded in _variants(value):
        assert _outcome(parse_canonical, encoded) == _outcome(_reference, encoded)
    # Single-byte edits of canonical bytes: a different value, non-canonical text or garbage.
    raw = bytearray(canonical_json(value))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.sampled_from(b'0159.e-+E" :,{}[]\\tfnua'))
    edited = bytes(raw)
    assert _outcome(parse_canonical, edited) == _outcome(_reference, edited)


def test_ascii_entries_are_decided_on_the_fast_path() -> None:
    entry = canonical_json({"kind": "round_opened", "round": 3, "delta": 1e-05, "eps": [0.5, 1.25]})
    assert fast_path_decides(entry)
    # not canonical, or not ASCII: the reference check decides (and here refuses or accepts)
    assert not fast_path_decides(b'{"a":1.0}')
    assert not fast_path_decides(canonical_json({"name": "h\u00f4pital"}))


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_every_float_round_trips_through_the_fast_path(x: float) -> None:
    data = canonical_json({"x": x, "y": [x, -x], "s": repr(x)})
    reference = repr(_reference(data))
    assert repr(parse_canonical(data)) == reference  # the fast path's answer whenever it decides
    if not fast_path_decides(data):
        # Only integral doubles between 2**53 and 1e21 print as integers the exact-range
        # check sends to the reference path (and "e-" inside the "s" string).
        assert 2**53 < abs(x) < 1e21 or "e-" in repr(x)
