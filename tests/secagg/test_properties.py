"""Hypothesis properties: Shamir's threshold behaviour, and exact unmasking under any dropout pattern.

Tampered shares (documented behaviour of ``shamir.reconstruct``, which interpolates the first ``t`` shares by x):
    - a changed share among those ``t`` NEVER yields the original secret: the result is
      ``s + lambda_i * delta mod p`` with ``lambda_i, delta != 0``. It raises ``ProtocolViolation`` when that
      value is not a 32-byte secret ("inconsistent") or the share is not a field element ("malformed"), and
      otherwise silently RETURNS A DIFFERENT SECRET. With roster indices 1..t as x-coordinates the Lagrange
      coefficients are small integers (3, -3, 1 for t = 3), so flipping a low bit usually gives a different
      valid secret; flipping a high bit raises. The "inconsistent" check is a sanity check, not tamper detection;
    - a changed share outside those ``t`` is never read: the correct secret comes back;
    - someone who knows the other shares can aim ``delta`` and make it return any secret they choose:
      Shamir sharing is not authenticated (only the server's public-key check covers mask-key shares).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from secagg import ProtocolViolation, RoundAborted
from secagg.hazmat import shamir
from secagg.masking.config import minimum_threshold
from tests.secagg.harness import (
    make_config,
    make_federation,
    random_inputs,
    ring_sum,
    run_round,
    seeded_rng,
)

P = shamir.PRIME
secrets_32 = st.binary(min_size=32, max_size=32)
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def interpolate_at(points: dict[int, int], x: int) -> int:
    """Lagrange interpolation over GF(p) at ``x``, written independently of the library."""
    total = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * (x - xj) % P
                den = den * (xi - xj) % P
        total = (total + yi * num * pow(den, -1, P)) % P
    return total


@st.composite
def sharings(draw: st.DrawFn, *, min_t: int = 1) -> tuple[bytes, int, dict[int, bytes]]:
    n = draw(st.integers(max(min_t, 1), 20))
    t = draw(st.integers(min_t, n))
    xs = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    secret = draw(secrets_32)
    shares = shamir.split(secret, threshold=t, xs=xs, rng=seeded_rng(draw(st.integers(0, 2**32))))
    return secret, t, shares


# --- Shamir -------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(sharings(), st.data())
def test_any_t_of_n_shares_reconstruct(
    case: tuple[bytes, int, dict[int, bytes]], data: st.DataObject
) -> None:
    secret, t, shares = case
    k = data.draw(st.integers(t, len(shares)))
    subset = data.draw(st.permutations(sorted(shares)))[:k]
    assert shamir.reconstruct({x: shares[x] for x in subset}, threshold=t) == secret


@settings(max_examples=60, deadline=None)
@given(sharings(min_t=2), st.data(), secrets_32)
def test_t_minus_1_shares_are_consistent_with_every_secret(
    case: tuple[bytes, int, dict[int, bytes]], data: st.DataObject, candidate: bytes
) -> None:
    """For any t-1 shares and ANY candidate secret there is exactly one degree-(t-1) polynomial through
    them and (0, candidate): so t-1 shares rule out no secret (Shamir 1979, perfect secrecy)."""
    secret, t, shares = case
    seen = data.draw(st.permutations(sorted(shares)))[: t - 1]
    points = {x: int.from_bytes(shares[x], "big") for x in seen}
    fresh = max(shares) + 1  # a share nobody holds
    forged_y = interpolate_at({0: int.from_bytes(candidate, "big"), **points}, fresh)
    forged = {**{x: shares[x] for x in seen}, fresh: forged_y.to_bytes(shamir.SHARE_BYTES, "big")}
    assert shamir.reconstruct(forged, threshold=t) == candidate
    # uniqueness: with the true secret as candidate the polynomial is the dealer's own
    unseen = next(x for x in shares if x not in seen)
    assert interpolate_at({0: int.from_bytes(secret, "big"), **points}, unseen) == int.from_bytes(
        shares[unseen], "big"
    )


def _low_bytes(secret: bytes, t: int, rng_seed: int, count: int) -> np.ndarray:
    rng = seeded_rng(rng_seed)
    out = np.empty((count, 2), dtype=np.int64)
    for i in range(count):
        shares = shamir.split(secret, threshold=t, xs=[1, 2, 3, 4, 5], rng=rng)
        out[i] = shares[1][-1], shares[2][-1]
    return out


def test_t_minus_1_shares_have_the_same_distribution_for_different_secrets() -> None:
    """Two shares of a t=3 sharing of all-zeros vs all-ones: same distribution (two-sample chi-square)."""
    count = 2048
    zero, ones = _low_bytes(bytes(32), 3, 1, count), _low_bytes(b"\xff" * 32, 3, 2, count)
    for column in (0, 1):
        table = np.array(
            [
                np.bincount(zero[:, column], minlength=256),
                np.bincount(ones[:, column], minlength=256),
            ]
        )
        assert stats.chi2_contingency(table).pvalue > 1e-4
    # the test has power: with t = 1 a share *is* the secret and the distributions differ completely
    leaky = np.array(
        [
            np.bincount(_low_bytes(s, 1, 3, 64)[:, 0], minlength=256)
            for s in (bytes(32), b"\xff" * 32)
        ]
    )
    assert stats.chi2_contingency(leaky[:, leaky.sum(axis=0) > 0]).pvalue < 1e-10


@settings(max_examples=60, deadline=None)
@given(sharings(), st.data())
def test_tampered_share_among_the_first_t_raises_or_returns_another_secret(
    case: tuple[bytes, int, dict[int, bytes]], data: st.DataObject
) -> None:
    secret, t, shares = case
    victim = data.draw(st.sampled_from(sorted(shares)[:t]))
    bit = data.draw(st.integers(0, 8 * shamir.SHARE_BYTES - 1))
    tampered = dict(shares)
    tampered[victim] = (int.from_bytes(shares[victim], "big") ^ (1 << bit)).to_bytes(
        shamir.SHARE_BYTES, "big"
    )
    outcome: bytes | str
    try:
        outcome = shamir.reconstruct(tampered, threshold=t)
    except ProtocolViolation as exc:
        outcome = str(exc)
    assert outcome != secret  # never the original: a different secret, or a refusal ...
    if isinstance(outcome, str):
        assert re.search("inconsistent|malformed", outcome)  # ... that says why


def test_tampering_with_roster_indices_low_bit_returns_another_secret_high_bit_raises() -> None:
    secret = (100).to_bytes(32, "big")
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4], rng=seeded_rng(6))
    y1 = int.from_bytes(shares[1], "big")  # lambda_1 = 3 for xs (1, 2, 3)
    low = {**shares, 1: (y1 ^ 1).to_bytes(shamir.SHARE_BYTES, "big")}
    assert int.from_bytes(shamir.reconstruct(low, threshold=3), "big") in (97, 103)
    high = {**shares, 1: (y1 ^ (1 << 519)).to_bytes(shamir.SHARE_BYTES, "big")}
    with pytest.raises(ProtocolViolation, match="inconsistent"):
        shamir.reconstruct(high, threshold=3)


@settings(max_examples=30, deadline=None)
@given(sharings(), st.data())
def test_tampered_share_outside_the_first_t_is_ignored(
    case: tuple[bytes, int, dict[int, bytes]], data: st.DataObject
) -> None:
    secret, t, shares = case
    if len(shares) == t:
        return  # nothing outside the first t
    victim = data.draw(st.sampled_from(sorted(shares)[t:]))
    tampered = {**shares, victim: b"\xff" * shamir.SHARE_BYTES}
    assert shamir.reconstruct(tampered, threshold=t) == secret


@settings(max_examples=30, deadline=None)
@given(sharings(min_t=2), secrets_32)
def test_an_aimed_tampering_returns_a_different_valid_secret(
    case: tuple[bytes, int, dict[int, bytes]], target: bytes
) -> None:
    _secret, t, shares = case
    used = sorted(shares)[:t]
    points = {x: int.from_bytes(shares[x], "big") for x in used[1:]}
    # the share at used[0] that, with the others, interpolates to `target`
    aimed = interpolate_at({0: int.from_bytes(target, "big"), **points}, used[0])
    tampered = {**shares, used[0]: aimed.to_bytes(shamir.SHARE_BYTES, "big")}
    assert shamir.reconstruct(tampered, threshold=t) == target


# --- Rounds under dropout -------------------------------------------------------------------------------------

STAGES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")
ABORT_MESSAGE = re.compile(r"only (\d+) silos .*?needs? (\d+)")


@dataclass(frozen=True)
class Plan:
    n: int
    collusion: int
    threshold: int
    min_cohort: int
    length: int
    drops: tuple[int, ...]  # how many silos vanish before each stage, in STAGES order
    order: tuple[int, ...]  # which silos (by roster position) vanish first
    seed: int

    @property
    def required(self) -> int:
        return max(self.threshold, self.min_cohort)

    def drop_sets(self, silos: list[str]) -> dict[str, list[str]]:
        queue = [silos[i] for i in self.order]
        out, start = {}, 0
        for stage, k in zip(STAGES, self.drops, strict=True):
            out[stage] = queue[start : start + k]
            start += k
        return out


@st.composite
def plans(draw: st.DrawFn, *, abort_at: str | None) -> Plan:
    small = st.integers(1, 40)
    length = draw(small | small | small | st.sampled_from([262_143, 262_145]))
    n = draw(
        st.integers(3, 20 if length < 1000 else 6)
    )  # 1 MiB chunk +-1 words: keep those rounds small
    # mostly small c and t near its minimum, so there is room for dropouts; the extremes still occur
    collusion = draw(st.integers(0, n - 1) | st.integers(0, n // 3))
    t_min = minimum_threshold(n, collusion)
    t = draw(st.integers(t_min, n) | st.integers(t_min, min(t_min + 1, n)))
    min_cohort = draw(st.integers(2, n) | st.integers(2, t))
    required = max(t, min_cohort)
    drops: list[int] = []
    alive = n
    for stage in STAGES:
        # stages 1-3 must keep `required` silos; stages 4-5 need t signers / responders among U3
        floor = required if stage in STAGES[:3] else t
        if stage == abort_at:
            k = draw(st.sampled_from(range(alive - floor + 1, alive + 1)))
        elif abort_at is not None and STAGES.index(stage) > STAGES.index(abort_at):
            k = 0
        else:
            k = draw(st.sampled_from(range(alive - floor + 1)))  # sampled: not biased towards 0
        drops.append(k)
        alive -= k
    order = tuple(draw(st.permutations(range(n))))
    return Plan(
        n, collusion, t, min_cohort, length, tuple(drops), order, draw(st.integers(0, 2**16))
    )


def _setup(plan: Plan) -> tuple[object, object, dict[str, np.ndarray], dict[str, list[str]]]:
    fed = make_federation(plan.n, seed=plan.seed)
    config = make_config(
        fed,
        length=plan.length,
        threshold=plan.threshold,
        collusion=plan.collusion,
        min_cohort=plan.min_cohort,
    )
    return fed, config, random_inputs(fed, plan.length, seed=plan.seed), plan.drop_sets(fed.silos)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(abort_at=None))
def test_unmasked_sum_is_exact_under_any_dropout_pattern(plan: Plan) -> None:
    fed, config, inputs, drop = _setup(plan)
    result = run_round(fed, config, inputs, drop=drop, seed=plan.seed)  # type: ignore[arg-type]
    before_stage_3 = set(drop["advertise"]) | set(drop["share_keys"])
    u3 = sorted(set(inputs) - before_stage_3 - set(drop["masked_input"]))
    assert list(result.survivors) == u3
    assert list(result.dropped) == sorted(drop["masked_input"])
    assert len(u3) >= plan.required
    np.testing.assert_array_equal(result.total, ring_sum((inputs[s] for s in u3), plan.length))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(STAGES).flatmap(lambda stage: plans(abort_at=stage)))
def test_round_below_the_threshold_aborts_and_says_why(plan: Plan) -> None:
    fed, config, inputs, drop = _setup(plan)
    with pytest.raises(RoundAborted) as info:
        run_round(fed, config, inputs, drop=drop, seed=plan.seed)  # type: ignore[arg-type]
    match = ABORT_MESSAGE.search(str(info.value))
    assert match, str(info.value)
    have, need = int(match[1]), int(match[2])
    assert have < need
    assert need in (plan.threshold, plan.required)


@pytest.mark.parametrize("length", [1, 262_145])
def test_a_one_word_and_a_chunk_plus_one_round_with_dropouts_at_every_stage(length: int) -> None:
    fed = make_federation(12, seed=4)
    config = make_config(fed, length=length, min_cohort=7)  # t = 7
    inputs = random_inputs(fed, length, seed=length)
    s = fed.silos
    drop = {
        "advertise": [s[11]],
        "share_keys": [s[10]],
        "masked_input": [s[9]],
        "consistency": [s[8]],
        "unmask": [s[7]],
    }
    result = run_round(fed, config, inputs, drop=drop, seed=9, chunk=100_000)
    assert result.survivors == tuple(s[:9])
    assert result.dropped == (s[9],)
    np.testing.assert_array_equal(result.total, ring_sum((inputs[x] for x in s[:9]), length))
