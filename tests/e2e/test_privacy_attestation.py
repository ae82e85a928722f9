"""Signed privacy attestations end to end (issue 4): the coordinator refuses what under-reports or does not verify.

Every silo's training result here is :class:`DpUpdate`, a small stand-in for ``dp.training.RoundResult`` that
needs no torch: an exact update plus the silo's real DP-SGD history, from which it builds a real
``dp.accounting.PrivacyAttestation`` whose epsilon comes from the real RDP accountant. Honest silos run the real
SDK (which binds the attestation to the round's session id, signs it with the silo's roster key and sends it on
the first upload chunk); the misbehaving silo is driven by hand (:class:`AttestingSilo`) so a test can send
exactly the attestation it wants and check the gRPC status, the audit ledger and the store.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import EventKind, LedgerEntry, build_report, write_bundle
from coordinator.common import RoundStatus
from coordinator.config import PrivacyConfig
from coordinator.errors import PrivacyRefused, Unauthorized
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.rounds.audit import verify_bundle_dir
from coordinator.rounds.driver import FederationSettings
from coordinator.sdk.masking import PrivateUpdate, RoundContext, RoundReport
from dp.accounting import (
    DP_SGD_MECHANISM,
    MechanismStep,
    PrivacyAttestation,
    RdpAccountant,
    library_versions,
    recompute_epsilon,
)
from tests.e2e.harness import (
    SHORT,
    Consortium,
    Coordinator,
    ManualSilo,
    audit_trail,
    deadlines_with,
    exact,
    expected_model,
    in_threads,
    integer_update,
    received_words,
    refused,
    running_coordinator,
    settings,
    wait_until,
)

pytestmark = pytest.mark.e2e

LENGTH = 1000
DELTA = 1e-5
MAX_GRAD_NORM = 1.0
# One round of local DP-SGD: 20 noisy steps at sigma 1.1 and Poisson rate 0.05 (epsilon ~2.0 at delta 1e-5).
STEP = MechanismStep(noise_multiplier=1.1, sample_rate=0.05, steps=20)
# A silo that samples four times as much per step spends ~6.4 in one round.
GREEDY_STEP = MechanismStep(noise_multiplier=1.1, sample_rate=0.2, steps=20)


def units(silo: str, round_: int) -> npt.NDArray[np.int64]:
    return integer_update(100 * round_ + ord(silo), LENGTH)


@dataclass(frozen=True)
class DpUpdate:
    """A silo's private round without torch: satisfies ``coordinator.sdk.masking.PrivateUpdate``.

    Attributes:
        update: the (exactly quantizable) model update.
        history: every round this silo has trained, this one last: what its RDP accountant has recorded.
        delta: the silo's delta.
        claim_factor: 1.0 for an honest silo; below 1 the silo under-reports its spend by that factor.
    """

    update: npt.NDArray[np.float64] = field(repr=False)
    history: tuple[MechanismStep, ...]
    delta: float = DELTA
    claim_factor: float = 1.0

    def attestation(
        self,
        *,
        federation: str,
        round: int,
        session_id: str,
        silo: str,
    ) -> PrivacyAttestation:
        accountant = RdpAccountant(history=self.history)
        step = self.history[-1]
        return PrivacyAttestation(
            federation=federation,
            round=round,
            session_id=session_id,
            silo=silo,
            mechanism=DP_SGD_MECHANISM,
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
            max_grad_norm=MAX_GRAD_NORM,
            accountant=accountant.describe()["accountant"],
            epsilon=accountant.epsilon(self.delta) * self.claim_factor,
            delta=self.delta,
            library_versions=library_versions(),
        )


def dp_update(silo: str, round_: int, step: MechanismStep = STEP, **kwargs: float) -> DpUpdate:
    """Round ``round_`` of a silo that trained ``step`` in every round so far."""
    return DpUpdate(exact(units(silo, round_)), (step,) * (round_ + 1), **kwargs)


def sdk_silo(
    consortium: Consortium,
    silo: str,
    address: str,
    *,
    rounds: int = 1,
    step: MechanismStep = STEP,
) -> list[RoundReport]:
    """An honest silo on the real SDK, attesting ``step`` every round."""

    def train(ctx: RoundContext) -> PrivateUpdate:
        return dp_update(silo, ctx.round, step)

    with consortium.sdk(silo, address) as client:
        return list(client.run(train, max_rounds=rounds))


class AttestingSilo(ManualSilo):
    """A hand-driven silo whose masked upload carries an attestation on its first chunk, as the SDK sends it."""

    payload = b""
    signature = b""
    _masked: npt.NDArray[np.uint32] | None = None

    @property
    def session_id(self) -> str:
        assert self.client is not None
        return self.client.session_id.hex()

    def attest(self, update: DpUpdate, **binding: object) -> PrivacyAttestation:
        """``update``'s attestation bound to this round, with any binding field overridden."""
        facts = update.attestation(
            federation=self.federation, round=self.round, session_id=self.session_id, silo=self.silo
        )
        return dataclasses.replace(facts, **binding)  # type: ignore[arg-type]

    def use(self, attestation: PrivacyAttestation, key: Ed25519PrivateKey | None = None) -> None:
        """Send ``attestation`` (signed by ``key``, by default this silo's roster key) with the next upload."""
        self.payload = json.dumps(attestation.to_dict(), sort_keys=True).encode("utf-8")
        self.signature = (key or self._key).sign(attestation.signing_payload())

    def mask(self, update: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        """The masked vector, computed once (the protocol client masks once per round; a retry resends it)."""
        if self._masked is None:
            self._masked = super().mask(update)
        return self._masked

    def chunks(self, masked: npt.NDArray[np.uint32], chunk_words: int) -> Iterator[pb.MaskedChunk]:
        for i, chunk in enumerate(super().chunks(masked, chunk_words)):
            if i == 0:
                chunk.attestation = self.payload
                chunk.attestation_signature = self.signature
            yield chunk

    def upload(self, masked: npt.NDArray[np.uint32], *, chunk_words: int = 256) -> None:
        self.stub.UploadMaskedInput(self.chunks(masked, chunk_words))

    def finish(self) -> pb.RoundResult:
        """Stages 4 and 5 and the result, after a successful upload."""
        self.sign_survivors()
        self.unmask()
        return self.result()


def with_privacy(base: FederationSettings, privacy: PrivacyConfig | None) -> FederationSettings:
    return dataclasses.replace(base, privacy=privacy)


def events(coord: Coordinator, kind: EventKind) -> list[LedgerEntry]:
    return [e for e in coord.service.audit.ledger.decoded() if e.event.kind is kind]


def attestations(coord: Coordinator, round_: int | None = None) -> dict[str, LedgerEntry]:
    """The ledger's privacy attestations (of one round), by silo; fails if a silo has two."""
    found: dict[str, LedgerEntry] = {}
    for entry in events(coord, EventKind.PRIVACY_ATTESTATION):
        if round_ is None or entry.event.round == round_:
            silo = entry.event.body["silo"]
            assert silo not in found, f"two attestations of {silo} in round {round_}"
            found[silo] = entry
    return found


def prepared(silo: AttestingSilo, round_: int = 0) -> npt.NDArray[np.uint32]:
    """Stages 1-2, then the masked vector of ``silo``'s update (not yet uploaded)."""
    silo.advertise()
    silo.share_keys()
    return silo.mask(exact(units(silo.silo, round_)))


# -- 1. honest attestations ----------------------------------------------------------------------------------
def test_honest_attestations_are_recorded_and_history_accumulates(
    trio: Consortium, tmp_path: Path
) -> None:
    rounds = 3
    config = with_privacy(
        settings(n=3, rounds=rounds, length=LENGTH), PrivacyConfig(epsilon=10.0, delta=DELTA)
    )
    with running_coordinator(trio, tmp_path / "c.db", config) as coord:
        reports = in_threads(
            *[lambda s=s: sdk_silo(trio, s, coord.address, rounds=rounds) for s in trio.silos]
        )
        records = coord.rounds()
        histories = {s: coord.service.audit.history(s) for s in trio.silos}
        by_round = [attestations(coord, r) for r in range(rounds)]
        refusals = events(coord, EventKind.BUDGET_REFUSAL)

    assert [r.status for r in records] == [RoundStatus.COMPLETED] * rounds
    for silo_reports in reports:
        assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED] * rounds
    assert refusals == []
    for r, logged in enumerate(by_round):
        assert sorted(logged) == trio.silos
        for silo, entry in logged.items():
            body = entry.event.body
            claimed = body["attestation"]["epsilon"]
            # the coordinator's own recomputation over the silo's whole history equals the honest claim
            assert body["recomputed_epsilon"] == pytest.approx(claimed, rel=1e-12)
            assert claimed == pytest.approx(recompute_epsilon([STEP] * (r + 1), DELTA), rel=1e-12)
            assert body["attestation"]["silo"] == silo and body["attestation"]["round"] == r
            assert "flagged" not in body
    # composition across rounds: epsilon strictly grows, and the coordinator's history has every round
    for silo in trio.silos:
        assert histories[silo] == (STEP,) * rounds
        spent = [by_round[r][silo].event.body["recomputed_epsilon"] for r in range(rounds)]
        assert spent == sorted(spent) and len(set(spent)) == rounds


# -- 2. under-reported epsilon -------------------------------------------------------------------------------
def test_under_reported_epsilon_is_refused_and_the_round_goes_on(
    consortium: Consortium, tmp_path: Path
) -> None:
    config = settings(n=4, length=LENGTH, deadlines=deadlines_with(masked_input=SHORT))
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        liar = AttestingSilo(consortium, "d", coord.address)

        def lie() -> str:
            masked = prepared(liar)
            liar.use(liar.attest(dp_update("d", 0, claim_factor=0.5)))
            details = refused(coord, grpc.StatusCode.PERMISSION_DENIED, lambda: liar.upload(masked))
            liar.close()  # d gives up: it counts as dropped
            return details

        *reports, details = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"], lie
        )
        (record,) = coord.rounds()
        new_model = coord.model(1)
        refusals = events(coord, EventKind.BUDGET_REFUSAL)
        logged = attestations(coord, 0)
        history = coord.service.audit.history("d")

    assert "privacy attestation refused" in details and "below the recomputed" in details
    (refusal,) = refusals
    body = refusal.event.body
    assert body["silo"] == "d" and refusal.event.round == 0
    assert body["check"]["under_reported"] is True and body["check"]["over_ceiling"] is False
    true_epsilon = recompute_epsilon([STEP], DELTA)
    assert body["check"]["claimed_epsilon"] == pytest.approx(0.5 * true_epsilon, rel=1e-12)
    assert body["check"]["recomputed_epsilon"] == pytest.approx(true_epsilon, rel=1e-12)
    # the refused claim never entered d's accepted history or the ledger's attestations
    assert sorted(logged) == ["a", "b", "c"] and history == ()
    assert record.status is RoundStatus.COMPLETED
    assert (record.survivors, record.dropped) == (("a", "b", "c"), ("d",))
    assert np.array_equal(
        new_model,
        expected_model(np.zeros(LENGTH, np.float32), [units(s, 0) for s in "abc"]),
    )
    for silo_reports in reports:
        assert isinstance(silo_reports, list)
        assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED]


# -- 3 and 4. signatures and binding -------------------------------------------------------------------------
def _tampered_signature(silo: AttestingSilo, consortium: Consortium) -> list[tuple[str, bytes]]:
    """(what, details) for each attestation that must be INVALID_ARGUMENT; call between mask and upload."""
    honest = silo.attest(dp_update(silo.silo, 0))
    cases: list[tuple[str, bytes]] = []
    silo.use(honest, key=consortium.signing_key("a"))  # another silo's roster key
    cases.append(("another silo's key", silo.signature))
    silo.use(honest)
    flipped = bytearray(silo.signature)
    flipped[10] ^= 0x01
    cases.append(("a flipped signature byte", bytes(flipped)))
    return cases


def test_attestation_with_a_bad_signature_is_refused(
    consortium: Consortium, tmp_path: Path
) -> None:
    config = settings(n=4, length=LENGTH)
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        d = AttestingSilo(consortium, "d", coord.address)
        seen: list[str] = []

        def forge_then_behave() -> pb.RoundResult:
            masked = prepared(d)
            for what, signature in _tampered_signature(d, consortium):
                d.signature = signature
                details = refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: d.upload(masked))
                seen.append(f"{what}: {details}")
            # a signed attestation whose body was edited after signing (epsilon doubled) fails too
            honest = d.attest(dp_update("d", 0))
            d.use(honest)
            d.payload = json.dumps(
                dataclasses.replace(honest, epsilon=2 * honest.epsilon).to_dict(), sort_keys=True
            ).encode("utf-8")
            seen.append(
                "edited body: "
                + refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: d.upload(masked))
            )
            # the refusals changed nothing: d's correctly signed attestation is still accepted
            d.use(honest)
            d.upload(masked)
            return d.finish()

        *_, result = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            forge_then_behave,
        )
        failures = events(coord, EventKind.VERIFICATION_FAILURE)
        logged = attestations(coord, 0)
        (record,) = coord.rounds()

    assert len(seen) == 3
    assert all("signature does not verify" in s for s in seen), seen
    assert len(failures) == 3
    for failure in failures:
        body = failure.event.body
        assert (body["silo"], body["what"], failure.event.round) == ("d", "privacy_attestation", 0)
    assert sorted(logged) == ["a", "b", "c", "d"]  # exactly one (the honest) attestation of d
    assert isinstance(result, pb.RoundResult)
    assert result.state == pb.ROUND_STATE_COMPLETED
    assert record.survivors == ("a", "b", "c", "d")


def test_attestation_bound_to_another_round_session_or_silo_is_refused(
    consortium: Consortium, tmp_path: Path
) -> None:
    config = settings(n=4, length=LENGTH)
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        d = AttestingSilo(consortium, "d", coord.address)
        seen: list[str] = []

        def replay_then_behave() -> pb.RoundResult:
            masked = prepared(d)
            update = dp_update("d", 0)
            for binding in (
                {"round": 1},
                {"session_id": "ab" * 32},
                {"federation": "another-federation"},
                {"silo": "c"},  # d signs, with its own key, an attestation naming c
            ):
                d.use(d.attest(update, **binding))
                seen.append(
                    refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: d.upload(masked))
                )
            d.use(d.attest(update))
            d.upload(masked)
            return d.finish()

        *_, result = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            replay_then_behave,
        )
        logged = attestations(coord, 0)
        history = coord.service.audit.history("d")

    assert len(seen) == 4
    assert all("not bound to this federation, round, silo and session" in s for s in seen), seen
    assert isinstance(result, pb.RoundResult)
    assert result.state == pb.ROUND_STATE_COMPLETED
    assert logged["d"].event.body["attestation"]["session_id"] != "ab" * 32
    assert history == (STEP,)


# -- 5. the federation ceiling -------------------------------------------------------------------------------
CEILING = PrivacyConfig(epsilon=4.0, delta=DELTA)


def _greedy_sdk_silo(consortium: Consortium, address: str) -> BaseException | list[RoundReport]:
    try:
        return sdk_silo(consortium, "d", address, step=GREEDY_STEP)
    except Unauthorized as exc:
        return exc


def test_attestation_over_the_ceiling_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    config = with_privacy(
        settings(n=4, length=LENGTH, deadlines=deadlines_with(masked_input=SHORT)), CEILING
    )
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        *reports, greedy = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            lambda: _greedy_sdk_silo(consortium, coord.address),
        )
        (record,) = coord.rounds()
        refusals = events(coord, EventKind.BUDGET_REFUSAL)
        logged = attestations(coord, 0)

    # the SDK surfaces the refusal (PERMISSION_DENIED) as PrivacyRefused, with the coordinator's reason
    assert isinstance(greedy, PrivacyRefused), greedy
    assert "exceeds the federation ceiling" in str(greedy)
    (refusal,) = refusals
    check = refusal.event.body["check"]
    assert refusal.event.body["silo"] == "d"
    assert check["over_ceiling"] is True and check["under_reported"] is False
    assert check["ceiling_epsilon"] == CEILING.epsilon
    assert check["recomputed_epsilon"] == pytest.approx(
        recompute_epsilon([GREEDY_STEP], DELTA), rel=1e-12
    )
    assert check["recomputed_epsilon"] > CEILING.epsilon
    assert sorted(logged) == ["a", "b", "c"]
    assert record.status is RoundStatus.COMPLETED
    assert (record.survivors, record.dropped) == (("a", "b", "c"), ("d",))
    for silo_reports in reports:
        assert isinstance(silo_reports, list)
        assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED]


def test_attestation_over_the_ceiling_is_flagged_when_configured(
    consortium: Consortium, tmp_path: Path
) -> None:
    flag = CEILING.model_copy(update={"on_violation": "flag"})
    config = with_privacy(settings(n=4, length=LENGTH), flag)
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        reports = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            lambda: sdk_silo(consortium, "d", coord.address, step=GREEDY_STEP),
        )
        (record,) = coord.rounds()
        incidents = events(coord, EventKind.INCIDENT)
        refusals = events(coord, EventKind.BUDGET_REFUSAL)
        logged = attestations(coord, 0)

    assert refusals == []
    assert record.status is RoundStatus.COMPLETED
    assert record.survivors == ("a", "b", "c", "d")
    for silo_reports in reports:
        assert [r.status for r in silo_reports] == [RoundStatus.COMPLETED]
    (incident,) = incidents
    assert incident.event.body["silo"] == "d"
    assert incident.event.body["severity"] == "warning"
    assert "exceeds the federation ceiling" in incident.event.body["description"]
    assert "exceeds the federation ceiling" in logged["d"].event.body["flagged"]
    assert all("flagged" not in logged[s].event.body for s in "abc")
    # flagged, not refused: the spend is on the record and counts in d's history
    assert logged["d"].event.body["recomputed_epsilon"] > CEILING.epsilon


def test_flagged_under_report_is_accepted_and_the_ledger_still_verifies(
    consortium: Consortium, tmp_path: Path
) -> None:
    config = with_privacy(
        settings(n=4, length=LENGTH), CEILING.model_copy(update={"on_violation": "flag"})
    )
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        d = AttestingSilo(consortium, "d", coord.address)

        def under_report() -> pb.RoundResult:
            masked = prepared(d)
            d.use(d.attest(dp_update("d", 0, claim_factor=0.5)))
            d.upload(masked)
            return d.finish()

        *_, result = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"], under_report
        )
        incidents = events(coord, EventKind.INCIDENT)
        logged = attestations(coord, 0)
    assert isinstance(result, pb.RoundResult)
    assert result.state == pb.ROUND_STATE_COMPLETED
    (incident,) = incidents
    assert "below the recomputed" in incident.event.body["description"]
    assert "below the recomputed" in logged["d"].event.body["flagged"]

    trail = audit_trail(consortium, tmp_path / "c.db")
    try:
        write_bundle(
            trail.ledger,
            tmp_path / "bundle",
            roster_bytes=consortium.paths.roster.read_bytes(),
            audit_public_key=trail.signer.public_key,
        )
    finally:
        trail.close()
    verified, _ = verify_bundle_dir(
        tmp_path / "bundle",
        audit_public_key=trail.signer.public_key,
        consortium_public_key=consortium.consortium_key,
    )
    report = build_report(verified)
    assert any(i["silo"] == "d" and i["kind"] == "incident" for i in report["incidents"])


# -- 6. attestation required ---------------------------------------------------------------------------------
def test_upload_without_a_required_attestation_is_refused(
    consortium: Consortium, tmp_path: Path
) -> None:
    config = with_privacy(settings(n=4, length=LENGTH), CEILING)
    assert config.privacy is not None and config.privacy.require_attestation
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        d = AttestingSilo(consortium, "d", coord.address)

        def bare_then_attested() -> tuple[str, pb.RoundResult]:
            masked = prepared(d)
            details = refused(coord, grpc.StatusCode.PERMISSION_DENIED, lambda: d.upload(masked))
            d.use(d.attest(dp_update("d", 0)))
            d.upload(masked)
            return details, d.finish()

        *_, outcome = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            bare_then_attested,
        )
        assert isinstance(outcome, tuple)
        details, result = outcome
        refusals = events(coord, EventKind.BUDGET_REFUSAL)
        logged = attestations(coord, 0)

    assert "no signed privacy attestation" in details
    (refusal,) = refusals
    assert refusal.event.body["silo"] == "d" and refusal.event.round == 0
    assert "no signed privacy attestation" in refusal.event.body["reason"]
    assert isinstance(result, pb.RoundResult)
    assert result.state == pb.ROUND_STATE_COMPLETED
    assert sorted(logged) == ["a", "b", "c", "d"]


# -- 7. retries ----------------------------------------------------------------------------------------------
def test_retried_upload_with_the_same_attestation_is_counted_once(
    consortium: Consortium, tmp_path: Path
) -> None:
    config = with_privacy(settings(n=4, length=LENGTH), CEILING)
    with running_coordinator(consortium, tmp_path / "c.db", config) as coord:
        d = AttestingSilo(consortium, "d", coord.address)
        statuses: list[grpc.StatusCode] = []
        changed: list[str] = []

        def break_then_retry() -> pb.RoundResult:
            update = dp_update("d", 0)
            masked = prepared(d)
            d.use(d.attest(update))
            # first attempt: the attestation is verified and logged, 3 of 10 chunks arrive, the stream breaks
            first = (d.payload, d.signature)
            statuses.append(
                d.broken_upload(
                    update.update,
                    chunk_words=100,
                    send=3,
                    arrived=lambda: wait_until(
                        lambda: received_words(coord, "d") == 300, what="d's first chunks"
                    ),
                )
            )
            # the coordinator notices the broken stream asynchronously: retry once it has rolled it back
            wait_until(
                lambda: received_words(coord, "d") == 0, what="d's broken upload rolled back"
            )
            # a retry may not change what it attests (here: a higher, still honest-looking claim)
            d.use(dataclasses.replace(d.attest(update), epsilon=2 * d.attest(update).epsilon))
            changed.append(
                refused(coord, grpc.StatusCode.INVALID_ARGUMENT, lambda: d.upload(masked))
            )
            # the identical attestation is accepted again, without a second ledger entry
            d.payload, d.signature = first
            d.upload(masked)
            return d.finish()

        *_, result = in_threads(
            *[lambda s=s: sdk_silo(consortium, s, coord.address) for s in "abc"],
            break_then_retry,
        )
        logged = events(coord, EventKind.PRIVACY_ATTESTATION)
        history = coord.service.audit.history("d")
        (record,) = coord.rounds()

    assert statuses == [grpc.StatusCode.CANCELLED]
    assert "already attested round 0 differently" in changed[0]
    assert isinstance(result, pb.RoundResult)
    assert result.state == pb.ROUND_STATE_COMPLETED
    assert record.survivors == ("a", "b", "c", "d")
    assert [e.event.body["silo"] for e in logged].count("d") == 1
    assert history == (STEP,)
