"""A malicious coordinator against SecAgg+ neighbourhoods (Bell et al., CCS 2020; DESIGN 4.4).

The neighbourhood variants of the survivor-set attacks: the coordinator tells part of a victim's neighbourhood
that the victim survived and the rest that it dropped (to get both its self-mask seed and its mask key),
shows neighbours inconsistent dropped lists, and routes shares between silos that are not neighbours. Each
attack runs against real clients, then the attacker's best effort (:func:`attacker_unmask`) on the victim; each
has a positive control where the guard, or the per-neighbourhood threshold rule t > (k + 1 + c_V)/2, is the
reason the attack fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection

import numpy as np
import pytest

from secagg import (
    ProtocolError,
    ProtocolViolation,
    RoundAborted,
    SecAggServer,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.hazmat.keys import verify
from secagg.masking.messages import survivors_payload
from tests.secagg.harness import (
    Federation,
    RecordingRng,
    Transcript,
    attacker_unmask,
    encrypt_share,
    make_clients,
    make_config,
    make_federation,
    run_to_consistency,
    seeded_rng,
)

VICTIM = "silo-00"
N, K = 12, 4


@pytest.fixture(scope="module")
def fed() -> Federation:
    return make_federation(N)


def transcript(
    fed: Federation, *, threshold: int = 3, submit: Collection[str] | None = None
) -> Transcript:
    """n = 12 on H(4, 12): closed neighbourhoods of 5; stages 1-3 honest (the same graph for the same seed)."""
    config = make_config(fed, length=16, threshold=threshold, graph_degree=K, min_cohort=3)
    return run_to_consistency(fed, config, submit=submit)


def neighbours(tr: Transcript, silo: str = VICTIM) -> list[str]:
    return sorted(tr.server.graph.neighbours(silo))


def try_unmask(tr: Transcript, silo: str, request: UnmaskRequest) -> UnmaskResponse | None:
    try:
        return tr.clients[silo].unmask(request)
    except (ProtocolViolation, RoundAborted):
        assert tr.clients[silo].stage is Stage.ABORTED
        return None


def split_views(
    tr: Transcript, believe_survived: Collection[str], colluders: Collection[str] = ()
) -> list[UnmaskResponse]:
    """Show ``believe_survived`` (and the victim) U3 = everyone, every other honest silo U3 = everyone but the
    victim (so they reveal its mask key); colluders sign both. Returns what honest silos reveal."""
    everyone = sorted(tr.clients)
    view_a, view_b = everyone, [s for s in everyone if s != VICTIM]
    honest = [s for s in everyone if s not in colluders]
    group_a = [s for s in honest if s in believe_survived or s == VICTIM]
    group_b = [s for s in honest if s not in group_a]
    sigs = [tr.clients[s].sign_survivors(view_a) for s in group_a]
    sigs += [tr.clients[s].sign_survivors(view_b) for s in group_b]
    sigs += [tr.signature(c, view) for c in colluders for view in (view_a, view_b)]
    responses = [try_unmask(tr, s, UnmaskRequest(tuple(view_a), (), tuple(sigs))) for s in group_a]
    responses += [
        try_unmask(tr, s, UnmaskRequest(tuple(view_b), (VICTIM,), tuple(sigs))) for s in group_b
    ]
    return [r for r in responses if r is not None]


def leaks(tr: Transcript, responses: list[UnmaskResponse], colluders: Collection[str] = ()) -> bool:
    recovered = attacker_unmask(tr, VICTIM, responses, colluders=colluders)
    return recovered is not None and np.array_equal(recovered, tr.inputs[VICTIM])


# --- split survivor sets inside one neighbourhood ---------------------------------------------------------------


def test_no_split_of_the_victims_neighbourhood_yields_both_its_secrets(fed: Federation) -> None:
    """Exhaustive over the 2^4 ways to split the victim's honest neighbours between 'survived' and 'dropped'."""
    hood = neighbours(transcript(fed))
    for size in range(len(hood) + 1):
        for believe in itertools.combinations(hood, size):
            tr = transcript(fed)
            assert not leaks(tr, split_views(tr, believe)), believe


def unguarded_reveals(
    tr: Transcript, believe_survived: Collection[str], colluders: Collection[str]
) -> list[UnmaskResponse]:
    """What the victim's honest holders would reveal if they skipped the signature guard and answered by their
    view alone: 'survived' -> the self-mask share, 'dropped' -> the mask-key share (read from their own memory,
    as the harness lets a test do)."""
    out = []
    for holder in sorted(tr.server.graph.closed_neighbourhood(VICTIM)):
        if holder in colluders:
            continue
        seed_share, key_share = tr.held_shares(holder, VICTIM) if holder != VICTIM else (b"", b"")
        if holder == VICTIM or holder in believe_survived:
            if holder != VICTIM:
                out.append(UnmaskResponse(holder, {VICTIM: seed_share}, {}))
        else:
            out.append(UnmaskResponse(holder, {}, {VICTIM: key_share}))
    return out


def test_positive_control_a_colluding_neighbour_against_the_guards(fed: Federation) -> None:
    """c_V = 1 colluder in N[V] with t = 3 violates t > (k + 1 + c_V)/2: the victim's 3 honest neighbours split
    1 / 2 give the attacker t shares of both secrets *if they answer by their view alone* (the attack is real:
    it recovers the victim's input exactly). Run for real, the per-neighbourhood signature guard stops every
    split. With t = 4 (the rule met) even unguarded answers never give t of both: the threshold is the reason."""
    hood = neighbours(transcript(fed))
    colluder, honest = hood[0], hood[1:]
    tr = transcript(fed)
    own = tr.clients[VICTIM]
    assert own.stage is Stage.CONSISTENCY_CHECK
    # the victim reveals its own self-mask share to a 'survived' request; take it from a real unmask
    everyone = sorted(tr.clients)
    sigs = [tr.signature(s, everyone) for s in everyone]
    own.sign_survivors(everyone)
    own_response = own.unmask(UnmaskRequest(tuple(everyone), (), tuple(sigs)))
    assert leaks(tr, [own_response, *unguarded_reveals(tr, honest[:1], [colluder])], [colluder])
    for threshold in (3, 4):
        hood = neighbours(
            transcript(fed, threshold=threshold)
        )  # the threshold is in the session id
        colluder, honest = hood[0], hood[1:]
        for size in range(len(honest) + 1):
            for believe in itertools.combinations(honest, size):
                tr = transcript(fed, threshold=threshold)
                assert not leaks(tr, split_views(tr, believe, [colluder]), [colluder]), (
                    threshold,
                    believe,
                )
    strict = transcript(fed, threshold=4)
    strict.clients[VICTIM].sign_survivors(everyone)
    strict_sigs = [strict.signature(s, everyone) for s in everyone]
    strict_own = strict.clients[VICTIM].unmask(
        UnmaskRequest(tuple(everyone), (), tuple(strict_sigs))
    )
    for size in range(len(honest) + 1):
        for believe in itertools.combinations(honest, size):
            unguarded = [strict_own, *unguarded_reveals(strict, believe, [colluder])]
            assert not leaks(strict, unguarded, [colluder]), believe


def test_a_holder_needs_t_signatures_from_the_peers_own_neighbourhood(fed: Federation) -> None:
    """A neighbour told 'the victim dropped' gets that set signed by 9 silos -- enough for the full-graph guard
    (t = 3 anywhere) -- but only 2 of them are in the victim's neighbourhood: it refuses, naming the
    neighbourhood. Positive control: the same request with the neighbourhood's signatures is answered."""
    tr = transcript(fed)
    hood = neighbours(tr)
    believe = hood[:2]  # with the victim, 3 of N[V] sign 'survived'; the other 2 sign 'dropped'
    everyone = sorted(tr.clients)
    view_b = [s for s in everyone if s != VICTIM]
    group_a = [VICTIM, *believe]
    for s in group_a:
        tr.clients[s].sign_survivors(everyone)
    sigs = [tr.clients[s].sign_survivors(view_b) for s in everyone if s not in group_a]
    valid = [
        s
        for s in sigs
        if verify(tr.fed.roster.key(s.silo), s.signature, survivors_payload(tr.session, view_b))
        is None
    ]
    assert len(valid) >= tr.config.threshold  # the global count would pass
    holder = hood[-1]
    request = UnmaskRequest(tuple(view_b), (VICTIM,), tuple(sigs))
    with pytest.raises(ProtocolViolation, match="neighbourhood; need 3"):
        tr.clients[holder].unmask(request)

    control = transcript(fed)  # same seed: same session and graph
    control_sigs = [control.clients[s].sign_survivors(view_b) for s in view_b]
    response = control.clients[holder].unmask(
        UnmaskRequest(tuple(view_b), (VICTIM,), tuple(control_sigs))
    )
    assert VICTIM in response.mask_key_shares


# --- inconsistent dropped lists to neighbours ---------------------------------------------------------------


def test_a_dropped_list_that_hides_a_dropout_from_its_neighbours_is_refused_there_only(
    fed: Federation,
) -> None:
    """A far silo F did not submit. The coordinator omits F from the dropped list: F's neighbours (who hold F's
    shares) refuse, because survivors and dropped no longer partition their U2; a silo that holds nothing of F
    is unaffected (positive control: the guard is scoped to the neighbourhood, and it is why they refuse)."""
    probe = transcript(fed)
    far = next(
        s for s in sorted(probe.clients) if s not in probe.server.graph.closed_neighbourhood(VICTIM)
    )
    tr = transcript(fed, submit=[s for s in sorted(fed.silos) if s != far])
    survivors = list(tr.survivors)
    sigs = [tr.clients[s].sign_survivors(survivors) for s in survivors]
    lying = UnmaskRequest(tuple(survivors), (), tuple(sigs))
    responses = []
    for silo in survivors:
        if far in tr.server.graph.neighbours(silo):
            with pytest.raises(ProtocolViolation, match="do not partition U2"):
                tr.clients[silo].unmask(lying)
        elif far not in tr.server.graph.closed_neighbourhood(silo) and not any(
            far in tr.server.graph.neighbours(p) for p in tr.server.graph.neighbours(silo)
        ):
            response = tr.clients[silo].unmask(lying)
            assert far not in response.mask_key_shares and far not in response.self_mask_shares
            responses.append(response)
    assert responses  # some silo far from F answered the same request
    assert not leaks(tr, responses)


def test_a_survivor_list_with_a_stranger_is_refused(fed: Federation) -> None:
    tr = transcript(fed)
    everyone = sorted(tr.clients)
    sigs = [tr.clients[s].sign_survivors(everyone) for s in everyone]
    holder = neighbours(tr)[0]
    with pytest.raises(ProtocolViolation, match="outside U1"):
        tr.clients[holder].unmask(UnmaskRequest(tuple(everyone), ("silo-99",), tuple(sigs)))


def test_a_survivor_set_with_a_stranger_is_refused_before_signing(fed: Federation) -> None:
    tr = transcript(fed)
    everyone = sorted(tr.clients)
    with pytest.raises(ProtocolViolation, match="outside U1"):
        tr.clients[VICTIM].sign_survivors([*everyone, "silo-99"])
    assert not tr.clients[VICTIM].holds_secrets


# --- routing between non-neighbours ------------------------------------------------------------------------------


def test_a_share_from_a_non_neighbour_is_refused(fed: Federation) -> None:
    """A colluding silo that is not the victim's neighbour encrypts a well-formed share to it; it decrypts, so
    the graph is the only reason the victim refuses it."""
    config = make_config(fed, length=16, threshold=3, graph_degree=K, min_cohort=3)
    server = SecAggServer(config=config, roster=fed.roster)
    randomness: dict[str, RecordingRng] = {}
    clients = make_clients(fed, config, randomness=randomness)
    for client in clients.values():
        server.receive_advertisement(client.advertise())
    ads = server.close_advertise()
    messages = {s: c.share_keys(ads) for s, c in clients.items()}
    stranger = next(
        s for s in sorted(clients) if s not in server.graph.closed_neighbourhood(VICTIM)
    )
    with pytest.raises(ProtocolError, match="every neighbour in U1"):
        server.receive_shares(
            ShareKeys(stranger, (*messages[stranger].shares, messages[VICTIM].shares[0]))
        )
    for message in messages.values():
        server.receive_shares(message)
    inbox = server.close_share_keys()
    tr_like = Transcript(fed, config, server, clients, ads, inbox, {}, {}, (), randomness)
    victim_ad = next(ad for ad in ads if ad.silo == VICTIM)
    forged = encrypt_share(
        clients[VICTIM].session_id,
        tr_like.enc_key(stranger),
        stranger,
        victim_ad,
        b"\1" * 160,
        seeded_rng(9),
    )
    with pytest.raises(ProtocolViolation, match="not a neighbour"):
        clients[VICTIM].open_inbox((*inbox[VICTIM], forged))
    assert not clients[VICTIM].holds_secrets


def test_the_server_refuses_unmask_shares_for_peers_outside_the_responders_neighbourhood(
    fed: Federation,
) -> None:
    tr = transcript(fed)
    everyone = sorted(tr.clients)
    for s in everyone:
        tr.server.receive_survivor_signature(tr.clients[s].sign_survivors(everyone))
    request = tr.server.close_consistency()
    response = tr.clients[VICTIM].unmask(request)
    stranger = next(s for s in everyone if s not in tr.server.graph.closed_neighbourhood(VICTIM))
    padded = UnmaskResponse(
        VICTIM,
        {**response.self_mask_shares, stranger: next(iter(response.self_mask_shares.values()))},
        {},
    )
    with pytest.raises(ProtocolError, match="do not match the request"):
        tr.server.receive_unmask(padded)
    tr.server.receive_unmask(
        response
    )  # the honest response is still accepted: bad input changed nothing
