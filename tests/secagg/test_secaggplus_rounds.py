"""SecAgg+ rounds (Bell et al., CCS 2020) through the real client and server roles: exact sums with dropouts at
every stage, sharing and masking only within neighbourhoods, and a clean abort when a neighbourhood loses more
than k + 1 - t of its members."""

from __future__ import annotations

import pytest

from secagg import RoundAborted, SecAggServer
from tests.secagg.harness import (
    garbage_share,
    make_clients,
    make_config,
    make_federation,
    random_inputs,
    ring_sum,
    run_round,
    run_to_consistency,
    seeded_rng,
    tampered,
    unmask_responses,
)

STAGES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")


@pytest.mark.parametrize("stage", STAGES)
def test_sum_is_exact_with_dropouts_at_each_stage(stage: str) -> None:
    fed = make_federation(14)
    config = make_config(fed, length=300, threshold=4, graph_degree=6, min_cohort=3)
    inputs = random_inputs(fed, 300, seed=3)
    gone = {"silo-03", "silo-09"}
    result = run_round(fed, config, inputs, drop={stage: gone}, chunk=128)
    in_sum = [s for s in fed.silos if stage in ("consistency", "unmask") or s not in gone]
    assert sorted(result.survivors) == sorted(in_sum)
    assert (result.total == ring_sum([inputs[s] for s in in_sum], 300)).all()
    assert not result.culprits


def test_sum_is_exact_with_dropouts_at_every_stage_of_one_round() -> None:
    fed = make_federation(20)
    config = make_config(
        fed, length=64, threshold=6, graph_degree=10, min_cohort=3
    )  # tolerates 5 of 11
    inputs = random_inputs(fed, 64, seed=4)
    drop = {stage: {f"silo-{3 * i + 1:02d}"} for i, stage in enumerate(STAGES)}
    result = run_round(fed, config, inputs, drop=drop)
    lost = {"silo-01", "silo-04", "silo-07"}  # gone before their masked input
    in_sum = [s for s in fed.silos if s not in lost]
    assert sorted(result.survivors) == in_sum
    assert (result.total == ring_sum([inputs[s] for s in in_sum], 64)).all()


def test_each_silo_shares_to_and_masks_with_its_neighbours_only() -> None:
    fed = make_federation(16)
    config = make_config(fed, length=32, threshold=4, graph_degree=4, min_cohort=3)
    server = SecAggServer(config=config, roster=fed.roster)
    clients = make_clients(fed, config)
    for client in clients.values():
        server.receive_advertisement(client.advertise())
    ads = server.close_advertise()
    for silo, client in clients.items():
        message = client.share_keys(ads)
        assert len(message.shares) == 4
        assert {s.recipient for s in message.shares} == server.graph.neighbours(silo)
        assert client.graph.neighbours(silo) == server.graph.neighbours(silo)
        server.receive_shares(message)
    inbox = server.close_share_keys()
    assert all(
        {s.sender for s in inbox[silo]} == server.graph.neighbours(silo) for silo in fed.silos
    )
    inputs = random_inputs(fed, 32, seed=5)
    for silo, client in clients.items():
        server.add_masked_chunk(silo, 0, client.masked_input(inbox[silo], inputs[silo]))
        server.finish_masked_input(silo)
    survivors = server.close_masked_input()
    for silo in survivors:
        server.receive_survivor_signature(clients[silo].sign_survivors(survivors))
    request = server.close_consistency()
    for silo in survivors:
        response = clients[silo].unmask(request)
        assert set(response.self_mask_shares) == server.graph.closed_neighbourhood(silo)
        assert not response.mask_key_shares
        server.receive_unmask(response)
    assert (server.close_unmask().total == ring_sum(inputs.values(), 32)).all()


def test_a_neighbourhood_that_loses_too_many_members_aborts_the_round_cleanly() -> None:
    fed = make_federation(14)
    config = make_config(fed, length=16, threshold=4, graph_degree=6, min_cohort=3)
    server = SecAggServer(config=config, roster=fed.roster)
    clients = make_clients(fed, config)
    for client in clients.values():
        server.receive_advertisement(client.advertise())
    ads = server.close_advertise()
    for client in clients.values():
        server.receive_shares(client.share_keys(ads))
    inbox = server.close_share_keys()
    victim = "silo-00"
    gone = set(sorted(server.graph.neighbours(victim))[:4])  # 7 - 4 = 3 < t remain in N[victim]
    inputs = random_inputs(fed, 16)
    for silo, client in clients.items():
        if silo not in gone:
            server.add_masked_chunk(silo, 0, client.masked_input(inbox[silo], inputs[silo]))
            server.finish_masked_input(silo)
    survivors = server.close_masked_input()
    with pytest.raises(
        RoundAborted, match="of this silo's neighbourhood submitted; the round needs 4"
    ):
        clients[victim].sign_survivors(survivors)
    assert not clients[victim].holds_secrets
    for silo in survivors:
        if silo != victim:
            try:
                server.receive_survivor_signature(clients[silo].sign_survivors(survivors))
            except RoundAborted:
                continue  # a neighbour of the victim may have lost too many neighbours as well
    request = server.close_consistency()
    signers = {sig.silo for sig in request.signatures}
    for silo in signers:
        try:
            server.receive_unmask(clients[silo].unmask(request))
        except Exception:
            continue
    with pytest.raises(RoundAborted, match="unmask"):
        server.close_unmask()


def test_a_holder_revealing_a_wrong_share_is_named_and_the_sum_stays_exact() -> None:
    """DESIGN 4.4 per neighbourhood: the server decodes each secret over the holders that hold it, names the
    liar and completes without its shares; the sum is exact."""
    fed = make_federation(14)
    config = make_config(fed, length=64, threshold=4, graph_degree=6, min_cohort=3)
    tr = run_to_consistency(fed, config)
    _, responses = unmask_responses(tr)
    liar = "silo-05"
    peer = sorted(tr.server.graph.neighbours(liar))[0]
    responses[liar] = tampered(responses[liar], self_mask={peer: garbage_share(seeded_rng(7))})
    for response in responses.values():
        tr.server.receive_unmask(response)
    result = tr.server.close_unmask()
    assert set(result.culprits) == {liar}
    assert peer in result.culprits[liar]
    assert (result.total == ring_sum(tr.inputs.values(), 64)).all()
