"""Slot packing, binary (``SlotPacking``) and mixed-radix (``RadixPacking``, what Paillier mode uses): exact sums
for any layout, refusal of anything that could overflow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidParameters
from secagg.hazmat.packing import MAX_SLOT_BITS, SAFETY_MARGIN_BITS, SlotPacking
from secagg.hazmat.paillier import RadixPacking

LAYOUTS = pytest.mark.parametrize(
    "layout_type", [SlotPacking, RadixPacking], ids=["binary", "radix"]
)


@st.composite
def layouts_and_inputs(
    draw: st.DrawFn, layout: type[SlotPacking] = SlotPacking
) -> tuple[SlotPacking, np.ndarray, int]:
    value_bits = draw(st.integers(2, 32))
    max_contributors = draw(st.integers(1, 64))
    modulus_bits = draw(st.sampled_from([256, 512, 1024, 2048, 3072]))
    packing = layout(
        value_bits=value_bits, max_contributors=max_contributors, modulus_bits=modulus_bits
    )
    contributors = draw(st.integers(1, max_contributors))
    k = packing.slots_per_plaintext
    length = draw(
        st.sampled_from([1, k - 1 or 1, k, k + 1, 2 * k + 3, draw(st.integers(1, 5 * k))])
    )
    seed = draw(st.integers(0, 2**32 - 1))
    gen = np.random.default_rng(seed)
    values = gen.integers(-packing.offset, packing.offset + 1, size=(contributors, length))
    # Force the extremes of the range into some inputs: the overflow-critical case.
    mode = draw(st.sampled_from(["random", "max", "min", "mixed"]))
    if mode == "max":
        values[:] = packing.offset
    elif mode == "min":
        values[:] = -packing.offset
    elif mode == "mixed":
        values[:, ::2] = packing.offset
        values[:, 1::2] = -packing.offset
    return packing, values.astype(np.int64), contributors


BOTH = st.sampled_from([SlotPacking, RadixPacking]).flatmap(layouts_and_inputs)


@settings(max_examples=200, deadline=None)
@given(BOTH)
def test_sum_of_packed_plaintexts_unpacks_to_exact_integer_sum(
    case: tuple[SlotPacking, np.ndarray, int],
) -> None:
    packing, values, contributors = case
    packed = [packing.pack(row) for row in values]
    summed = [sum(column) for column in zip(*packed, strict=True)]
    # The integer sum of plaintexts stays below 2^(bits(N) - 1) <= N: no reduction mod N can happen.
    assert all(s < 1 << (packing.modulus_bits - 1 - SAFETY_MARGIN_BITS) for s in summed)
    decoded = packing.unpack_sum(summed, length=values.shape[1], contributors=contributors)
    np.testing.assert_array_equal(decoded, values.sum(axis=0))
    assert decoded.dtype == np.int64


@settings(max_examples=80, deadline=None)
@given(BOTH)
def test_pack_unpack_round_trip(case: tuple[SlotPacking, np.ndarray, int]) -> None:
    packing, values, _ = case
    np.testing.assert_array_equal(
        packing.unpack(packing.pack(values[0]), length=values.shape[1]), values[0]
    )


def test_slot_width_is_b_plus_ceil_log2_n() -> None:
    assert SlotPacking(value_bits=16, max_contributors=10, modulus_bits=2048).slot_bits == 20
    assert SlotPacking(value_bits=16, max_contributors=16, modulus_bits=2048).slot_bits == 20
    assert SlotPacking(value_bits=16, max_contributors=17, modulus_bits=2048).slot_bits == 21
    assert SlotPacking(value_bits=16, max_contributors=1, modulus_bits=2048).slot_bits == 16
    layout = SlotPacking(value_bits=16, max_contributors=10, modulus_bits=2048)
    assert layout.slots_per_plaintext == (2048 - 1 - SAFETY_MARGIN_BITS) // 20 == 102


@LAYOUTS
def test_worst_case_sum_fits_the_slot_and_the_plaintext(layout_type: type[SlotPacking]) -> None:
    layout = layout_type(value_bits=8, max_contributors=5, modulus_bits=256)
    top = [layout.pack(np.full(layout.slots_per_plaintext, layout.offset))[0]] * 5
    assert sum(top) < 1 << (layout.slots_per_plaintext * layout.slot_bits)
    np.testing.assert_array_equal(
        layout.unpack_sum([sum(top)], length=layout.slots_per_plaintext, contributors=5),
        np.full(layout.slots_per_plaintext, 5 * layout.offset),
    )


@pytest.mark.parametrize(
    ("value_bits", "max_contributors", "modulus_bits"),
    [
        (1, 3, 2048),  # no room for a sign
        (0, 3, 2048),
        (16, 0, 2048),  # nobody to sum
        (60, 16, 2048),  # 64-bit slots cannot be decoded exactly
        (MAX_SLOT_BITS + 1, 1, 4096),
        (32, 4, 34),  # the modulus cannot hold a single slot
    ],
)
@LAYOUTS
def test_risky_parameters_are_refused(
    layout_type: type[SlotPacking], value_bits: int, max_contributors: int, modulus_bits: int
) -> None:
    with pytest.raises(InvalidParameters):
        layout_type(
            value_bits=value_bits, max_contributors=max_contributors, modulus_bits=modulus_bits
        )


@LAYOUTS
def test_more_contributors_than_sized_for_is_refused(layout_type: type[SlotPacking]) -> None:
    layout = layout_type(value_bits=8, max_contributors=3, modulus_bits=256)
    packed = layout.pack(np.ones(4, dtype=np.int64))
    with pytest.raises(InvalidParameters):
        layout.unpack_sum([4 * p for p in packed], length=4, contributors=4)


@LAYOUTS
def test_values_outside_the_range_are_refused(layout_type: type[SlotPacking]) -> None:
    layout = layout_type(value_bits=8, max_contributors=3, modulus_bits=256)
    # The range is symmetric, [-(2^(b-1) - 1), 2^(b-1) - 1] = [-127, 127]; -128 is refused too.
    for bad in (np.array([128]), np.array([-128]), np.array([0, 1000]), np.array([0.5])):
        with pytest.raises(ValueError, match=r"range|integers"):
            layout.pack(bad)
    np.testing.assert_array_equal(
        layout.unpack(layout.pack(np.array([127, -127])), length=2), [127, -127]
    )


@LAYOUTS
def test_plaintexts_too_large_for_the_layout_are_refused(layout_type: type[SlotPacking]) -> None:
    layout = layout_type(value_bits=8, max_contributors=3, modulus_bits=256)
    with pytest.raises(ValueError, match="too large"):
        layout.unpack_sum(
            [1 << (layout.slots_per_plaintext * layout.slot_bits)], length=1, contributors=1
        )
    with pytest.raises(ValueError, match="wrong number"):
        layout.unpack_sum([0, 0], length=1, contributors=1)


# -- mixed-radix specifics ----------------------------------------------------------------------------------------
def test_radix_slots_are_sized_to_the_exact_bound() -> None:
    packing = RadixPacking(value_bits=16, max_contributors=10, modulus_bits=2048)
    assert packing.radix == 10 * (2**16 - 2) + 1
    assert packing.slots_per_plaintext == 105
    assert packing.radix**105 < 2**2046 < packing.radix**106
    assert packing.plaintexts_for(1_000_000) == 9524  # 9,804 with 20-bit binary slots
    for b, n, bits in itertools.product([2, 8, 16, 24], [1, 3, 10, 64], [256, 2048]):
        radix = RadixPacking(value_bits=b, max_contributors=n, modulus_bits=bits)
        binary = SlotPacking(value_bits=b, max_contributors=n, modulus_bits=bits)
        assert radix.slots_per_plaintext >= binary.slots_per_plaintext
