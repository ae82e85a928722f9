"""Threshold rules, min_cohort, RoundConfig validation and the quantizer (no wrap, unbiased, exact decoding)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import (
    InvalidParameters,
    Quantizer,
    RoundAborted,
    RoundConfig,
    check_threshold,
    minimum_threshold,
)
from secagg.hazmat.quantize import RING_BITS, clip_l2
from tests.secagg.harness import make_config, make_federation, random_inputs, run_round, seeded_rng

# --- Threshold rule t > (n + c) / 2 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "collusion", "expected"),
    [
        (3, 0, 2),
        (3, 1, 3),
        (10, 0, 6),
        (10, 1, 6),
        (10, 2, 7),
        (10, 3, 7),
        (2, 0, 2),
        (100, 33, 67),
    ],
)
def test_minimum_threshold_examples(n: int, collusion: int, expected: int) -> None:
    assert minimum_threshold(n, collusion) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 500).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_minimum_threshold_is_the_smallest_t_above_half_of_n_plus_c(case: tuple[int, int]) -> None:
    n, c = case
    t = minimum_threshold(n, c)
    assert (
        2 * t > n + c >= 2 * (t - 1)
    )  # t > (n + c)/2, and t - 1 is not (exact integer arithmetic)
    assert t <= n
    check_threshold(n=n, threshold=t, collusion=c, min_cohort=2)
    with pytest.raises(InvalidParameters, match=f"t >= {t}"):
        check_threshold(n=n, threshold=t - 1, collusion=c, min_cohort=2)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"n": 1, "threshold": 1, "collusion": 0, "min_cohort": 2}, "at least 2 silos"),
        ({"n": 5, "threshold": 3, "collusion": -1, "min_cohort": 2}, "collusion"),
        ({"n": 5, "threshold": 5, "collusion": 5, "min_cohort": 2}, "collusion"),
        ({"n": 5, "threshold": 3, "collusion": 0, "min_cohort": 1}, "min_cohort"),
        ({"n": 5, "threshold": 3, "collusion": 0, "min_cohort": 6}, "min_cohort"),
        ({"n": 5, "threshold": 6, "collusion": 0, "min_cohort": 2}, "exceeds"),
        ({"n": 10, "threshold": 6, "collusion": 2, "min_cohort": 2}, "unsafe"),
    ],
)
def test_check_threshold_refuses(kwargs: dict[str, int], why: str) -> None:
    with pytest.raises(InvalidParameters, match=why):
        check_threshold(**kwargs)


def test_min_cohort_is_enforced_even_when_the_threshold_is_met() -> None:
    fed = make_federation(5)
    config = make_config(fed, length=4, min_cohort=4)  # t = 3
    assert (config.threshold, config.required_survivors) == (3, 4)
    inputs = random_inputs(fed, 4)
    s = fed.silos
    for stage in ("advertise", "share_keys", "masked_input"):
        with pytest.raises(RoundAborted, match="the round needs 4"):
            run_round(fed, config, inputs, drop={stage: s[:2]})
    result = run_round(fed, config, inputs, drop={"masked_input": s[:1]})
    assert len(result.survivors) == 4


# --- RoundConfig -----------------------------------------------------------------------------------------------


def _config(**overrides: object) -> RoundConfig:
    fields: dict[str, object] = {
        "federation": "fed",
        "round": 0,
        "model_hash": hashlib.sha256(b"m").digest(),
        "vector_length": 10,
        "quantizer": Quantizer(clip=1.0, bits=16, max_silos=5),
        "n": 5,
        "threshold": 3,
        "collusion": 0,
        "min_cohort": 3,
    }
    fields.update(overrides)
    return RoundConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"round": -1}, "round"),
        ({"model_hash": b"\x00" * 31}, "SHA-256"),
        ({"model_hash": b""}, "SHA-256"),
        ({"vector_length": 0}, "vector_length"),
        ({"quantizer": Quantizer(clip=1.0, bits=16, max_silos=4)}, "max_silos"),
        ({"threshold": 2}, "unsafe"),
        ({"threshold": 6}, "exceeds"),
        ({"collusion": 2, "threshold": 3}, "unsafe"),
        ({"min_cohort": 1}, "min_cohort"),
        ({"min_cohort": 6}, "min_cohort"),
        ({"n": 1, "threshold": 1, "min_cohort": 2}, "at least 2"),
    ],
)
def test_round_config_refuses_invalid_parameters(overrides: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidParameters, match=why):
        _config(**overrides)


def test_round_config_refuses_a_round_number_that_cannot_be_encoded() -> None:
    for too_big in (2**32, 2**63):  # a uint32 on the wire; 2^63 would overflow encode_fields
        with pytest.raises(InvalidParameters, match="round"):
            _config(round=too_big)
    assert _config(round=2**32 - 1).params_hash() != _config(round=0).params_hash()


def test_round_config_is_frozen_keyword_only_and_hashes_every_parameter() -> None:
    config = _config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.round = 1  # type: ignore[misc]
    positional: Any = RoundConfig
    with pytest.raises(TypeError):
        positional("fed", 0)  # privacy parameters are keyword-only
    variants = [
        config,
        _config(federation="fed2"),
        _config(round=1),
        _config(vector_length=11),
        _config(quantizer=Quantizer(clip=2.0, bits=16, max_silos=5)),
        _config(quantizer=Quantizer(clip=1.0, bits=15, max_silos=5)),
        _config(quantizer=Quantizer(clip=1.0, bits=16, max_silos=6)),
        _config(threshold=4),
        _config(collusion=1, threshold=4),
        _config(min_cohort=2),
    ]
    assert len({v.params_hash() for v in variants}) == len(variants)
    # the model hash is signed separately, not folded into the parameters
    assert (
        _config(model_hash=hashlib.sha256(b"other").digest()).params_hash() == config.params_hash()
    )
    assert config.required_survivors == 3
    assert _config(min_cohort=2).required_survivors == 3


# --- Quantizer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip": 0.0, "bits": 8, "max_silos": 3},
        {"clip": -1.0, "bits": 8, "max_silos": 3},
        {"clip": math.nan, "bits": 8, "max_silos": 3},
        {"clip": math.inf, "bits": 8, "max_silos": 3},
        {"clip": 1.0, "bits": 1, "max_silos": 3},
        {"clip": 1.0, "bits": 32, "max_silos": 1},
        {"clip": 1.0, "bits": 8, "max_silos": 0},
        {"clip": 1.0, "bits": 16, "max_silos": (1 << 15) + 1},  # 16 + 16 + 1 = 33 bits
        {"clip": 1.0, "bits": 31, "max_silos": 2},
    ],
)
def test_quantizer_refuses_unsafe_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidParameters):
        Quantizer(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 31), st.integers(1, 1 << 31), st.sampled_from([1.0, 0.5, 3.0, 1e-3]))
def test_quantizer_refuses_exactly_the_parameters_that_could_wrap(
    bits: int, n: int, clip: float
) -> None:
    headroom = (n - 1).bit_length()  # exact ceil(log2 n)
    if bits + headroom + 1 > RING_BITS:
        with pytest.raises(InvalidParameters, match="ring has 32"):
            Quantizer(clip=clip, bits=bits, max_silos=n)
        return
    q = Quantizer(clip=clip, bits=bits, max_silos=n)
    assert q.total_bits == bits + headroom + 1
    # the most extreme sum the parameters allow decodes without wrapping: n silos all at +clip or -clip
    for sign in (1.0, -1.0):
        one = q.encode(np.array([sign * clip]), rng=seeded_rng(0)).astype(np.uint64)
        total = (one * n % (1 << 32)).astype(np.uint32)
        decoded = q.decode_sum(total, count=n)[0]
        assert abs(decoded - sign * n * clip) <= n / q.scale


@pytest.mark.parametrize("value", [0.001, -0.0023, 0.00071, 0.0])
def test_stochastic_rounding_is_unbiased(value: float) -> None:
    q = Quantizer(clip=1.0, bits=8, max_silos=4)  # scale 127: value*scale is far from an integer
    count = 150_000
    x = np.full(count, value)
    assert np.linalg.norm(x) < q.clip  # nothing is clipped: the target is exactly value * scale
    encoded = q.encode(x, rng=seeded_rng(21)).view(np.int32).astype(np.float64)
    target = value * q.scale
    frac = target - math.floor(target)
    sigma = math.sqrt(max(frac * (1 - frac), 1e-12) / count)
    assert abs(encoded.mean() - target) <= 6 * sigma + 1e-12
    assert set(np.unique(encoded)) <= {math.floor(target), math.ceil(target)}
    if (
        frac
    ):  # and the check has power: round-to-nearest would be off by min(frac, 1 - frac) >> 6 sigma
        assert min(frac, 1 - frac) > 30 * sigma


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 16),
    st.integers(1, 40),
    st.sampled_from([(1.0, 16), (0.5, 8), (10.0, 24), (1e-2, 12)]),
    st.integers(0, 2**32),
)
def test_decode_sum_of_n_encodings_is_within_n_over_scale(
    n: int, length: int, params: tuple[float, int], seed: int
) -> None:
    clip, bits = params
    q = Quantizer(clip=clip, bits=bits, max_silos=16)
    gen = np.random.default_rng(seed)
    rng = seeded_rng(seed)
    xs = [
        gen.normal(scale=clip, size=length) for _ in range(n)
    ]  # often above clip: clipping is exercised
    total = np.zeros(length, dtype=np.uint32)
    for x in xs:
        total += q.encode(x, rng=rng)  # uint32 arithmetic wraps: this is the ring sum
    decoded = q.decode_sum(total, count=n)
    exact = np.sum([clip_l2(x, clip) for x in xs], axis=0)
    assert np.all(np.abs(decoded - exact) < n / q.scale + 1e-9 * n * clip)


def test_encode_and_decode_refuse_bad_input() -> None:
    q = Quantizer(clip=1.0, bits=8, max_silos=4)
    for bad in ([math.nan], [math.inf, 0.0], [-math.inf]):
        with pytest.raises(ValueError, match="NaN or infinity"):
            q.encode(np.array(bad))
    for count in (0, 5):
        with pytest.raises(InvalidParameters):
            q.decode_sum(np.zeros(3, np.uint32), count=count)
    big = q.encode(np.array([3.0, -4.0]), rng=seeded_rng(1)).view(np.int32)
    assert np.all(np.abs(big) <= q.levels)
