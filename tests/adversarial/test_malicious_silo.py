"""A malicious member silo over the wire (DESIGN 2 and 4.4): it lies in the unmask stage, and the ledger names it.

The coordinator is the real one (``MaskingRounds`` behind the real servicer, mTLS with the consortium's own
certificates) and every silo is a hand-driven :class:`~tests.e2e.harness.ManualSilo` on the real
``SecAggClient``. Silo a reveals its self-mask share of c's seed shifted by the inverse of its public Lagrange
coefficient: without the seed commitment the coordinator would unmask with c's seed plus 1, a valid seed, and
publish a model of pure noise. With it, a is recorded as a verification failure, the round completes from b's and
c's shares with the exact model, and the regulator's bundle verifies and reports the incident.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from audits import EventKind, build_report, write_bundle
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.rounds.audit import verify_bundle_dir
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    unmask_request_from_pb,
    unmask_response_to_pb,
)
from secagg import UnmaskResponse
from secagg.hazmat import shamir
from secagg.masking.messages import seed_commitment
from tests.e2e.harness import (
    Consortium,
    ManualSilo,
    exact,
    expected_model,
    integer_update,
    refused,
    running_coordinator,
    settings,
)
from tests.secagg.harness import lagrange_at_zero, moved, tampered

pytestmark = pytest.mark.e2e

LENGTH = 300


def test_a_silo_shifting_its_unmask_share_is_named_in_the_ledger_and_the_model_is_exact(
    trio: Consortium, tmp_path: Path
) -> None:
    roster = trio.roster
    index = roster.index
    units = {s: integer_update(i, LENGTH) for i, s in enumerate(trio.silos)}
    culprit, victim = "a", "c"  # n = 3, t = 2: a is in the first t = {a, b}
    db = tmp_path / "c.db"
    with running_coordinator(trio, db, settings(n=3, length=LENGTH, threshold=2)) as coord:
        silos = {s: ManualSilo(trio, s, coord.address) for s in trio.silos}
        try:
            for silo in silos.values():
                silo.advertise()
            for silo in silos.values():
                silo.share_keys()
            for s, silo in silos.items():
                silo.masked_input(exact(units[s]))
            for silo in silos.values():
                silo.sign_survivors()
            responses: dict[str, UnmaskResponse] = {}
            for s, silo in silos.items():
                assert silo.client is not None
                request = silo.stub.GetUnmaskRequest(silo.stage_request())
                responses[s] = silo.client.unmask(unmask_request_from_pb(request))
            a = silos[culprit]
            ads = a.stub.GetAdvertisements(a.stage_request()).advertisements
            committed = next(
                advertisement_from_pb(ad).seed_commitment for ad in ads if ad.silo == victim
            )

            shift = pow(
                lagrange_at_zero([index("a"), index("b")], index(culprit)), -1, shamir.PRIME
            )
            share = responses[culprit].self_mask_shares[victim]
            evil = tampered(responses[culprit], self_mask={victim: moved(share, shift)})
            # positive control: what an unchecked coordinator reconstructs from the first t = {a, b}
            honest = shamir.reconstruct(
                {index(s): responses[s].self_mask_shares[victim] for s in ("b", "c")}, threshold=2
            )
            unchecked = shamir.reconstruct(
                {
                    index("a"): evil.self_mask_shares[victim],
                    index("b"): responses["b"].self_mask_shares[victim],
                },
                threshold=2,
            )
            assert int.from_bytes(unchecked, "big") == int.from_bytes(honest, "big") + 1
            assert a.config is not None
            assert seed_commitment(a.config, victim, honest) == committed
            assert seed_commitment(a.config, victim, unchecked) != committed

            for s, silo in silos.items():
                sent = evil if s == culprit else responses[s]
                silo.stub.Unmask(unmask_response_to_pb(trio.federation, silo.round, sent))
            results = [silo.result() for silo in silos.values()]
        finally:
            for silo in silos.values():
                silo.close()

        assert [r.state for r in results] == [pb.ROUND_STATE_COMPLETED] * 3
        assert list(results[0].survivors) == trio.silos  # a's own input still counts
        start = np.zeros(LENGTH, np.float32)
        assert np.array_equal(coord.model(1), expected_model(start, list(units.values())))
        audit = coord.service.audit
        failures = [
            e.event
            for e in audit.ledger.decoded()
            if e.event.kind is EventKind.VERIFICATION_FAILURE
        ]
        bundle, audit_key = tmp_path / "bundle", audit.signer.public_key
        write_bundle(
            audit.ledger,
            bundle,
            roster_bytes=trio.paths.roster.read_bytes(),
            audit_public_key=audit_key,
        )

    (failure,) = failures
    assert (failure.round, failure.body["silo"], failure.body["what"]) == (
        0,
        culprit,
        "unmask_shares",
    )
    reason = failure.body["reason"]
    assert "round 0" in reason and f"for {victim}" in reason
    assert "committed self-mask seed" in reason
    for response in (*responses.values(), evil):
        for secret in response.self_mask_shares.values():
            assert secret.hex() not in reason

    # the regulator's view: the bundle verifies and the report lists the incident against a
    verified, _ = verify_bundle_dir(
        bundle, audit_public_key=audit_key, consortium_public_key=trio.consortium_key
    )
    report = build_report(verified)
    (incident,) = [i for i in report["incidents"] if i["kind"] == "verification_failure"]
    assert incident["silo"] == culprit and incident["round"] == 0
    assert "unmask_shares" in incident["description"]


def test_an_advertisement_without_a_seed_commitment_is_refused_on_the_wire(
    trio: Consortium, tmp_path: Path
) -> None:
    """What an old client (or a silo hiding its seed) sends: no field 5. Refused before it reaches the round."""
    with (
        running_coordinator(trio, tmp_path / "c.db", settings(n=3, length=LENGTH)) as coord,
        ManualSilo(trio, "a", coord.address) as a,
    ):
        a.open_round()
        assert a.client is not None
        message = advertisement_to_pb(a.client.advertise())
        message.ClearField("seed_commitment")
        details = refused(
            coord,
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: a.stub.AdvertiseKeys(
                pb.AdvertiseKeysRequest(federation=trio.federation, round=0, advertisement=message)
            ),
        )
    assert "seed commitment" in details
