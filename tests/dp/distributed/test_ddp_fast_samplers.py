"""The fast samplers: table inversion against independent CDFs, the exact paths, the distance in delta."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from decimal import Decimal, localcontext

import numpy as np
import pytest
from scipy import stats

from dp.distributed import (
    BitSource,
    DistributedDPConfig,
    delta_with_sampling_error,
    encode,
    plan,
    randomized_hadamard,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_poisson,
    sample_skellam,
    sampling_distance,
)
from dp.distributed._bits import OsSeededStream, floor_neg_log_uniform
from dp.distributed._tables import (
    TABLE_DISTANCE,
    CdtTable,
    gaussian_table,
    poisson_table,
    skellam_table,
)
from dp.errors import InvalidPrivacyParameters

Seeded = Callable[[int], Callable[[int], bytes]]


def _replay_words(words: list[int]) -> Callable[[int], bytes]:
    """A byte source that plays back the given 64-bit words (little-endian), then fails."""
    buffer = bytearray(b"".join(w.to_bytes(8, "little") for w in words))

    def take(n: int) -> bytes:
        if n > len(buffer):
            raise AssertionError("the sampler drew more words than the test planned")
        out = bytes(buffer[:n])
        del buffer[:n]
        return out

    return take


def _words_for(us: list[float]) -> list[int]:
    return [int(u * 2.0**64) for u in us]


def _invert(cdf: np.ndarray, support: np.ndarray, us: list[float]) -> list[int]:
    """``min{k : F(k) > u}`` from an independent CDF, checking no ``u`` sits near a step."""
    for u in us:
        assert np.min(np.abs(cdf - u)) > 1e-11, "pick a uniform away from the CDF's steps"
    return [int(support[np.searchsorted(cdf, u, side="right")]) for u in us]


US = [1e-7, 0.013, 0.25, 0.5, 0.61, 0.75, 0.987, 1 - 1e-7]


@pytest.mark.parametrize("mu", [0.3, 7.5, 1234.5, 25_000.5])
def test_poisson_table_inverts_the_independent_cdf(mu: float) -> None:
    """Known answers: each 64-bit word is U's top word; the draw is the CDF inverse at U.

    (scipy's Poisson CDF is only a few digits accurate far in the tail at means ~10^7, so the
    references stop at moderate means; the binned fits cover the large ones.)
    """
    sd = math.sqrt(mu)
    support = np.arange(max(0, int(mu - 30 * sd - 30)), int(mu + 30 * sd + 30))
    expected = _invert(stats.poisson.cdf(support, mu), support, US)
    got = sample_poisson(mu, len(US), rng=_replay_words(_words_for(US)))
    assert got.tolist() == expected


@pytest.mark.parametrize("variance", [0.7, 30.25, 9.367e7])
def test_gaussian_table_inverts_the_independent_cdf(variance: float) -> None:
    half = int(30 * math.sqrt(variance)) + 30
    support = np.arange(-half, half + 1)
    weights = np.exp(-(support.astype(np.float64) ** 2) / (2 * variance))
    cdf = np.cumsum(weights) / weights.sum()
    expected = _invert(cdf, support, US)
    got = sample_discrete_gaussian(variance, len(US), rng=_replay_words(_words_for(US)))
    assert got.tolist() == expected


@pytest.mark.parametrize("mu", [0.3, 7.5, 1234.5])
def test_skellam_table_inverts_the_independent_cdf(mu: float) -> None:
    half = int(40 * math.sqrt(2 * mu)) + 40
    support = np.arange(-half, half + 1)
    expected = _invert(stats.skellam.cdf(support, mu, mu), support, US)
    got = sample_skellam(mu, len(US), rng=_replay_words(_words_for(US)))
    assert got.tolist() == expected


def test_skellam_table_cdf_is_the_autocorrelation_of_the_poisson_table() -> None:
    """Brute force: the Kronecker-product weights equal the direct double sum."""
    mu = 4.5
    poisson = poisson_table(mu)
    p_cdf = np.concatenate(([0.0], poisson.hi.astype(np.float64) / 2.0**64, [1.0]))
    pmf = np.diff(p_cdf)
    direct = np.correlate(pmf, pmf, mode="full")  # k = -(n-1) .. n-1
    ks = np.arange(-(pmf.size - 1), pmf.size)
    table = skellam_table(mu)
    values = table.offset + np.arange(table.hi.size)
    cdf = np.cumsum(direct)[np.searchsorted(ks, values)]
    assert np.max(np.abs(table.hi.astype(np.float64) / 2.0**64 - cdf)) < 1e-13


def test_large_skellam_is_the_difference_of_two_poisson_table_draws() -> None:
    """Beyond the Skellam table's range: the first half of the draws minus the second."""
    mu = 1.0e9
    words = _words_for(US)
    got = sample_skellam(mu, 4, rng=_replay_words(words))
    both = poisson_table(mu).sample(8, BitSource(_replay_words(words)))
    assert got.tolist() == (both[:4] - both[4:]).tolist()
    assert sampling_distance("skellam", mu) == 2 * 2.0**-100


def test_seeded_known_answer_vectors() -> None:
    """Regression vectors: a change of algorithm or of bit consumption must be deliberate."""

    def seeded(seed: int) -> Callable[[int], bytes]:
        return random.Random(seed).randbytes

    assert sample_skellam(4.5, 8, rng=seeded(1)).tolist() == [1, 3, -5, -4, 2, 0, -1, -2]
    assert sample_skellam(4.5, 8, rng=seeded(1), exact=True).tolist() == [7, 5, -5, 1, 3, 3, 0, 1]
    assert sample_discrete_gaussian(2.25, 8, rng=seeded(2)).tolist() == [2, 2, -2, -1, -1, 1, 2, -1]
    assert sample_discrete_gaussian(2.25, 8, rng=seeded(2), exact=True).tolist() == [
        -2, 0, 2, -1, 1, 1, 0, 0,
    ]  # fmt: skip
    assert sample_discrete_laplace(3, 8, rng=seeded(3)).tolist() == [-1, 6, 0, -2, 1, -1, -2, 1]
    assert sample_poisson(1e6, 4, rng=seeded(4)).tolist() == [999485, 1000586, 999947, 998660]


def test_tables_are_within_their_proven_distance() -> None:
    for table in (
        poisson_table(0.3),
        poisson_table(4.684e7),
        skellam_table(2.5),
        skellam_table(4.684e7),
        gaussian_table(0.7),
        gaussian_table(9.367e7),
    ):
        assert 0 < table.distance <= TABLE_DISTANCE == 2.0**-100


def test_table_cdf_matches_the_independent_cdf() -> None:
    mu = 1234.5
    table = poisson_table(mu)
    ks = table.offset + np.arange(table.hi.size)
    approx = table.hi.astype(np.float64) / 2.0**64
    assert np.max(np.abs(approx - stats.poisson.cdf(ks, mu))) < 1e-12


@pytest.mark.parametrize("variance", [0.7, 4.0, 30.25, 2.5e5])
def test_exact_discrete_gaussian_fits(seeded: Seeded, variance: float) -> None:
    x = sample_discrete_gaussian(variance, 30_000, rng=seeded(21), exact=True)
    half = int(12 * math.sqrt(variance)) + 5
    support = np.arange(-half, half + 1)
    pmf = np.exp(-(support.astype(np.float64) ** 2) / (2 * variance))
    cdf = np.cumsum(pmf) / pmf.sum()
    # About 40 equiprobable bins of the exact CDF (bin j holds values up to its bound).
    bounds = np.unique(np.searchsorted(cdf, np.linspace(0, 1, 41)[1:-1]))
    probs = np.diff(np.concatenate(([0.0], cdf[bounds], [1.0])))
    counts = np.bincount(np.searchsorted(support[bounds], x, side="left"), minlength=probs.size)
    assert stats.chisquare(counts, probs * x.size).pvalue > 1e-3


@pytest.mark.parametrize("mu", [0.3, 3.7, 40.0, 3.0e6])
def test_exact_poisson_fits(seeded: Seeded, mu: float) -> None:
    n = 30_000
    x = sample_poisson(mu, n, rng=seeded(22), exact=True)
    support = np.arange(0, int(mu + 12 * math.sqrt(mu) + 12))
    cdf = stats.poisson.cdf(support, mu)
    bounds = np.unique(np.searchsorted(cdf, np.linspace(0, 1, 41)[1:-1]))
    probs = np.diff(np.concatenate(([0.0], cdf[bounds], [1.0])))
    counts = np.bincount(np.searchsorted(support[bounds], x, side="left"), minlength=probs.size)
    assert stats.chisquare(counts, probs * n).pvalue > 1e-3


def test_exact_skellam_fits(seeded: Seeded) -> None:
    mu = 12.5
    x = sample_skellam(mu, 30_000, rng=seeded(23), exact=True)
    support = np.arange(-80, 81)
    pmf = stats.skellam.pmf(support, mu, mu)
    counts = np.array([np.count_nonzero(x == k) for k in support])
    keep = pmf * x.size >= 10
    observed = np.append(counts[keep], x.size - counts[keep].sum())
    expected = np.append(pmf[keep] * x.size, x.size * (1 - pmf[keep].sum()))
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_parameters_beyond_the_table_use_the_exact_sampler(seeded: Seeded) -> None:
    mu = 4.0e9  # support of ~1.6M values: no table
    assert sampling_distance("skellam", mu) == 0.0
    assert sampling_distance("ddg", 2 * mu) == 0.0
    x = sample_poisson(mu, 20_000, rng=seeded(24))
    assert abs(x.mean() - mu) < 5 * math.sqrt(mu / x.size)
    assert abs(x.var() / mu - 1) < 5 * math.sqrt(2 / x.size)


def test_geometric_exact_path_settles_a_uniform_at_a_boundary() -> None:
    """U agrees with exp(-m/s) on 53 bits: the float path cannot decide floor(-s ln U)."""
    s, m = 3, 7
    with localcontext() as ctx:
        ctx.prec = 60
        boundary = (Decimal(-m) / s).exp()
        top = int(boundary * (1 << 53))
        for low in (0, 2**64 - 1):
            u = Decimal((top << 64) | low) / Decimal(2) ** 117
            expected = math.floor(-s * u.ln())
            source = BitSource(_replay_words([top << 11, low]))
            got, _ = floor_neg_log_uniform(s, 1, source)
            assert int(got[0]) == expected
        # The two ends of the revealed interval straddle the boundary: both answers occur.
        assert {
            int(floor_neg_log_uniform(s, 1, BitSource(_replay_words([top << 11, low])))[0][0])
            for low in (0, 2**64 - 1)
        } == {m - 1, m}


def test_geometric_exact_path_handles_a_zero_prefix() -> None:
    """The first 53 bits are all zero: ln U is unbounded until more bits are revealed."""
    s, low = 5, 123_456_789_012_345
    with localcontext() as ctx:
        ctx.prec = 80
        u = Decimal(low) / Decimal(2) ** 117
        expected = math.floor(-s * u.ln())
    got, _ = floor_neg_log_uniform(s, 1, BitSource(_replay_words([0, low])))
    assert int(got[0]) == expected


def test_os_seeded_stream_is_fresh_hidden_and_sized() -> None:
    a, b = OsSeededStream(), OsSeededStream()
    assert "hidden" in repr(a)
    assert len(a(3_000_001)) == 3_000_001
    assert a(64) != b(64)
    assert a(64) != a(64)


def test_delta_with_sampling_error() -> None:
    assert delta_with_sampling_error(delta=1e-5, epsilon=2.0, distance=0.0) == 1e-5
    assert delta_with_sampling_error(delta=1e-5, epsilon=2.0, distance=1e-7) == pytest.approx(
        1e-5 + (1 + math.exp(2.0)) * 1e-7
    )
    assert delta_with_sampling_error(delta=1e-5, epsilon=800.0, distance=1e-30) == 1.0
    with pytest.raises(InvalidPrivacyParameters, match="distance"):
        delta_with_sampling_error(delta=1e-5, epsilon=1.0, distance=-1.0)


@pytest.mark.parametrize("mechanism", ["skellam", "ddg"])
def test_plan_adds_the_sampling_distance_to_delta(mechanism: str) -> None:
    config = DistributedDPConfig(
        mechanism=mechanism,
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        rounds=10,
        n_silos=10,
        bits=20,
    )
    p = plan(config, 1 << 12)
    per_draw = sampling_distance(mechanism, p.share_parameter)
    assert per_draw == 2.0**-100
    assert p.sampling_distance_per_round == 10 * p.padded_dimension * per_draw
    guarantee = p.silo_level_epsilon(rounds=3)
    assert guarantee.delta == delta_with_sampling_error(
        delta=config.target_delta,
        epsilon=guarantee.epsilon,
        distance=3 * p.sampling_distance_per_round,
    )
    assert guarantee.delta >= config.target_delta


def test_sampling_distance_rejects_unknown_mechanisms() -> None:
    with pytest.raises(ValueError, match="mechanism"):
        sampling_distance("laplace", 1.0)


def test_rotate_scaled_is_the_scaled_randomized_hadamard_of_the_padded_vector() -> None:
    from dp.distributed.rotation import rotate_scaled

    seed = bytes(range(32))
    x = np.random.default_rng(5).normal(size=1000)
    padded = np.zeros(1024)
    padded[:1000] = x
    expected = 3.5 * randomized_hadamard(padded, seed)
    assert np.allclose(rotate_scaled(x, 1024, seed, 3.5), expected, rtol=0, atol=1e-12)
    for d in (1, 2, 8, 16, 32, 4096):  # every mix of 16-blocks and a remainder
        v = np.random.default_rng(d).normal(size=d)
        full = 2.0 * randomized_hadamard(v, seed)
        assert np.allclose(rotate_scaled(v, d, seed, 2.0), full, rtol=0, atol=1e-12)
        assert np.isclose(np.linalg.norm(full), 2.0 * np.linalg.norm(v))


def test_encode_clips_huge_finite_updates_and_rejects_non_finite_ones() -> None:
    config = DistributedDPConfig(l2_norm_clip=1.0, noise_multiplier=1.0, rounds=1, n_silos=3)
    p = plan(config, 64)
    seed = bytes(32)
    huge = np.full(64, 1e200)
    assert encode(huge, p, rotation_seed=seed).shape == (p.padded_dimension,)
    for bad in (np.inf, np.nan):
        x = np.zeros(64)
        x[3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            encode(x, p, rotation_seed=seed)


def _reference_draw(table: CdtTable, h: int, low: int) -> int:
    """``offset + #{k: F_k <= U}`` for ``U = h 2^64 + low``, by brute force in Python integers."""
    u = (h << 64) | low
    entries = zip(table.hi.tolist(), table.lo.tolist(), strict=True)
    return table.offset + sum((a << 64) | b <= u for a, b in entries)


@pytest.mark.parametrize(
    "build",
    [lambda: gaussian_table(4.0), lambda: poisson_table(60.0), lambda: skellam_table(9.5)],
)
def test_table_lookup_matches_brute_force_on_ties_crowded_and_random_words(
    build: Callable[[], CdtTable],
) -> None:
    table = build()
    his, los = table.hi.tolist(), table.lo.tolist()
    mid = len(his) // 2
    low_mask = (1 << 64) - 1
    cases = [
        (his[mid], max(los[mid] - 1, 0)),  # top word ties an entry, U just below it
        (his[mid], los[mid]),  # ... U equal to it
        (his[mid], low_mask),  # ... U above it
        (his[0] + 1, 0),  # the crowded first bucket (the left tail)
        (his[-1], low_mask),  # the crowded last bucket (the right tail)
        (0, 0),
        (low_mask, low_mask),
    ]
    rng = random.Random(7)
    cases += [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(200)]
    for h, low in cases:
        source = BitSource(_replay_words([h, low]))
        value = int(table.sample(1, source)[0])
        assert value == _reference_draw(table, h, low), (h, low)
