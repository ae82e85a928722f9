"""Paillier-mode roles end to end: exact sums, dropouts, and a lying coordinator (decryption-oracle attacks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import (
    DecryptionError,
    InvalidParameters,
    ProtocolError,
    ProtocolViolation,
    RoundAborted,
)
from secagg.hazmat.keys import public_bytes, sign
from secagg.hazmat.paillier import (
    KeyShare,
    ObfuscatorPool,
    ThresholdPublicKey,
    ciphertexts_to_bytes,
)
from secagg.paillier import (
    AggregatorStage,
    CiphertextChunk,
    DecrypterStage,
    DecryptionRequest,
    InMemoryDecryptionHistory,
    PaillierAggregator,
    PaillierContributor,
    PaillierRoundConfig,
    PartialDecrypter,
    SignedCommitment,
    SpotCheckResponse,
    check_trust_parameters,
    combine_partials,
    open_key_share,
    run_key_ceremony,
)

from .conftest import TEST_KEY_BITS, seeded_rng

FEDERATION = "fed-test"
Submission = tuple[tuple[CiphertextChunk, ...], SignedCommitment]
SILOS = [f"silo-{i}" for i in range(1, 6)]


@dataclass(frozen=True)
class Consortium:
    public_key: ThresholdPublicKey
    shares: dict[str, KeyShare]


@pytest.fixture(scope="module")
def consortium() -> Consortium:
    """A 3-of-5 key from the real ceremony: dealt, sealed to each silo, opened by each silo."""
    x25519 = {s: X25519PrivateKey.from_private_bytes(seeded_rng(f"x-{s}")(32)) for s in SILOS}
    result = run_key_ceremony(
        federation_id=FEDERATION,
        threshold=3,
        recipients={s: public_bytes(k) for s, k in x25519.items()},
        key_bits=TEST_KEY_BITS,
        rng=seeded_rng("ceremony"),
        insecure_test_key_size=True,
    )
    assert result.indices == {s: i for i, s in enumerate(SILOS, start=1)}
    shares = {
        s: open_key_share(
            result.sealed_shares[s],
            x25519[s],
            federation_id=FEDERATION,
            public_key=result.public_key,
        )
        for s in SILOS
    }
    with pytest.raises(DecryptionError):  # silo-2 cannot open silo-1's share
        open_key_share(
            result.sealed_shares["silo-1"],
            x25519["silo-2"],
            federation_id=FEDERATION,
            public_key=result.public_key,
        )
    return Consortium(public_key=result.public_key, shares=shares)


def make_config(round_number: int = 1, **overrides: int) -> PaillierRoundConfig:
    params: dict[str, int] = {
        "vector_length": 100,
        "value_bits": 12,
        "max_contributors": 5,
        "min_cohort": 3,
        "spot_checks": 4,
        "chunk_ciphertexts": 1,
    }
    params.update(overrides)
    return PaillierRoundConfig(
        federation_id=FEDERATION,
        round_number=round_number,
        session_id=bytes([round_number]) * 32,
        **params,
    )


def contribute(
    consortium: Consortium,
    config: PaillierRoundConfig,
    roster_keys: dict[str, Ed25519PrivateKey],
    silo: str,
    values: np.ndarray,
) -> tuple[tuple[CiphertextChunk, ...], SignedCommitment]:
    pool = ObfuscatorPool(
        consortium.public_key, rng=seeded_rng(f"pool-{silo}-{config.round_number}")
    )
    contributor = PaillierContributor(
        silo_id=silo,
        signing_key=roster_keys[silo],
        public_key=consortium.public_key,
        config=config,
        pool=pool,
    )
    return contributor.encrypt_update(values)


def decrypter(
    consortium: Consortium,
    config: PaillierRoundConfig,
    roster: dict[str, bytes],
    silo: str,
    history: InMemoryDecryptionHistory | None = None,
) -> PartialDecrypter:
    return PartialDecrypter(
        silo_id=silo,
        share=consortium.shares[silo],
        public_key=consortium.public_key,
        config=config,
        roster=roster,
        history=history if history is not None else InMemoryDecryptionHistory(),
        rng=seeded_rng(f"decrypter-{silo}-{config.round_number}"),
    )


def run_round(
    consortium: Consortium,
    config: PaillierRoundConfig,
    roster: dict[str, bytes],
    roster_keys: dict[str, Ed25519PrivateKey],
    updates: dict[str, np.ndarray],
    decrypters: list[str],
) -> np.ndarray:
    aggregator = PaillierAggregator(public_key=consortium.public_key, config=config, roster=roster)
    for silo, values in updates.items():
        chunks, commitment = contribute(consortium, config, roster_keys, silo, values)
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    request = aggregator.decryption_request()
    partials = []
    for silo in decrypters:
        d = decrypter(consortium, config, roster, silo)
        partials.append(d.partially_decrypt(aggregator.open_spot_checks(d.challenge(request))))
    return aggregator.finish(partials)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(3, 5),
    length=st.sampled_from([1, 2, 41, 42, 43, 85, 100]),
    value_bits=st.integers(2, 24),
    extreme=st.sampled_from(["random", "max", "min", "alternate"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_aggregate_is_the_exact_integer_sum(
    consortium: Consortium,
    roster: dict[str, bytes],
    roster_keys: dict[str, Ed25519PrivateKey],
    n: int,
    length: int,
    value_bits: int,
    extreme: str,
    seed: int,
) -> None:
    config = make_config(vector_length=length, value_bits=value_bits, max_contributors=n)
    bound = (1 << (value_bits - 1)) - 1
    gen = np.random.default_rng(seed)
    updates = {s: gen.integers(-bound, bound + 1, size=length) for s in SILOS[:n]}
    if extreme == "max":
        updates = {s: np.full(length, bound) for s in updates}
    elif extreme == "min":
        updates = {s: np.full(length, -bound) for s in updates}
    elif extreme == "alternate":
        updates = {s: np.where(np.arange(length) % 2 == 0, bound, -bound) for s in updates}
    total = run_round(consortium, config, roster, roster_keys, updates, decrypters=SILOS[-3:])
    np.testing.assert_array_equal(total, sum(updates.values()))


def test_a_silo_that_never_submits_or_stops_midway_does_not_block_the_round(
    consortium: Consortium, roster: dict[str, bytes], roster_keys: dict[str, Ed25519PrivateKey]
) -> None:
    config = make_config()
    gen = np.random.default_rng(7)
    updates = {s: gen.integers(-2047, 2048, size=100) for s in SILOS}
    aggregator = PaillierAggregator(public_key=consortium.public_key, config=config, roster=roster)
    for silo in SILOS[:3]:
        chunks, commitment = contribute(consortium, config, roster_keys, silo, updates[silo])
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    # silo-4 commits and streams half its chunks, then vanishes; silo-5 never shows up.
    chunks, commitment = contribute(consortium, config, roster_keys, "silo-4", updates["silo-4"])
    aggregator.accept_commitment(commitment)
    for chunk in chunks[: len(chunks) // 2]:
        aggregator.accept_chunk(chunk)
    request = aggregator.decryption_request()
    assert [c.silo_id for c in request.contributions] == SILOS[:3]
    partials = []
    for silo in ("silo-1", "silo-4", "silo-5"):  # key holders need not be contributors
        d = decrypter(consortium, config, roster, silo)
        partials.append(d.partially_decrypt(aggregator.open_spot_checks(d.challenge(request))))
    np.testing.assert_array_equal(aggregator.finish(partials), sum(updates[s] for s in SILOS[:3]))
    assert aggregator.stage is AggregatorStage.DONE


def test_round_aborts_below_min_cohort(
    consortium: Consortium, roster: dict[str, bytes], roster_keys: dict[str, Ed25519PrivateKey]
) -> None:
    config = make_config()
    aggregator = PaillierAggregator(public_key=consortium.public_key, config=config, roster=roster)
    for silo in SILOS[:2]:
        chunks, commitment = contribute(
            consortium, config, roster_keys, silo, np.zeros(100, dtype=np.int64)
        )
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    with pytest.raises(RoundAborted, match="min_cohort"):
        aggregator.decryption_request()


def test_combiner_needs_t_valid_partials(
    consortium: Consortium, roster: dict[str, bytes], roster_keys: dict[str, Ed25519PrivateKey]
) -> None:
    config = make_config()
    aggregator = PaillierAggregator(public_key=consortium.public_key, config=config, roster=roster)
    for silo in SILOS[:3]:
        chunks, commitment = contribute(
            consortium, config, roster_keys, silo, np.ones(100, dtype=np.int64)
        )
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    request = aggregator.decryption_request()
    partials = []
    for silo in SILOS[:3]:
        d = decrypter(consortium, config, roster, silo)
        partials.append(d.partially_decrypt(aggregator.open_spot_checks(d.challenge(request))))
    with pytest.raises(RoundAborted):
        combine_partials(consortium.public_key, config, request, partials[:2])
    bad = replace(
        partials[0], partial=replace(partials[0].partial, response=partials[0].partial.response + 1)
    )
    with pytest.raises(RoundAborted, match="invalid"):
        combine_partials(consortium.public_key, config, request, [bad, *partials[1:]])
    np.testing.assert_array_equal(aggregator.finish(partials), np.full(100, 3))


# ------------------------------------------------------------------------------------------------------------
# The lying coordinator


HonestRound = tuple[PaillierRoundConfig, PaillierAggregator, dict[str, Submission]]


@pytest.fixture
def honest_round(
    consortium: Consortium, roster: dict[str, bytes], roster_keys: dict[str, Ed25519PrivateKey]
) -> tuple[
    PaillierRoundConfig,
    PaillierAggregator,
    dict[str, tuple[tuple[CiphertextChunk, ...], SignedCommitment]],
]:
    config = make_config(round_number=9)
    gen = np.random.default_rng(9)
    aggregator = PaillierAggregator(public_key=consortium.public_key, config=config, roster=roster)
    submissions = {}
    for silo in SILOS[:3]:
        chunks, commitment = contribute(
            consortium, config, roster_keys, silo, gen.integers(-2047, 2048, size=100)
        )
        submissions[silo] = (chunks, commitment)
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    return config, aggregator, submissions


def test_request_to_decrypt_a_single_silos_ciphertext_is_refused(
    consortium: Consortium, roster: dict[str, bytes], honest_round: HonestRound
) -> None:
    config, aggregator, submissions = honest_round
    request = aggregator.decryption_request()
    victim_chunks, victim_commitment = submissions["silo-1"]
    victim = b"".join(c.data for c in victim_chunks)
    # (a) honestly labelled: one contribution is below min_cohort.
    alone = DecryptionRequest(
        context=request.context, aggregate=victim, contributions=(victim_commitment,)
    )
    with pytest.raises(ProtocolViolation, match="min_cohort"):
        decrypter(consortium, config, roster, "silo-4").challenge(alone)
    # (b) disguised: the real contributor list, but silo-1's ciphertexts in place of the aggregate.
    disguised = replace(request, aggregate=victim)
    d = decrypter(consortium, config, roster, "silo-4")
    challenge = d.challenge(disguised)
    response = aggregator.open_spot_checks(replace(challenge, request_digest=request.digest()))
    with pytest.raises(ProtocolViolation):
        d.partially_decrypt(replace(response, request_digest=challenge.request_digest))
    assert d.stage is DecrypterStage.AWAITING_OPENINGS  # nothing was decrypted


def test_forged_replayed_or_duplicated_commitments_are_refused(
    consortium: Consortium,
    roster: dict[str, bytes],
    roster_keys: dict[str, Ed25519PrivateKey],
    honest_round: HonestRound,
) -> None:
    config, aggregator, _submissions = honest_round
    request = aggregator.decryption_request()
    first = request.contributions[0]
    outsider = Ed25519PrivateKey.from_private_bytes(seeded_rng("outsider")(32))
    forged_by_outsider = replace(
        first,
        silo_id="silo-4",
        signature=sign(outsider, replace(first, silo_id="silo-4").signed_message()),
    )
    relabelled = replace(first, silo_id="silo-4")  # silo-1's signature under silo-4's name
    other_round = make_config(round_number=10)
    old_round = replace(first, context=other_round.context(consortium.public_key))
    duplicate = replace(
        first,
        silo_id="silo-4",
        signature=sign(roster_keys["silo-4"], replace(first, silo_id="silo-4").signed_message()),
    )
    unknown = replace(first, silo_id="mallory")
    cases: list[tuple[tuple[SignedCommitment, ...], str]] = [
        ((*request.contributions, forged_by_outsider), "signature"),
        ((*request.contributions, relabelled), "signature"),
        ((*request.contributions[1:], old_round), "another round"),
        ((*request.contributions, duplicate), "same ciphertexts"),
        ((*request.contributions, unknown), "roster"),
        ((*request.contributions, request.contributions[0]), "twice"),
    ]
    for contributions, reason in cases:
        with pytest.raises(ProtocolViolation, match=reason):
            decrypter(consortium, config, roster, "silo-5").challenge(
                replace(request, contributions=contributions)
            )
    # The aggregator refuses the same forgeries at the door.
    fresh = PaillierAggregator(public_key=consortium.public_key, config=config, roster=roster)
    for bad in (forged_by_outsider, relabelled, old_round, unknown):
        with pytest.raises(ProtocolViolation):
            fresh.accept_commitment(bad)


def test_openings_that_do_not_match_are_refused(
    consortium: Consortium, roster: dict[str, bytes], honest_round: HonestRound
) -> None:
    config, aggregator, _ = honest_round
    request = aggregator.decryption_request()
    pk = consortium.public_key
    nsq = pk.nsquare

    def attempt(tamper: Callable[[SpotCheckResponse], SpotCheckResponse]) -> None:
        d = decrypter(consortium, config, roster, "silo-4")
        response = aggregator.open_spot_checks(d.challenge(request))
        with pytest.raises(ProtocolViolation):
            d.partially_decrypt(tamper(response))

    def swap_ciphertext(response: SpotCheckResponse) -> SpotCheckResponse:
        o = response.openings[0]
        forged = (int.from_bytes(o.ciphertext, "big") * (pk.n + 1)) % nsq
        return replace(
            response,
            openings=(
                replace(o, ciphertext=ciphertexts_to_bytes(pk, [forged])),
                *response.openings[1:],
            ),
        )

    attempt(swap_ciphertext)  # the inclusion proof no longer leads to the signed root
    attempt(lambda r: replace(r, openings=r.openings[1:]))  # an opening is missing
    attempt(lambda r: replace(r, openings=(*r.openings, r.openings[0])))  # repeated
    attempt(
        lambda r: replace(
            r, openings=(replace(r.openings[0], proof=r.openings[0].proof[:-1]), *r.openings[1:])
        )
    )
    attempt(lambda r: replace(r, request_digest=b"\x00" * 32))


def test_aggregate_tampered_at_one_position_is_caught_at_that_position(
    consortium: Consortium, roster: dict[str, bytes], honest_round: HonestRound
) -> None:
    config, aggregator, _ = honest_round
    request = aggregator.decryption_request()
    pk = consortium.public_key
    d = decrypter(consortium, config, roster, "silo-4")
    # Learn which positions this decrypter draws, then build a fresh decrypter with the same rng that is shown
    # an aggregate tampered exactly there (the coordinator cannot know them in advance; here we force a hit).
    probe = d.challenge(request)
    width = pk.ciphertext_bytes
    position = probe.positions[0]
    aggregate = bytearray(request.aggregate)
    original = int.from_bytes(aggregate[position * width : (position + 1) * width], "big")
    aggregate[position * width : (position + 1) * width] = ciphertexts_to_bytes(
        pk, [original * (pk.n + 1) % pk.nsquare]
    )
    tampered = replace(request, aggregate=bytes(aggregate))
    d2 = decrypter(consortium, config, roster, "silo-4")
    challenge = d2.challenge(tampered)
    assert position in challenge.positions
    honest_openings = aggregator.open_spot_checks(probe)
    with pytest.raises(ProtocolViolation, match="product"):
        d2.partially_decrypt(replace(honest_openings, request_digest=challenge.request_digest))


def test_one_request_per_round_and_no_fishing_for_new_positions(
    consortium: Consortium, roster: dict[str, bytes], honest_round: HonestRound
) -> None:
    config, aggregator, submissions = honest_round
    request = aggregator.decryption_request()
    history = InMemoryDecryptionHistory()
    first = decrypter(consortium, config, roster, "silo-4", history)
    challenge = first.challenge(request)
    message = first.partially_decrypt(aggregator.open_spot_checks(challenge))
    assert message.partial.index == consortium.shares["silo-4"].index
    # Same request again (e.g. a retry): same positions, never fresh ones.
    again = PartialDecrypter(
        silo_id="silo-4",
        share=consortium.shares["silo-4"],
        public_key=consortium.public_key,
        config=config,
        roster=roster,
        history=history,
        rng=seeded_rng("another draw"),
    )
    assert again.challenge(request).positions == challenge.positions
    # A different aggregate for the same round is refused, even with valid commitments.
    other = replace(
        request,
        contributions=request.contributions[:3],
        aggregate=b"".join(c.data for c in submissions["silo-1"][0]),
    )
    with pytest.raises(ProtocolViolation, match="already"):
        decrypter(consortium, config, roster, "silo-4", history).challenge(other)


def test_contribution_not_matching_its_commitment_is_dropped_and_rolled_back(
    consortium: Consortium, roster: dict[str, bytes], roster_keys: dict[str, Ed25519PrivateKey]
) -> None:
    config = make_config(round_number=3)
    pk = consortium.public_key
    aggregator = PaillierAggregator(public_key=pk, config=config, roster=roster)
    updates = {s: np.full(100, i) for i, s in enumerate(SILOS, start=1)}
    for silo in SILOS[:3]:
        chunks, commitment = contribute(consortium, config, roster_keys, silo, updates[silo])
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    # silo-4 commits to one vector and streams another: caught at the last chunk, divided back out.
    _, commitment = contribute(consortium, config, roster_keys, "silo-4", updates["silo-4"])
    other_chunks, _ = contribute(
        consortium, replace(config, round_number=3), roster_keys, "silo-5", updates["silo-5"]
    )
    aggregator.accept_commitment(commitment)
    for chunk in other_chunks[:-1]:
        aggregator.accept_chunk(replace(chunk, silo_id="silo-4"))
    with pytest.raises(ProtocolViolation, match="commitment"):
        aggregator.accept_chunk(replace(other_chunks[-1], silo_id="silo-4"))
    with pytest.raises(ProtocolViolation, match="already"):  # and cannot try again this round
        aggregator.accept_commitment(commitment)
    # Out-of-order and malformed chunks are refused too.
    chunks5, commitment5 = contribute(consortium, config, roster_keys, "silo-5", updates["silo-5"])
    aggregator.accept_commitment(commitment5)
    with pytest.raises(ProtocolError, match="order"):
        aggregator.accept_chunk(chunks5[1])
    request = aggregator.decryption_request()
    partials = []
    for silo in SILOS[:3]:
        d = decrypter(consortium, config, roster, silo)
        partials.append(d.partially_decrypt(aggregator.open_spot_checks(d.challenge(request))))
    np.testing.assert_array_equal(aggregator.finish(partials), np.full(100, 1 + 2 + 3))


def test_illegal_transitions_raise(
    consortium: Consortium,
    roster: dict[str, bytes],
    roster_keys: dict[str, Ed25519PrivateKey],
    honest_round: HonestRound,
) -> None:
    config, aggregator, submissions = honest_round
    pool = ObfuscatorPool(consortium.public_key, rng=seeded_rng("t"))
    contributor = PaillierContributor(
        silo_id="silo-4",
        signing_key=roster_keys["silo-4"],
        public_key=consortium.public_key,
        config=config,
        pool=pool,
    )
    contributor.encrypt_update(np.zeros(100, dtype=np.int64))
    with pytest.raises(ProtocolError):
        contributor.encrypt_update(np.zeros(100, dtype=np.int64))
    with pytest.raises(ProtocolError):
        aggregator.finish([])
    request = aggregator.decryption_request()
    with pytest.raises(ProtocolError):
        aggregator.accept_commitment(submissions["silo-1"][1])
    with pytest.raises(ProtocolError):
        aggregator.decryption_request()
    d = decrypter(consortium, config, roster, "silo-5")
    with pytest.raises(ProtocolError):
        d.partially_decrypt(SpotCheckResponse(request_digest=request.digest(), openings=()))
    d.challenge(request)
    with pytest.raises(ProtocolError):
        d.challenge(request)


def test_round_config_validation() -> None:
    with pytest.raises(InvalidParameters):
        make_config(min_cohort=1)
    with pytest.raises(InvalidParameters):
        make_config(max_contributors=2)
    with pytest.raises(InvalidParameters):
        make_config(vector_length=0)
    with pytest.raises(InvalidParameters):
        PaillierRoundConfig(
            federation_id=FEDERATION,
            round_number=1,
            session_id=b"short",
            vector_length=4,
            value_bits=8,
            max_contributors=3,
            min_cohort=3,
        )


# ------------------------------------------------------------------------------------------------------------
# The ceremony's trust parameters (DESIGN 5: t > c and min_cohort - c >= 2)


@pytest.mark.parametrize(
    ("threshold", "collusion", "min_cohort", "refusal"),
    [
        (2, 2, 4, "threshold t=2 must exceed collusion c=2"),  # t <= c
        (3, 4, 5, "threshold t=3 must exceed collusion c=4"),
        (3, 2, 3, "min_cohort 3 - collusion 2 must be >= 2"),  # min_cohort - c < 2
        (3, 1, 2, "min_cohort 2 - collusion 1 must be >= 2"),
        (3, -1, 3, "collusion must be >= 0"),
        (3, 0, 6, "min_cohort 6 exceeds the 5 key holders"),
    ],
)
def test_ceremony_refuses_a_threshold_or_cohort_the_colluders_could_defeat(
    threshold: int, collusion: int, min_cohort: int, refusal: str
) -> None:
    recipients = {
        s: public_bytes(X25519PrivateKey.from_private_bytes(seeded_rng(f"trust-{s}")(32)))
        for s in SILOS
    }
    with pytest.raises(InvalidParameters, match=refusal) as refused:
        run_key_ceremony(
            federation_id=FEDERATION,
            threshold=threshold,
            recipients=recipients,
            collusion=collusion,
            min_cohort=min_cohort,
            key_bits=TEST_KEY_BITS,
            rng=seeded_rng("trust"),
            insecure_test_key_size=True,
        )
    assert "\n" not in str(refused.value)  # one line
    # The boundary cases are accepted: t = c + 1 and min_cohort = c + 2.
    check_trust_parameters(threshold=3, collusion=2, min_cohort=4, parties=5)
    check_trust_parameters(threshold=2, collusion=0, min_cohort=2)
