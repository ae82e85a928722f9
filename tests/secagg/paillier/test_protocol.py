"""Paillier-mode roles end to end: exact sums, dropouts, and a lying coordinator (decryption-oracle attacks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import gmpy2
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
from secagg.hazmat.merkle import leaf_hash, merkle_root
from secagg.hazmat.paillier import (
    KeyShare,
    ObfuscatorMode,
    ObfuscatorPool,
    ThresholdPublicKey,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    encrypt_plaintexts,
    fold_ciphertexts,
    partial_decrypt,
    prove_plaintext_knowledge,
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
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckResponse,
    check_trust_parameters,
    combine_partials,
    open_key_share,
    run_key_ceremony,
)
from secagg.paillier.messages import knowledge_proof_context, knowledge_weights, proof_context

from .conftest import TEST_KEY_BITS, seeded_rng

FEDERATION = "fed-test"
Submission = tuple[tuple[CiphertextChunk, ...], SignedCommitment]
SILOS = [f"silo-{i}" for i in range(1, 6)]
# Every contributor made by `contribute`, by Merkle root: the honest silos that answer the decrypters' fold
# requests (the coordinator forwards them) for whatever aggregator their commitment went to.
CONTRIBUTORS: dict[bytes, PaillierContributor] = {}


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
        rng=seeded_rng(f"proofs-{silo}-{config.round_number}"),
    )
    chunks, commitment = contributor.encrypt_update(values)
    CONTRIBUTORS[commitment.merkle_root] = contributor
    return chunks, commitment


def opened(
    aggregator: PaillierAggregator, decrypter_id: str, challenge: SpotCheckChallenge
) -> SpotCheckResponse:
    """The coordinator's honest relay: record the challenge, collect every contributor's signed folds for the
    recorded seeds, then open the spot checks (with the folds for this challenge's seed)."""
    aggregator.record_challenge(decrypter_id, challenge)
    requests = aggregator.fold_requests()
    for commitment in aggregator.request.contributions:
        contributor = CONTRIBUTORS[commitment.merkle_root]
        aggregator.accept_folds(contributor.silo_id, contributor.answer_folds(requests))
    return aggregator.open_spot_checks(challenge)


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
        partials.append(d.partially_decrypt(opened(aggregator, d.silo_id, d.challenge(request))))
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
        partials.append(d.partially_decrypt(opened(aggregator, d.silo_id, d.challenge(request))))
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
        partials.append(d.partially_decrypt(opened(aggregator, d.silo_id, d.challenge(request))))
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
        # a copy under another name: its proof of plaintext knowledge is bound to the silo that made it
        ((*request.contributions, duplicate), "plaintext knowledge"),
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
        response = opened(aggregator, d.silo_id, d.challenge(request))
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
    honest_openings = opened(aggregator, "silo-4", probe)
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
    message = first.partially_decrypt(opened(aggregator, "silo-4", challenge))
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
        partials.append(d.partially_decrypt(opened(aggregator, d.silo_id, d.challenge(request))))
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
        d.partially_decrypt(
            SpotCheckResponse(request_digest=request.digest(), openings=(), folds=())
        )
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


# ------------------------------------------------------------------------------------------------------------
# Whole-aggregate integrity and cancellation (issue 14): each attack first succeeds on the unguarded path


def decrypt_unchecked(
    consortium: Consortium, config: PaillierRoundConfig, request: DecryptionRequest
) -> np.ndarray:
    """What three key holders would release if they decrypted ``request`` without any check: the payoff of an
    attack that gets past the guards (the positive control)."""
    pk = consortium.public_key
    digest = request.digest()
    aggregate = ciphertexts_from_bytes(pk, request.aggregate)
    partials = [
        PartialDecryptionMessage(
            silo_id=s,
            request_digest=digest,
            partial=partial_decrypt(
                pk,
                consortium.shares[s],
                aggregate,
                context=proof_context(request.context, digest),
                rng=seeded_rng(f"unchecked-{s}"),
                workers=1,
            ),
        )
        for s in SILOS[:3]
    ]
    return combine_partials(pk, config, request, partials, workers=1)


def spot_checks_pass(
    consortium: Consortium, request: DecryptionRequest, response: SpotCheckResponse
) -> bool:
    """The spot checks alone (the pre-fold guarantee): at each opened position, the product of the openings
    equals the aggregate."""
    pk = consortium.public_key
    aggregate = ciphertexts_from_bytes(pk, request.aggregate)
    products: dict[int, int] = {}
    for o in response.openings:
        value = ciphertexts_from_bytes(pk, o.ciphertext)[0]
        products[o.position] = products.get(o.position, 1) * value % pk.nsquare
    return all(aggregate[p] == v for p, v in products.items())


@pytest.mark.parametrize("swaps", ["one", "many"])
def test_a_coordinator_that_swaps_a_silos_ciphertexts_into_the_aggregate_is_caught_every_time(
    consortium: Consortium,
    roster: dict[str, bytes],
    roster_keys: dict[str, Ed25519PrivateKey],
    swaps: str,
) -> None:
    """Attack 1 of the review: aggregate position j replaced by silo-1's own ciphertext at j, at positions the
    decrypter does not spot-check, decrypts to silo-1's exact values there. The fold catches it whatever the
    positions (soundness error 2^-128), not with the probability the spot checks give."""
    config = make_config(round_number=20, vector_length=2000)
    pk = consortium.public_key
    width = pk.ciphertext_bytes
    gen = np.random.default_rng(20)
    updates = {s: gen.integers(-2047, 2048, size=2000) for s in SILOS[:3]}
    aggregator = PaillierAggregator(public_key=pk, config=config, roster=roster)
    victim = b""
    for silo in SILOS[:3]:
        chunks, commitment = contribute(consortium, config, roster_keys, silo, updates[silo])
        victim = b"".join(c.data for c in chunks) if silo == "silo-1" else victim
        aggregator.accept_commitment(commitment)
        for chunk in chunks:
            aggregator.accept_chunk(chunk)
    request = aggregator.decryption_request()
    count = len(request.aggregate) // width
    # the coordinator learns the positions only after the request is bound; here the test peeks at them
    # (same seeded rng) so the swap lands where the spot checks do not look
    drawn = set(decrypter(consortium, config, roster, "silo-4").challenge(request).positions)
    unchecked = [j for j in range(count) if j not in drawn]
    swapped = unchecked[:1] if swaps == "one" else unchecked
    aggregate = bytearray(request.aggregate)
    for j in swapped:
        aggregate[j * width : (j + 1) * width] = victim[j * width : (j + 1) * width]
    tampered = replace(request, aggregate=bytes(aggregate))

    # positive control: the spot checks pass, and decrypting releases silo-1's values at the swapped slots
    d = decrypter(consortium, config, roster, "silo-4")
    challenge = d.challenge(tampered)
    assert set(challenge.positions) == drawn
    honest_view = replace(challenge, request_digest=request.digest())
    response = replace(opened(aggregator, "silo-4", honest_view), request_digest=tampered.digest())
    assert spot_checks_pass(consortium, tampered, response)
    released = decrypt_unchecked(consortium, config, tampered)
    packing = config.packing(pk)
    slots = packing.slots_per_plaintext
    leaked = [i for j in swapped for i in range(j * slots, min((j + 1) * slots, 2000))]
    # decoded as a sum of 3 contributions, a slot holding one is off by the 2 offsets the attacker adds back
    assert np.array_equal(released[leaked] + 2 * packing.offset, updates["silo-1"][leaked])

    # the defence: the product of the contributors' signed folds is not the tampered aggregate's fold
    with pytest.raises(ProtocolViolation, match="whole-vector fold"):
        d.partially_decrypt(response)
    assert d.stage is DecrypterStage.AWAITING_OPENINGS  # nothing was decrypted


def forged_contribution(
    consortium: Consortium,
    config: PaillierRoundConfig,
    roster_keys: dict[str, Ed25519PrivateKey],
    silo: str,
    ciphertexts: list[int],
) -> tuple[tuple[CiphertextChunk, ...], SignedCommitment]:
    """A colluding silo's contribution of ciphertexts it did not encrypt itself, correctly signed, with the best
    proof of plaintext knowledge it can make: one for a guessed opening (it does not know the real one)."""
    pk = consortium.public_key
    width = pk.ciphertext_bytes
    context = config.context(pk)
    data = ciphertexts_to_bytes(pk, ciphertexts)
    root = merkle_root(leaf_hash(data[o : o + width]) for o in range(0, len(data), width))
    fold = fold_ciphertexts(
        pk, ciphertexts, knowledge_weights(context, silo, root, len(ciphertexts))
    )
    proof = prove_plaintext_knowledge(
        pk,
        fold,
        0,
        1,
        ObfuscatorMode.STANDARD,
        context=knowledge_proof_context(context, silo, root),
        rng=seeded_rng(f"forger-{silo}"),
    )
    unsigned = SignedCommitment(
        silo_id=silo,
        context=context,
        vector_length=config.vector_length,
        ciphertext_count=len(ciphertexts),
        merkle_root=root,
        knowledge_fold=fold,
        knowledge_proof=proof,
        signature=b"",
    )
    commitment = replace(unsigned, signature=sign(roster_keys[silo], unsigned.signed_message()))
    chunks = tuple(
        CiphertextChunk(silo_id=silo, chunk_index=i, data=data[i * width : (i + 1) * width])
        for i in range(len(ciphertexts))
    )
    return chunks, commitment


@pytest.mark.parametrize("attack", ["cancel", "re-randomised copy"])
def test_a_colluding_silo_cannot_submit_ciphertexts_derived_from_another_silos(
    consortium: Consortium,
    roster: dict[str, bytes],
    roster_keys: dict[str, Ed25519PrivateKey],
    attack: str,
) -> None:
    """Attack 2 of the review: the coordinator and silo-2 collude. silo-2 submits ``Enc(2 * offsets) / c_3``,
    which cancels silo-3's contribution, so the aggregate of silo-1, silo-2 and silo-3 decrypts to silo-1's
    exact update; or a re-randomised copy of silo-1's ciphertexts (a new Merkle root, so no duplicate). Every
    signature is valid; only the proof of plaintext knowledge stops it."""
    config = make_config(round_number=21, vector_length=200)
    pk = consortium.public_key
    nsq = pk.nsquare
    gen = np.random.default_rng(21)
    updates = {s: gen.integers(-2047, 2048, size=200) for s in ("silo-1", "silo-3")}
    honest = {s: contribute(consortium, config, roster_keys, s, updates[s]) for s in updates}
    ciphertexts = {
        s: ciphertexts_from_bytes(pk, b"".join(c.data for c in chunks))
        for s, (chunks, _) in honest.items()
    }
    pool = ObfuscatorPool(pk, rng=seeded_rng(f"colluder-{attack}"))
    count = len(ciphertexts["silo-1"])
    zeros = encrypt_plaintexts(pk, config.packing(pk).pack(np.zeros(200, dtype=np.int64)), pool)
    if attack == "cancel":
        forged = [
            z * z % nsq * int(gmpy2.invert(c, nsq)) % nsq
            for z, c in zip(zeros, ciphertexts["silo-3"], strict=True)
        ]
    else:  # silo-1's ciphertexts times fresh encryptions of 0: the same plaintexts, fresh randomness
        fresh = encrypt_plaintexts(pk, [0] * count, pool)
        forged = [c * r % nsq for c, r in zip(ciphertexts["silo-1"], fresh, strict=True)]
    _, commitment = forged_contribution(consortium, config, roster_keys, "silo-2", forged)
    assert commitment.merkle_root != honest["silo-1"][1].merkle_root  # not caught as a duplicate

    # positive control: admitted without the proof, the aggregate gives silo-1's update away
    aggregate = [
        a * b % nsq * c % nsq
        for a, b, c in zip(ciphertexts["silo-1"], forged, ciphertexts["silo-3"], strict=True)
    ]
    contributions = tuple(
        sorted((honest["silo-1"][1], commitment, honest["silo-3"][1]), key=lambda c: c.silo_id)
    )
    request = DecryptionRequest(
        context=config.context(pk),
        aggregate=ciphertexts_to_bytes(pk, aggregate),
        contributions=contributions,
    )
    released = decrypt_unchecked(consortium, config, request)
    if attack == "cancel":
        assert np.array_equal(released, updates["silo-1"])
    else:  # silo-1 counted twice: its update is (sum - silo-3) / 2
        assert np.array_equal(released, 2 * updates["silo-1"] + updates["silo-3"])

    # the defence: the coordinator refuses it at the door, and so does every key holder
    aggregator = PaillierAggregator(public_key=pk, config=config, roster=roster)
    with pytest.raises(ProtocolViolation, match="plaintext knowledge"):
        aggregator.accept_commitment(commitment)
    with pytest.raises(ProtocolViolation, match="plaintext knowledge"):
        decrypter(consortium, config, roster, "silo-4").challenge(request)
    # and a proof made for honest ciphertexts cannot be reused for the forged ones
    stolen = replace(
        commitment,
        knowledge_fold=honest["silo-1"][1].knowledge_fold,
        knowledge_proof=honest["silo-1"][1].knowledge_proof,
    )
    stolen = replace(stolen, signature=sign(roster_keys["silo-2"], stolen.signed_message()))
    with pytest.raises(ProtocolViolation, match="plaintext knowledge"):
        aggregator.accept_commitment(stolen)


def test_a_contribution_whose_chunks_are_not_the_proven_ciphertexts_is_dropped(
    consortium: Consortium, roster: dict[str, bytes], roster_keys: dict[str, Ed25519PrivateKey]
) -> None:
    """A silo that proves knowledge for its own ciphertexts but streams others: the Merkle check catches a
    different root; the fold check catches the rest (the proof covers the fold the root's weights give)."""
    config = make_config(round_number=22)
    pk = consortium.public_key
    aggregator = PaillierAggregator(public_key=pk, config=config, roster=roster)
    chunks, commitment = contribute(
        consortium, config, roster_keys, "silo-1", np.ones(100, dtype=np.int64)
    )
    other = ciphertexts_from_bytes(pk, b"".join(c.data for c in chunks))
    other[0] = other[0] * (pk.n + 1) % pk.nsquare  # one plaintext changed
    _, forged = forged_contribution(consortium, config, roster_keys, "silo-1", other)
    # the honest proof and fold with the forged ciphertexts' root: signed, but the proof is for another root
    mixed = replace(
        forged,
        knowledge_fold=commitment.knowledge_fold,
        knowledge_proof=commitment.knowledge_proof,
    )
    mixed = replace(mixed, signature=sign(roster_keys["silo-1"], mixed.signed_message()))
    with pytest.raises(ProtocolViolation, match="plaintext knowledge"):
        aggregator.accept_commitment(mixed)
