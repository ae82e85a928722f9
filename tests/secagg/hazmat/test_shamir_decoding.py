"""Robust Shamir reconstruction (``secagg.hazmat.shamir``): the consistency check and the Reed-Solomon decoder.

Properties over random thresholds, x-coordinates and wrong shares, checked against the plain dealer: any wrong
share fails :func:`check_consistent`; :func:`decode` corrects floor((k - t) / 2) wrong shares with Gao's decoder
alone and, with an ``accept`` that recognises the secret, up to k - t independently wrong ones by its search.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import InvalidParameters, ProtocolViolation
from secagg.hazmat import shamir

P = shamir.PRIME
Case = tuple[
    bytes, int, dict[int, bytes], random.Random
]  # secret, threshold, shares by x, randomness


@st.composite
def dealt(draw: st.DrawFn, max_k: int = 12) -> Case:
    k = draw(st.integers(1, max_k))
    t = draw(st.integers(1, k))
    xs = draw(st.lists(st.integers(1, 10_000), min_size=k, max_size=k, unique=True))
    rng = random.Random(draw(st.integers(0, 2**32)))
    secret = rng.randbytes(32)
    return secret, t, shamir.split(secret, threshold=t, xs=xs, rng=rng.randbytes), rng


def wrong(share: bytes, rng: random.Random) -> bytes:
    value = (int.from_bytes(share, "big") + rng.randrange(1, P)) % P
    return value.to_bytes(shamir.SHARE_BYTES, "big")


@settings(max_examples=60, deadline=None)
@given(case=dealt(), data=st.data())
def test_check_consistent_passes_honest_sets_and_catches_any_wrong_share(
    case: Case, data: st.DataObject
) -> None:
    _, t, shares, rng = case
    others = [
        shamir.split(rng.randbytes(32), threshold=t, xs=list(shares), rng=rng.randbytes)
        for _ in range(data.draw(st.integers(0, 3)))
    ]
    shamir.check_consistent([shares, *others], threshold=t, rng=rng.randbytes)
    if len(shares) == t:
        return  # t points always fit: nothing to check against
    x = data.draw(st.sampled_from(sorted(shares)))
    bad = {**shares, x: wrong(shares[x], rng)}
    with pytest.raises(ProtocolViolation, match="not all on one polynomial"):
        shamir.check_consistent([*others, bad], threshold=t, rng=rng.randbytes)


def spoil(case: Case, data: st.DataObject, most: int) -> tuple[bytes, int, set[int]]:
    """Replace up to ``most`` shares of ``case`` with independent random ones; return secret, t, their xs."""
    secret, t, shares, rng = case
    errors = data.draw(st.sets(st.sampled_from(sorted(shares)), max_size=most))
    for x in errors:
        shares[x] = wrong(shares[x], rng)
    return secret, t, errors


@settings(max_examples=60, deadline=None)
@given(case=dealt(max_k=20), data=st.data())
def test_gao_alone_corrects_up_to_half_the_redundancy(case: Case, data: st.DataObject) -> None:
    k = len(case[2])
    secret, t, errors = spoil(case, data, (k - case[1]) // 2)
    decoded = shamir.decode(case[2], threshold=t, accept=lambda s: s == secret, max_subsets=0)
    assert (decoded.secret, decoded.errors, decoded.agreeing) == (secret, errors, k - len(errors))
    assert decoded.subsets == 0
    assert secret.hex() not in repr(decoded)


@settings(max_examples=60, deadline=None)
@given(case=dealt(max_k=9), data=st.data())
def test_the_search_finds_up_to_k_minus_t_independent_wrong_shares(
    case: Case, data: st.DataObject
) -> None:
    secret, t, errors = spoil(case, data, len(case[2]) - case[1])
    decoded = shamir.decode(case[2], threshold=t, accept=lambda s: s == secret)
    assert (decoded.secret, decoded.errors) == (secret, errors)


def test_decode_refuses_what_it_cannot_decode() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4, 5])
    with pytest.raises(InvalidParameters):
        shamir.decode({1: shares[1]}, threshold=3, accept=lambda s: True)
    with pytest.raises(ProtocolViolation, match="malformed"):
        shamir.decode({**shares, 2: b"\xff" * 66}, threshold=3, accept=lambda s: True)
    # every share agrees on the dealt secret: an accept that wants another one finds nothing to search
    with pytest.raises(ProtocolViolation, match="all shares agree"):
        shamir.decode(shares, threshold=3, accept=lambda s: s != secret)
    # three wrong of five with t = 3: two right ones cannot outvote them
    rng = random.Random(0)
    bad = {**shares, **{x: wrong(shares[x], rng) for x in (1, 2, 3)}}
    with pytest.raises(ProtocolViolation, match="no polynomial"):
        shamir.decode(bad, threshold=3, accept=lambda s: s == secret)
    with pytest.raises(InvalidParameters, match="same x-coordinates"):
        shamir.check_consistent([shares, {1: shares[1]}], threshold=3)
