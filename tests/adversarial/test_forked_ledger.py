"""A coordinator that forks its audit log, withholds or forges witness statements, over real gRPC with mTLS.

The coordinator is the real one (``MaskingRounds`` behind the real ``FederationServicer`` and ``AuditServicer``,
mTLS with the consortium's coordinator certificate). The forking one keeps two ledgers, both signed with its
real audit key: silo b is shown one, a and c the other. Each silo's own witness accepts its view (each view is
append-only); only the silos' signed statements, exchanged through the coordinator, reveal the fork.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import CheckpointWitness, EventKind, Ledger
from audits.witness import sign_statement
from coordinator.common import ledger_origin
from coordinator.errors import AuditFailure
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.audit import AuditTrail
from coordinator.rounds.masking import MaskingRounds
from coordinator.sdk.masking import RoundReport
from coordinator.sdk.transport import Transport
from coordinator.server.app import bind_server
from coordinator.server.audit import AuditServicer
from coordinator.server.masking import FederationServicer
from coordinator.store import SQLiteStore
from tests.e2e.harness import (
    Consortium,
    audit_trail,
    exact,
    in_threads,
    integer_update,
    secure_channel,
    settings,
)

pytestmark = pytest.mark.e2e

LENGTH = 300
SILOS = ("a", "b", "c")


class ForkedTrail(AuditTrail):
    """Writes every event to the real ledger and to a twin that began with one extra entry (the fork)."""

    def __init__(self, main: AuditTrail, twin: AuditTrail) -> None:
        super().__init__(main.ledger, main.signer, federation=main.federation)
        self.twin = twin

    def record(self, kind: EventKind, round_: int | None, body: Any) -> int:
        self.twin.record(kind, round_, body)
        return super().record(kind, round_, body)

    def record_many(self, events: Iterable[tuple[EventKind, int | None, Any]]) -> None:
        items = list(events)
        self.twin.record_many(items)
        super().record_many(items)

    def checkpoint(self) -> Any:
        self.twin.checkpoint()
        return super().checkpoint()

    def close(self) -> None:
        self.twin.close()
        super().close()


class HonestAudit(AuditServicer):
    def __init__(self, rounds: MaskingRounds) -> None:
        super().__init__(rounds, revoked=frozenset(), insecure=False)


class ForkingAudit(HonestAudit):
    """Serves silo b the twin ledger and everyone else the real one (statements are relayed honestly)."""

    def _ledger(self, context: grpc.ServicerContext) -> Ledger:
        trail = self._rounds.audit
        assert isinstance(trail, ForkedTrail)
        return trail.twin.ledger if self._caller(context) == "b" else trail.ledger


class WithholdingC(HonestAudit):
    """Drops silo c's statements from what it relays."""

    def GetStatements(
        self, request: pb.StatementsRequest, context: grpc.ServicerContext
    ) -> pb.Statements:
        served = super().GetStatements(request, context)
        return pb.Statements(statements=[s for s in served.statements if s.silo != "c"])


class ForgingC(HonestAudit):
    """Relays, as silo c's, a statement it signed itself (with a key that is not c's roster key)."""

    def GetStatements(
        self, request: pb.StatementsRequest, context: grpc.ServicerContext
    ) -> pb.Statements:
        served = super().GetStatements(request, context)
        note = self._rounds.audit.ledger.latest_checkpoint()
        assert note is not None
        forged = sign_statement(
            Ed25519PrivateKey.generate(), federation=request.federation, silo="c", note=note.text
        )
        kept = [s for s in served.statements if s.silo != "c"]
        return pb.Statements(
            statements=[
                *kept,
                pb.WitnessStatement(
                    federation=forged.federation,
                    silo="c",
                    note=forged.note,
                    signature=forged.signature,
                ),
            ]
        )


@contextmanager
def coordinator(
    consortium: Consortium,
    tmp_path: Path,
    audit: type[HonestAudit],
    *,
    rounds: int = 1,
    fork: bool = False,
) -> Iterator[str]:
    db = tmp_path / "coordinator.db"
    store = SQLiteStore(db)
    trail = audit_trail(consortium, db)
    if fork:
        twin = audit_trail(consortium, tmp_path / "twin.db")
        twin.record(EventKind.INCIDENT, None, {"severity": "warning", "description": "b's view"})
        trail = ForkedTrail(trail, twin)
    service = MaskingRounds(
        settings=settings(n=3, rounds=rounds, length=LENGTH, threshold=2, min_cohort=3),
        roster=consortium.roster,
        store=store,
        initial_model=np.zeros(LENGTH, np.float32),
        audit=trail,
    )

    def add(server: grpc.Server, shared: dict[str, Any]) -> str:
        pb_grpc.add_FederationServicer_to_server(FederationServicer(service, **shared), server)
        pb_grpc.add_AuditServicer_to_server(audit(service), server)  # replaces the honest one
        return "coordinator.proto.v1.Federation"

    server, port = bind_server(service, "127.0.0.1:0", add, tls=consortium.coordinator_tls())
    server.start()
    service.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        service.stop()
        server.stop(0).wait()
        store.close()
        service.audit.close()


def witnessed_rounds(
    trio: Consortium, address: str, tmp_path: Path, *, rounds: int = 1
) -> dict[str, list[RoundReport] | AuditFailure]:
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())

    def silo(name: str) -> Any:
        def take_part() -> list[RoundReport] | AuditFailure:
            path = tmp_path / f"{name}-witness.sqlite"
            with trio.sdk(name, address, audit_public_key=pinned, witness_path=path) as client:
                try:
                    return list(
                        client.run(
                            lambda ctx: exact(integer_update(100 * ctx.round + ord(name), LENGTH)),
                            max_rounds=rounds,
                        )
                    )
                except AuditFailure as exc:
                    return exc

        return take_part

    return dict(zip(SILOS, in_threads(*[silo(n) for n in SILOS]), strict=True))


def local_records(trio: Consortium, tmp_path: Path, silo: str, kind: str) -> list[Any]:
    pinned = bytes.fromhex(trio.paths.audit_public_key.read_text().strip())
    with CheckpointWitness(
        tmp_path / f"{silo}-witness.sqlite",
        audit_public_key=pinned,
        origin=ledger_origin(trio.federation),
    ) as witness:
        return [r.body for r in witness.records(kind)]


def test_honest_statements_pass_and_every_peer_is_checked(trio: Consortium, tmp_path: Path) -> None:
    """Defence, honest side: two rounds; every silo publishes, sees its peers and finds no fork."""
    with coordinator(trio, tmp_path, HonestAudit, rounds=2) as address:
        reports = witnessed_rounds(trio, address, tmp_path, rounds=2)
    assert all(isinstance(r, list) and len(r) == 2 for r in reports.values()), reports
    for name in SILOS:
        assert local_records(trio, tmp_path, name, "audit_failure") == []
        seen = local_records(trio, tmp_path, name, "peer_statements")
        assert len(seen) == 2
        # by the second round every peer's first-round statement at least has been relayed
        assert set(seen[-1]["sizes"]) == set(SILOS) - {name}


def test_a_coordinator_serving_two_forks_is_caught_within_one_round(
    trio: Consortium, tmp_path: Path
) -> None:
    """Attack: b is shown one ledger, a and c another (each append-only, both signed). Defence: a silo that
    sees a statement from the other side finds no consistency proof and raises AuditFailure in round 0."""
    with coordinator(trio, tmp_path, ForkingAudit, fork=True) as address:
        reports = witnessed_rounds(trio, address, tmp_path)
    caught = {name: r for name, r in reports.items() if isinstance(r, AuditFailure)}
    assert caught, reports
    assert all("fork" in str(exc) for exc in caught.values()), caught
    for name in caught:
        (failure,) = local_records(trio, tmp_path, name, "audit_failure")
        assert failure["check"] == "statements" and "fork" in failure["reason"]


def test_without_the_statement_exchange_the_fork_goes_unnoticed(
    trio: Consortium, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positive control: the same fork passes every silo's own witness (consistency, completeness)."""
    monkeypatch.setattr(Transport, "exchange_statements", lambda *args, **kwargs: [])
    with coordinator(trio, tmp_path, ForkingAudit, fork=True) as address:
        reports = witnessed_rounds(trio, address, tmp_path)
    assert all(isinstance(r, list) for r in reports.values()), reports


def test_withheld_statements_are_reported(
    trio: Consortium, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: the coordinator never relays c's statements. Defence: after k=2 rounds a and b warn and record
    it locally; c's own view is not affected."""
    with (
        caplog.at_level(logging.WARNING, logger="coordinator.sdk.transport"),
        coordinator(trio, tmp_path, WithholdingC, rounds=2) as address,
    ):
        reports = witnessed_rounds(trio, address, tmp_path, rounds=2)
    assert all(isinstance(r, list) and len(r) == 2 for r in reports.values()), reports
    for name in ("a", "b"):
        withheld = local_records(trio, tmp_path, name, "withheld")
        assert withheld and "c" in withheld[-1]["silos"] and withheld[-1]["rounds"] == 2
    assert "withholding" in caplog.text
    assert all("c" not in w["silos"] for w in local_records(trio, tmp_path, "c", "withheld"))


def test_a_forged_statement_is_refused(trio: Consortium, tmp_path: Path) -> None:
    """Attack: the coordinator relays a statement for c it signed itself. Defence: a and b refuse it (not
    signed by c's pinned roster key) with AuditFailure and record why."""
    with coordinator(trio, tmp_path, ForgingC) as address:
        reports = witnessed_rounds(trio, address, tmp_path)
    for name in ("a", "b"):
        caught = reports[name]
        assert isinstance(caught, AuditFailure), reports
        assert "not signed by its roster key" in str(caught)
        (failure,) = local_records(trio, tmp_path, name, "audit_failure")
        assert failure["peer"] == "c"


def test_the_coordinator_refuses_a_statement_not_signed_by_the_caller(
    trio: Consortium, tmp_path: Path
) -> None:
    """A caller cannot publish a statement in another silo's name, nor one its roster key did not sign."""
    with coordinator(trio, tmp_path, HonestAudit) as address:
        channel = secure_channel(address, trio.silo_tls("a"))
        audit = pb_grpc.AuditStub(channel)
        note = "not a checkpoint"

        def publish(silo: str, key: Ed25519PrivateKey) -> grpc.StatusCode:
            s = sign_statement(key, federation=trio.federation, silo=silo, note=note)
            message = pb.WitnessStatement(
                federation=s.federation, silo=s.silo, note=s.note, signature=s.signature
            )
            try:
                audit.PublishStatement(message, timeout=10)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        try:
            assert publish("a", Ed25519PrivateKey.generate()) is grpc.StatusCode.INVALID_ARGUMENT
            assert publish("b", trio.signing_key("b")) is grpc.StatusCode.PERMISSION_DENIED
            assert publish("a", trio.signing_key("a")) is grpc.StatusCode.OK
            served = audit.GetStatements(pb.StatementsRequest(federation=trio.federation))
            assert [s.silo for s in served.statements] == ["a"]
        finally:
            channel.close()
