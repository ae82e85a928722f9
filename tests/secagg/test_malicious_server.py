"""A malicious server drives real ``SecAggClient``s with crafted messages (DESIGN 2: the coordinator may lie
about dropouts, route wrongly, replay, and ask for both share types).

Every honest client must refuse, and after each attack the test runs the attacker's best effort
(:func:`attacker_unmask`: pool every revealed share plus colluders' shares, reconstruct b_u and the mask key,
strip the masks) against every silo's masked vector and checks it never yields an individual input. A positive
control shows that same procedure does recover an input when the threshold rule is violated, so the check is
not vacuous.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pytest

from secagg import (
    Advertisement,
    ProtocolError,
    ProtocolViolation,
    RoundAborted,
    SecAggClient,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.hazmat.keys import new_x25519, public_bytes
from tests.secagg.harness import (
    Federation,
    Transcript,
    attacker_unmask,
    make_clients,
    make_config,
    make_federation,
    run_to_consistency,
    seeded_rng,
)
from tests.secagg.test_rejections import signed_ad

A, B, C, D, E = (f"silo-{i:02d}" for i in range(5))


@pytest.fixture
def fed() -> Federation:
    return make_federation(5)


@pytest.fixture
def tr(fed: Federation) -> Transcript:
    """n = 5, c = 0, t = 3; every silo has submitted its masked input and waits for the consistency check."""
    return run_to_consistency(fed, make_config(fed, length=16))


def assert_no_input_leaks(
    tr: Transcript, responses: Iterable[UnmaskResponse], colluders: Sequence[str] = ()
) -> None:
    responses = list(responses)
    for victim in tr.masked:
        if victim in colluders:
            continue
        recovered = attacker_unmask(tr, victim, responses, colluders=colluders)
        assert recovered is None or not np.array_equal(recovered, tr.inputs[victim]), victim


def refuses(
    client: SecAggClient, call: object, *args: object, error: type[Exception] = ProtocolViolation
) -> None:
    with pytest.raises(error):
        call(*args)  # type: ignore[operator]
    assert client.stage in (Stage.ABORTED, Stage.DONE)


def request(
    tr: Transcript,
    survivors: Sequence[str],
    sigs: Iterable[SurvivorSignature],
    dropped: Sequence[str] | None = None,
) -> UnmaskRequest:
    u2 = sorted(tr.clients)
    if dropped is None:
        dropped = [s for s in u2 if s not in survivors]
    return UnmaskRequest(tuple(survivors), tuple(dropped), tuple(sigs))


# --- Positive control ----------------------------------------------------------------------------------------


def test_positive_control_an_honest_round_reveals_only_the_sum(tr: Transcript) -> None:
    survivors = sorted(tr.clients)
    sigs = [tr.clients[s].sign_survivors(survivors) for s in survivors]
    responses = [tr.clients[s].unmask(request(tr, survivors, sigs)) for s in survivors]
    assert_no_input_leaks(tr, responses)


def test_positive_control_the_attacker_wins_when_an_unaccounted_silo_colludes(
    fed: Federation,
) -> None:
    """c = 0 declared but D colludes: split the honest silos and show each half a different U3, with D
    signing both. Both halves see t = 3 signatures, so the server gets b_E from one half and E's mask key from
    the other and unmasks E's input. This is exactly why t > (n + c)/2 (Bonawitz et al. 2017, Thm 6.3)."""
    tr = run_to_consistency(fed, make_config(fed, length=16, collusion=0))
    s1, s2 = [A, D, E], [B, C, D]  # E survived / E dropped
    sigs1 = [
        tr.clients[A].sign_survivors(s1),
        tr.clients[E].sign_survivors(s1),
        tr.signature(D, s1),
    ]
    sigs2 = [
        tr.clients[B].sign_survivors(s2),
        tr.clients[C].sign_survivors(s2),
        tr.signature(D, s2),
    ]
    responses = [tr.clients[s].unmask(request(tr, s1, sigs1)) for s in (A, E)]
    responses += [tr.clients[s].unmask(request(tr, s2, sigs2)) for s in (B, C)]
    recovered = attacker_unmask(tr, E, responses, colluders=[D])
    assert recovered is not None
    np.testing.assert_array_equal(recovered, tr.inputs[E])


def test_the_same_attack_fails_when_the_threshold_accounts_for_the_colluder(
    fed: Federation,
) -> None:
    tr = run_to_consistency(fed, make_config(fed, length=16, collusion=1))
    assert tr.config.threshold == 4
    s1, s2 = [A, B, D, E], [A, B, C, D]
    sigs1 = [
        tr.clients[A].sign_survivors(s1),
        tr.clients[E].sign_survivors(s1),
        tr.signature(D, s1),
    ]
    sigs2 = [
        tr.clients[B].sign_survivors(s2),
        tr.clients[C].sign_survivors(s2),
        tr.signature(D, s2),
    ]
    for silo in (A, E):
        refuses(tr.clients[silo], tr.clients[silo].unmask, request(tr, s1, [*sigs1, *sigs2]))
    for silo in (B, C):
        refuses(tr.clients[silo], tr.clients[silo].unmask, request(tr, s2, [*sigs1, *sigs2]))
    assert_no_input_leaks(tr, [], colluders=[D])


# --- Lies about who survived -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("survivors", "dropped", "why"),
    [
        ([A, B, C, D, E], [E], "both as survivor and as dropped"),
        ([A, B, C, D], [E, E], "repeated id"),
        ([A, B, C, D, E], ["silo-99"], "partition"),
        ([A, B, C, D], [E], "differs from the one this silo signed"),
        ([A, B, C, D, E, E], [], "repeated id"),
    ],
)
def test_survivor_and_dropped_lies_are_refused_by_every_client(
    tr: Transcript, survivors: list[str], dropped: list[str], why: str
) -> None:
    signed = sorted(tr.clients)
    sigs = [tr.clients[s].sign_survivors(signed) for s in signed]
    for silo in signed:
        with pytest.raises(ProtocolViolation, match=why):
            tr.clients[silo].unmask(request(tr, survivors, sigs, dropped))
        assert tr.clients[silo].stage is Stage.ABORTED
    assert_no_input_leaks(tr, [])


def test_different_survivor_sets_for_different_clients_never_yield_both_secrets(
    fed: Federation,
) -> None:
    """Exhaustive for n = 5, t = 3: every way of showing some silos U3 = all (E survived) and the others
    U3 = all but E (E dropped). At most one group reaches t signatures on its set; the other refuses."""
    config = make_config(fed, length=16)
    for bits in itertools.product((1, 2), repeat=4):
        group = dict(zip((A, B, C, D), bits, strict=True)) | {
            E: 1
        }  # E is in S1, so only S1 makes sense to E
        tr = run_to_consistency(fed, config, seed=sum(bits))
        sets = {1: [A, B, C, D, E], 2: [A, B, C, D]}
        sigs = [tr.clients[s].sign_survivors(sets[g]) for s, g in group.items()]
        responses = []
        for silo, g in group.items():
            members = [s for s, h in group.items() if h == g]
            req = request(tr, sets[g], sigs)  # every signature the server has, on both sets
            if len(members) >= config.threshold:
                responses.append(tr.clients[silo].unmask(req))
            else:
                with pytest.raises(ProtocolViolation, match="valid signatures"):
                    tr.clients[silo].unmask(req)
        assert len({group[r.silo] for r in responses}) <= 1
        assert_no_input_leaks(tr, responses)


def test_client_omitted_from_survivors_refuses_to_sign_and_to_unmask(tr: Transcript) -> None:
    without_a = [B, C, D, E]
    refuses(tr.clients[A], tr.clients[A].sign_survivors, without_a)
    sigs = [tr.clients[s].sign_survivors(sorted(tr.clients)) for s in (B, C, D, E)]
    # B signed a set containing B; a request that leaves B out is not the set it signed
    refuses(tr.clients[B], tr.clients[B].unmask, request(tr, [A, C, D, E], sigs))
    assert_no_input_leaks(tr, [])


def test_survivor_set_outside_u2_or_too_small_is_refused(fed: Federation) -> None:
    tr = run_to_consistency(fed, make_config(fed, length=16, min_cohort=4))
    with pytest.raises(ProtocolViolation, match="outside U2"):
        tr.clients[A].sign_survivors([A, B, C, "silo-77"])
    with pytest.raises(RoundAborted, match="needs 4"):
        tr.clients[B].sign_survivors([A, B, C])  # t = 3 but min_cohort = 4


# --- Signatures --------------------------------------------------------------------------------------------------


def test_fewer_than_t_valid_signatures_are_refused(tr: Transcript) -> None:
    survivors = sorted(tr.clients)
    sigs = {s: tr.clients[s].sign_survivors(survivors) for s in survivors}
    bogus = SurvivorSignature(E, bytes(64))
    for silo, bad in zip(
        (A, B, C, D),
        [
            [sigs[A], sigs[B]],  # t - 1
            [sigs[A]] * 3,  # the same signer three times counts once
            [sigs[A], sigs[B], bogus],  # a forged third one
            [
                sigs[A],
                sigs[B],
                dataclasses.replace(sigs[C], silo=D),
            ],  # C's signature claimed as D's
        ],
        strict=True,
    ):
        with pytest.raises(ProtocolViolation, match="valid signatures"):
            tr.clients[silo].unmask(request(tr, survivors, bad))
    assert_no_input_leaks(tr, [])


def test_signatures_from_silos_outside_the_survivor_set_do_not_count(fed: Federation) -> None:
    tr = run_to_consistency(fed, make_config(fed, length=16), submit=[A, B, C, D])
    survivors = [A, B, C]
    sigs = [tr.clients[A].sign_survivors(survivors), tr.clients[B].sign_survivors(survivors)]
    # D submitted, but the server calls it dropped; a D signature on that set must not make up the count
    outsider = tr.signature(D, survivors)
    with pytest.raises(ProtocolViolation, match="only 2 valid signatures"):
        tr.clients[A].unmask(request(tr, survivors, [*sigs, outsider]))


def test_a_client_signs_only_one_survivor_set(tr: Transcript) -> None:
    tr.clients[A].sign_survivors([A, B, C, D, E])
    with pytest.raises(ProtocolError, match="expected stage"):
        tr.clients[A].sign_survivors([A, B, C])


# --- Both share types of one peer -------------------------------------------------------------------------------


def test_second_unmask_request_is_refused(tr: Transcript) -> None:
    """The server gets E's self-mask share, then claims E dropped to get its mask-key share too."""
    everyone = sorted(tr.clients)
    sigs = [tr.clients[s].sign_survivors(everyone) for s in everyone]
    first = [tr.clients[s].unmask(request(tr, everyone, sigs)) for s in (A, B, C)]
    assert all(E in r.self_mask_shares and not r.mask_key_shares for r in first)
    lie = request(tr, [A, B, C, D], sigs, dropped=[E])
    for silo in (A, B, C):
        with pytest.raises(ProtocolError):
            tr.clients[silo].unmask(lie)
    assert_no_input_leaks(tr, first)


def test_unmask_request_that_drops_a_signed_survivor_is_refused(tr: Transcript) -> None:
    everyone = sorted(tr.clients)
    sigs = [tr.clients[s].sign_survivors(everyone) for s in everyone]
    # D and E get the truth; A, B, C are told E dropped (after E's masked input arrived)
    honest = [tr.clients[s].unmask(request(tr, everyone, sigs)) for s in (D, E)]
    for silo in (A, B, C):
        refuses(
            tr.clients[silo], tr.clients[silo].unmask, request(tr, [A, B, C, D], sigs, dropped=[E])
        )
    assert_no_input_leaks(tr, honest)


# --- Replays from the previous round ----------------------------------------------------------------------------


def test_replayed_messages_of_the_last_round_are_refused(fed: Federation) -> None:
    old = run_to_consistency(fed, make_config(fed, length=16, round_=0), seed=1)
    everyone = sorted(old.clients)
    old_sigs = [old.clients[s].sign_survivors(everyone) for s in everyone]
    old_request = request(old, everyone, old_sigs)
    old_responses = [old.clients[s].unmask(old_request) for s in everyone]

    config = make_config(fed, length=16, round_=1)
    # advertisements: the whole U1 of last round
    clients = make_clients(fed, config, seed=100)
    for client in clients.values():
        client.advertise()
    refuses(clients[A], clients[A].share_keys, old.ads)

    new = run_to_consistency(fed, config, seed=100, submit=())
    # share ciphertexts: last round's inbox of the same recipient, and one stale ciphertext among fresh ones
    refuses(new.clients[A], new.clients[A].masked_input, old.inbox[A], new.inputs[A])
    mixed = [old.inbox[B][0], *new.inbox[B][1:]]
    refuses(new.clients[B], new.clients[B].masked_input, mixed, new.inputs[B])

    new = run_to_consistency(fed, config, seed=100)
    sigs = [new.clients[C].sign_survivors(everyone)]
    # survivor signatures, and the whole unmask request, of last round
    refuses(new.clients[C], new.clients[C].unmask, request(new, everyone, [*sigs, *old_sigs]))
    new.clients[D].sign_survivors(everyone)
    refuses(new.clients[D], new.clients[D].unmask, old_request)
    assert_no_input_leaks(new, old_responses)


def test_session_binding_alone_stops_a_replay_when_keys_repeat(fed: Federation) -> None:
    """Same client randomness in both rounds (so identical X25519 keys): only the session id differs."""
    old = run_to_consistency(fed, make_config(fed, length=16, round_=0), seed=7, submit=())
    new = run_to_consistency(fed, make_config(fed, length=16, round_=1), seed=7, submit=())
    assert old.ads[0].enc_public == new.ads[0].enc_public
    assert old.session != new.session
    refuses(new.clients[A], new.clients[A].masked_input, old.inbox[A], new.inputs[A])


# --- Routing -----------------------------------------------------------------------------------------------------


def test_share_ciphertexts_swapped_between_recipients_are_refused(fed: Federation) -> None:
    tr = run_to_consistency(fed, make_config(fed, length=16), submit=())
    to_a = {s.sender: s for s in tr.inbox[A]}
    # C's ciphertext for A, delivered to B as is, and relabelled as addressed to B
    as_is = [to_a[C], *[s for s in tr.inbox[B] if s.sender != C]]
    refuses(tr.clients[B], tr.clients[B].masked_input, as_is, tr.inputs[B])
    tr = run_to_consistency(fed, make_config(fed, length=16), submit=())
    to_a = {s.sender: s for s in tr.inbox[A]}
    relabelled = [
        dataclasses.replace(to_a[C], recipient=B),
        *[s for s in tr.inbox[B] if s.sender != C],
    ]
    refuses(tr.clients[B], tr.clients[B].masked_input, relabelled, tr.inputs[B])
    # two ciphertexts for A with their senders swapped
    swapped = [
        dataclasses.replace(to_a[C], sender=D),
        dataclasses.replace(to_a[D], sender=C),
        *[s for s in tr.inbox[A] if s.sender not in (C, D)],
    ]
    refuses(tr.clients[A], tr.clients[A].masked_input, swapped, tr.inputs[A])


def test_substituted_advertisements_are_refused(fed: Federation) -> None:
    config = make_config(fed, length=16)
    server_key = new_x25519(seeded_rng(666))
    other_round = make_clients(fed, make_config(fed, length=16, round_=9), seed=1)

    def fresh() -> tuple[dict[str, SecAggClient], list[Advertisement]]:
        clients = make_clients(fed, config)
        return clients, [c.advertise() for c in clients.values()]

    Ads = list[Advertisement]
    cases: dict[str, Callable[[Ads], Ads]] = {
        # the server puts its own key into a peer's or the client's own advertisement
        "peer keys replaced": lambda ads: [
            dataclasses.replace(ads[1], enc_public=public_bytes(server_key)),
            *ads[:1],
            *ads[2:],
        ],
        "own keys replaced": lambda ads: [
            dataclasses.replace(ads[0], mask_public=public_bytes(server_key)),
            *ads[1:],
        ],
        "own ad omitted": lambda ads: ads[1:],
        "own ad from another round": lambda ads: [other_round[A].advertise(), *ads[1:]],
        "peer ad from another round": lambda ads: [ads[0], other_round[B].advertise(), *ads[2:]],
        "duplicated ad": lambda ads: [*ads, ads[2]],
        "stranger": lambda ads: [*ads, dataclasses.replace(ads[2], silo="silo-99")],
    }
    for name, mutate in cases.items():
        clients, ads = fresh()
        with pytest.raises(ProtocolViolation):
            clients[A].share_keys(mutate(ads))
        assert clients[A].stage is Stage.ABORTED, name


def test_own_advertisement_signed_twice_cannot_be_swapped(fed: Federation) -> None:
    """Even a valid signature by A on *other* keys (a colluding copy of A's key is out of scope, so we use
    a second client instance of A in the same round) is refused: A only accepts its own advertisement."""
    config = make_config(fed, length=16)
    clients = make_clients(fed, config)
    ads = [c.advertise() for c in clients.values()]
    twin = SecAggClient(
        silo=A, signing_key=fed.keys[A], roster=fed.roster, config=config, rng=seeded_rng(42)
    )
    refuses(clients[A], clients[A].share_keys, [twin.advertise(), *ads[1:]])


def test_a_peer_advertising_someone_elses_key_is_refused(fed: Federation) -> None:
    config = make_config(fed, length=16)
    clients = make_clients(fed, config)
    ads = [c.advertise() for c in clients.values()]
    # colluding C re-advertises A's encryption key under its own (valid) roster signature
    copied = signed_ad(fed, config, C, ads[0].enc_public, ads[2].mask_public)
    refuses(clients[B], clients[B].share_keys, [*ads[:2], copied, *ads[3:]])


def test_duplicated_ids_in_the_inbox_are_refused(fed: Federation) -> None:
    tr = run_to_consistency(fed, make_config(fed, length=16), submit=())
    first = tr.inbox[A][0]
    refuses(tr.clients[A], tr.clients[A].masked_input, [*tr.inbox[A], first], tr.inputs[A])
