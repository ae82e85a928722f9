"""A malicious member silo in stage 5 (DESIGN 2 and 4.4): it reveals wrong Shamir shares.

Each attack is shown twice. Against the *unchecked* reconstruction (``unchecked_unmask`` in the harness: the first
t responses, nothing checked, which is what the server did before the seed commitment) it succeeds: a share
shifted by the inverse of the holder's public Lagrange coefficient moves the peer's reconstructed seed by exactly
1, still a valid seed, and the sum is noise; a random share makes the reconstruction fail with nobody named.
Against :meth:`SecAggServer.close_unmask` it fails: the holder is named with evidence that holds no secret, and
the round completes with the exact sum when t consistent holders remain, or aborts naming it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import AggregateResult, ProtocolViolation, RoundAborted, RoundConfig, UnmaskResponse
from secagg.hazmat import shamir
from secagg.masking.client import clamped_scalar
from secagg.masking.messages import seed_commitment
from tests.secagg.harness import (
    Federation,
    Transcript,
    first_t,
    garbage_share,
    lagrange_at_zero,
    make_config,
    make_federation,
    moved,
    ring_sum,
    run_to_consistency,
    seeded_rng,
    tampered,
    unchecked_unmask,
    unmask_responses,
)

P = shamir.PRIME
LENGTH = 64


@pytest.fixture
def fed() -> Federation:
    return make_federation(5)  # t = 3


@pytest.fixture
def config(fed: Federation) -> RoundConfig:
    return make_config(fed, length=LENGTH)


def exact_sum(tr: Transcript, survivors: tuple[str, ...]) -> npt.NDArray[np.uint32]:
    return ring_sum((tr.inputs[s] for s in survivors), LENGTH)


def unmask_with(tr: Transcript, responses: dict[str, UnmaskResponse]) -> AggregateResult:
    """Send every response to the real server and close stage 5."""
    for response in responses.values():
        tr.server.receive_unmask(response)
    return tr.server.close_unmask()


def inverse_lagrange(tr: Transcript, responders: list[str], holder: str) -> int:
    """The shift that moves the reconstruction from the first t responders by exactly +1."""
    xs = [tr.fed.roster.index(r) for r in first_t(tr, responders)]
    return pow(lagrange_at_zero(xs, tr.fed.roster.index(holder)), -1, P)


def reconstruct_first_t(
    tr: Transcript, responses: dict[str, UnmaskResponse], peer: str, kind: str
) -> bytes:
    """What the unchecked server reconstructs for ``peer`` (kind: "self-mask" or "mask-key")."""
    index = tr.fed.roster.index
    shares = {
        index(r): (
            responses[r].self_mask_shares if kind == "self-mask" else responses[r].mask_key_shares
        )[peer]
        for r in first_t(tr, responses)
    }
    return shamir.reconstruct(shares, threshold=tr.config.threshold)


def shifted(
    responses: dict[str, UnmaskResponse],
    holder: str,
    peer: str,
    delta: int,
    *,
    kind: str = "self-mask",
) -> dict[str, UnmaskResponse]:
    """A copy of ``responses`` in which ``holder``'s share of ``peer``'s secret moved by ``delta``."""
    r = responses[holder]
    if kind == "self-mask":
        lie = tampered(r, self_mask={peer: moved(r.self_mask_shares[peer], delta)})
    else:
        lie = tampered(r, mask_key={peer: moved(r.mask_key_shares[peer], delta)})
    return {**responses, holder: lie}


def assert_no_secret_in(text: str, responses: dict[str, UnmaskResponse]) -> None:
    for response in responses.values():
        for share in (*response.self_mask_shares.values(), *response.mask_key_shares.values()):
            assert share.hex() not in text and share.hex()[:16] not in text


# --- the self-mask path ------------------------------------------------------------------------------------------
def test_attack_a_lambda_inverse_shift_moves_the_unchecked_seed_by_one_and_garbles_the_sum(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config)
    request, responses = unmask_responses(tr)
    culprit, victim = fed.silos[0], fed.silos[3]  # the culprit is among the first t responders
    # the control works: on honest responses the unchecked path gives the exact sum
    assert np.array_equal(
        unchecked_unmask(tr, request, responses), exact_sum(tr, request.survivors)
    )

    evil = shifted(responses, culprit, victim, inverse_lagrange(tr, list(responses), culprit))
    honest_seed = reconstruct_first_t(tr, responses, victim, "self-mask")
    shifted_seed = reconstruct_first_t(tr, evil, victim, "self-mask")
    assert len(shifted_seed) == 32
    assert int.from_bytes(shifted_seed, "big") == int.from_bytes(honest_seed, "big") + 1
    garbled = unchecked_unmask(tr, request, evil)
    assert np.mean(garbled != exact_sum(tr, request.survivors)) > 0.9  # pure PRG noise
    # ... and what catches it: only the honest seed matches the victim's signed commitment
    committed = next(ad.seed_commitment for ad in tr.ads if ad.silo == victim)
    assert seed_commitment(config, victim, honest_seed) == committed
    assert seed_commitment(config, victim, shifted_seed) != committed


def test_attack_a_random_share_breaks_the_unchecked_reconstruction_and_names_nobody(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config)
    request, responses = unmask_responses(tr)
    culprit, victim = fed.silos[1], fed.silos[4]
    evil = {
        **responses,
        culprit: tampered(responses[culprit], self_mask={victim: garbage_share(seeded_rng(5))}),
    }
    # a uniformly random field element is not a 32-byte secret (except with probability 2^-265)
    with pytest.raises(ProtocolViolation, match="inconsistent") as info:
        unchecked_unmask(tr, request, evil)
    assert culprit not in str(info.value)


@pytest.mark.parametrize("corruption", ["lambda-shift", "garbage", "tiny-delta"])
@pytest.mark.parametrize("culprit_index", [0, 2, 4], ids=["first", "middle", "outside-first-t"])
def test_defence_the_lying_holder_is_named_and_the_round_completes_with_the_exact_sum(
    fed: Federation, config: RoundConfig, corruption: str, culprit_index: int
) -> None:
    tr = run_to_consistency(fed, config)
    request, responses = unmask_responses(tr)
    culprit, victim = fed.silos[culprit_index], fed.silos[3]
    share = responses[culprit].self_mask_shares[victim]
    bad = {
        "lambda-shift": moved(share, inverse_lagrange(tr, list(responses), culprit)),
        "garbage": garbage_share(seeded_rng(culprit_index)),
        "tiny-delta": moved(share, 1),
    }[corruption]
    responses[culprit] = tampered(responses[culprit], self_mask={victim: bad})

    result = unmask_with(tr, responses)

    assert np.array_equal(result.total, exact_sum(tr, request.survivors))
    assert result.survivors == request.survivors  # the culprit's own input still counts
    assert set(result.culprits) == {culprit}
    evidence = result.culprits[culprit]
    assert "round 0" in evidence and victim in evidence and "committed self-mask seed" in evidence
    assert "4 of 5 unmask responses agree" in evidence
    assert tr.server.culprits == result.culprits
    assert_no_secret_in(evidence, responses)


def test_a_holder_lying_about_several_peers_is_named_once_with_every_peer(
    fed: Federation, config: RoundConfig
) -> None:
    tr = run_to_consistency(fed, config)
    request, responses = unmask_responses(tr)
    culprit = fed.silos[2]
    rng = seeded_rng(9)
    responses[culprit] = tampered(
        responses[culprit],
        self_mask={peer: garbage_share(rng) for peer in fed.silos if peer != culprit},
    )
    result = unmask_with(tr, responses)
    assert np.array_equal(result.total, exact_sum(tr, request.survivors))
    assert set(result.culprits) == {culprit}
    assert all(peer in result.culprits[culprit] for peer in fed.silos if peer != culprit)


def test_honest_round_names_nobody(fed: Federation, config: RoundConfig) -> None:
    tr = run_to_consistency(fed, config)
    request, responses = unmask_responses(tr)
    result = unmask_with(tr, responses)
    assert np.array_equal(result.total, exact_sum(tr, request.survivors))
    assert dict(result.culprits) == {} and dict(tr.server.culprits) == {}


# --- the mask-key path (a dropped silo's key) -------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1, 128], ids=["plus-one", "onto-a-clamped-twin"])
def test_a_lying_mask_key_share_is_named_and_the_round_completes(
    fed: Federation, config: RoundConfig, shift: int
) -> None:
    gone = fed.silos[4]
    tr = run_to_consistency(fed, config, submit=fed.silos[:4])
    request, responses = unmask_responses(tr)
    assert request.dropped == (gone,)
    culprit = fed.silos[0]
    delta = shift * inverse_lagrange(tr, list(responses), culprit) % P
    evil = shifted(responses, culprit, gone, delta, kind="mask-key")
    honest_key = reconstruct_first_t(tr, responses, gone, "mask-key")
    moved_key = reconstruct_first_t(tr, evil, gone, "mask-key")
    assert honest_key == clamped_scalar(honest_key)  # the client shares the canonical scalar
    assert int.from_bytes(moved_key, "big") == int.from_bytes(honest_key, "big") + shift
    if shift == 128:
        # positive control: bit 7 of the last byte is clamped away, so the public key still matches and an
        # unchecked server (or one that checks only the public key) neither notices nor names anyone
        assert np.array_equal(unchecked_unmask(tr, request, evil), exact_sum(tr, request.survivors))
    else:
        garbled = unchecked_unmask(tr, request, evil)
        assert np.mean(garbled != exact_sum(tr, request.survivors)) > 0.9

    result = unmask_with(tr, evil)
    assert np.array_equal(result.total, exact_sum(tr, request.survivors))
    assert set(result.culprits) == {culprit}
    assert gone in result.culprits[culprit]
    assert "advertised mask key" in result.culprits[culprit]


# --- too few consistent holders: abort naming the culprits ------------------------------------------------------
def test_culprits_on_different_peers_leave_too_few_holders_and_the_round_aborts_naming_both() -> (
    None
):
    fed = make_federation(4)  # t = 3, and all four respond: one wrong holder per peer can be found
    config = make_config(fed, length=LENGTH)
    tr = run_to_consistency(fed, config)
    _, responses = unmask_responses(tr)
    a, b = fed.silos[0], fed.silos[1]
    responses = shifted(responses, a, fed.silos[2], 1)
    responses[b] = tampered(responses[b], self_mask={fed.silos[3]: garbage_share(seeded_rng(3))})
    with pytest.raises(RoundAborted) as info:
        unmask_with(tr, responses)
    reason = str(info.value)
    assert "culprits: silo-00, silo-01" in reason
    assert "only 2 consistent unmask responses remain; need 3" in reason
    assert set(tr.server.culprits) == {a, b}
    assert fed.silos[2] in tr.server.culprits[a] and fed.silos[3] in tr.server.culprits[b]
    assert_no_secret_in(reason + "".join(tr.server.culprits.values()), responses)


def test_with_exactly_t_responses_a_lie_is_detected_but_nobody_can_be_named() -> None:
    """No redundancy: any t shares fit a polynomial, so the commitment shows the seed is wrong, not who lied."""
    fed = make_federation(5)
    config = make_config(fed, length=LENGTH)
    tr = run_to_consistency(fed, config)
    _, responses = unmask_responses(tr)
    victim = fed.silos[4]
    three = shifted({s: responses[s] for s in fed.silos[:3]}, fed.silos[0], victim, 1)
    with pytest.raises(RoundAborted, match=f"committed self-mask seed of {victim}"):
        unmask_with(tr, three)
    assert dict(tr.server.culprits) == {}


def test_a_dealer_whose_shares_all_agree_on_another_seed_is_named(
    fed: Federation, config: RoundConfig
) -> None:
    """Every holder reveals a share of one other secret for the dealer: with t + 1 or more holders agreeing
    (and at most k - t liars) only the dealer can have lied. The dealer's seed is gone: the round aborts."""
    tr = run_to_consistency(fed, config)
    _, responses = unmask_responses(tr)
    dealer = fed.silos[2]
    index = fed.roster.index
    other = shamir.split(
        bytes(range(32)), threshold=3, xs=[index(s) for s in fed.silos], rng=seeded_rng(8)
    )
    for s in fed.silos:
        responses[s] = tampered(responses[s], self_mask={dealer: other[index(s)]})
    with pytest.raises(RoundAborted, match=f"culprits: {dealer}"):
        unmask_with(tr, responses)
    assert set(tr.server.culprits) == {dealer}
    assert "all 5 unmask responses agree on its self-mask seed" in tr.server.culprits[dealer]


# --- properties ---------------------------------------------------------------------------------------------------
# n = 7, t = 4; with everyone responding k = 7: k - t = 3 wrong holders leave t consistent ones, and
# floor((k - t + 1) / 2) = 2 are named exactly whatever they do (shamir.decode, Notes).
N, T = 7, 4
corruptions = st.sampled_from(["lambda-shift", "tiny-delta", "garbage", "negated", "zero"])


@pytest.fixture(scope="module")
def fed7() -> Federation:
    return make_federation(N)


def corrupt(
    tr: Transcript,
    responses: dict[str, UnmaskResponse],
    plan: dict[str, dict[str, str]],
    rng: random.Random,
) -> set[str]:
    """Apply ``plan`` (holder -> peer -> corruption); return the holders whose shares actually changed."""
    changed = set()
    for holder, peers in plan.items():
        replaced: dict[str, bytes] = {}
        for peer, how in peers.items():
            value = int.from_bytes(responses[holder].self_mask_shares[peer], "big")
            new = {
                "lambda-shift": (value + inverse_lagrange(tr, list(responses), holder)) % P,
                "tiny-delta": (value + rng.randint(1, 5)) % P,
                "garbage": rng.randrange(P),
                "negated": (-value) % P,
                "zero": 0,
            }[how]
            if new != value:
                replaced[peer] = new.to_bytes(shamir.SHARE_BYTES, "big")
        if replaced:
            changed.add(holder)
            responses[holder] = tampered(responses[holder], self_mask=replaced)
    return changed


def plans(
    silos: list[str], culprits: int, how: st.SearchStrategy[str] = corruptions
) -> st.SearchStrategy[dict[str, dict[str, str]]]:
    """Up to ``culprits`` holders, each corrupting its shares for a non-empty set of peers."""
    return st.lists(st.sampled_from(silos), max_size=culprits, unique=True).flatmap(
        lambda holders: st.fixed_dictionaries(
            {h: st.dictionaries(st.sampled_from(silos), how, min_size=1) for h in holders}
        )
    )


def round_at_unmask(fed: Federation, seed: int) -> tuple[Transcript, dict[str, UnmaskResponse]]:
    tr = run_to_consistency(fed, make_config(fed, length=8), seed=seed)
    _, responses = unmask_responses(tr)
    return tr, responses


@pytest.mark.parametrize(
    ("culprits", "how"),
    [
        # whatever they do, colluding or not: exact up to floor((k - t + 1) / 2) culprits
        (lambda k: (k - T + 1) // 2, corruptions),
        # wrong shares made independently (random field elements): exact for as many culprits as leave t
        # honest holders (a second fit through them would be a 2^-521 coincidence)
        (lambda k: k - T, st.just("garbage")),
    ],
    ids=["any-corruption-up-to-half-the-redundancy", "independent-garbage-up-to-k-minus-t"],
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_property_culprits_within_the_guarantee_are_named_exactly_and_the_sum_is_exact(
    fed7: Federation,
    culprits: Callable[[int], int],
    how: st.SearchStrategy[str],
    data: st.DataObject,
    seed: int,
) -> None:
    tr, responses = round_at_unmask(fed7, seed)
    plan = data.draw(plans(fed7.silos, culprits(len(responses)), how))
    changed = corrupt(tr, responses, plan, random.Random(seed))
    result = unmask_with(tr, responses)
    assert np.array_equal(result.total, ring_sum((tr.inputs[s] for s in result.survivors), 8))
    assert set(result.culprits) == changed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_property_any_corruption_by_any_number_of_holders_never_yields_a_wrong_sum(
    fed7: Federation, data: st.DataObject, seed: int
) -> None:
    """Any number of culprits, colluding or not: the round completes with the exact sum, or aborts."""
    tr, responses = round_at_unmask(fed7, seed)
    corrupt(tr, responses, data.draw(plans(fed7.silos, N)), random.Random(seed))
    reason = ""
    try:
        result = unmask_with(tr, responses)
    except RoundAborted as exc:
        reason = str(exc)
    else:
        assert np.array_equal(result.total, ring_sum((tr.inputs[s] for s in result.survivors), 8))
    assert not reason or "unmask failed" in reason


# --- the documented limit of naming ------------------------------------------------------------------------------
def collude(
    tr: Transcript,
    responses: dict[str, UnmaskResponse],
    culprits: list[str],
    roots: list[str],
    victim: str,
) -> None:
    """The culprits add d(x) = 7 x prod (x - x_h) over the ``roots`` holders to their shares of ``victim``'s
    seed: their shares and those of the roots then lie on f + d, a second polynomial with the same secret."""
    index = tr.fed.roster.index
    for culprit in culprits:
        x = index(culprit)
        d = 7 * x
        for h in roots:
            d = d * (x - index(h)) % P
        share = responses[culprit].self_mask_shares[victim]
        responses[culprit] = tampered(responses[culprit], self_mask={victim: moved(share, d)})


def test_limit_two_colluders_tying_with_the_truth_abort_the_round_and_frame_nobody() -> None:
    """n = 6, t = 4, k = 6: two colluders put their shares and two honest ones on f + d, four shares against
    the truth's four. Both fits have the committed secret; the server cannot tell who lied and names nobody."""
    fed = make_federation(6)
    tr, responses = round_at_unmask(fed, 1)
    silos = fed.silos
    collude(tr, responses, silos[:2], silos[2:4], victim=silos[5])
    with pytest.raises(RoundAborted, match="cannot be told"):
        unmask_with(tr, responses)
    assert dict(tr.server.culprits) == {}


def test_limit_three_colluders_of_seven_can_frame_two_honest_holders_but_not_change_the_sum(
    fed7: Federation,
) -> None:
    """Beyond floor((k - t + 1) / 2) = 2 liars the guarantee ends (shamir.decode, Notes): three colluders put
    five shares on f + d, against the truth's four, so the fewest-liars fit blames the two honest holders off
    it. The shares alone cannot tell the two situations apart; the sum is still exact. Per-share digests from the
    dealer would close this (not in this version)."""
    tr, responses = round_at_unmask(fed7, 2)
    silos = fed7.silos
    collude(tr, responses, silos[:3], silos[3:5], victim=silos[6])
    result = unmask_with(tr, responses)
    assert np.array_equal(result.total, ring_sum((tr.inputs[s] for s in result.survivors), 8))
    assert set(result.culprits) == {silos[5], silos[6]}


# --- cost bound -----------------------------------------------------------------------------------------------
def test_gao_decodes_up_to_its_radius_at_cross_silo_size_and_the_search_stays_in_its_budget() -> (
    None
):
    """n = 50, t = 26: 12 wrong shares (Gao's radius) are decoded without any search; 13 exceed it, and the
    search gives up after ``max_subsets`` t-subsets instead of trying all C(39, 13) of them."""
    t, xs = 26, list(range(1, 51))
    secret = bytes(range(32))
    honest = shamir.split(secret, threshold=t, xs=xs, rng=seeded_rng(1))
    rng = random.Random(2)
    shares = dict(honest)
    for x in xs[:12]:
        shares[x] = rng.randrange(P).to_bytes(shamir.SHARE_BYTES, "big")
    decoded = shamir.decode(shares, threshold=t, accept=lambda s: s == secret, max_subsets=0)
    assert decoded.secret == secret and decoded.errors == frozenset(xs[:12])
    assert (decoded.agreeing, decoded.subsets) == (38, 0)
    shares[xs[12]] = rng.randrange(P).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ProtocolViolation, match="within 100 subsets"):
        shamir.decode(shares, threshold=t, accept=lambda s: s == secret, max_subsets=100)
