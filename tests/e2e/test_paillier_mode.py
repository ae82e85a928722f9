"""Paillier mode end to end over real mTLS gRPC on 127.0.0.1 port 0: exact sums, dropouts, aborts, the
decryption-oracle attack by a lying coordinator, and the audit ledger. Small (512-bit, insecure) keys keep it fast.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from audits import CheckpointSigner, EventKind, verify_bundle, write_bundle
from coordinator.common import RoundStatus, ledger_origin, model_hash
from coordinator.config import PrivacyConfig, ServeConfig, write_demo_configs
from coordinator.errors import PKIError, Unauthorized
from coordinator.pki import load_ed25519_private, load_private_key
from coordinator.pki.paillier import PaillierFiles, create_paillier_keys
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import paillier_pb2 as ppb
from coordinator.rounds.driver import FederationSettings
from coordinator.rounds.paillier import PaillierRounds
from coordinator.sdk.masking import RetryPolicy, RoundReport, SiloPolicy
from coordinator.sdk.paillier import PaillierRoundContext, PaillierSilo
from coordinator.server.app import start_coordinator
from coordinator.server.paillier import PaillierServicer, create_paillier_server
from coordinator.store import RoundRecord, SQLiteStore
from coordinator.wire.paillier import (
    challenge_from_pb,
    openings_to_pb,
    request_from_pb,
    request_to_pb,
)
from dp.accounting import (
    DP_SGD_MECHANISM,
    MechanismStep,
    PrivacyAttestation,
    RdpAccountant,
    library_versions,
)
from secagg.hazmat.paillier import ThresholdPublicKey, seal_share
from secagg.paillier import DecryptionRequest, SpotCheckChallenge, ceremony_context
from tests.e2e.harness import (
    FEDERATION,
    SCALE,
    Consortium,
    audit_trail,
    deadlines_with,
    exact,
    expected_model,
    in_threads,
    integer_update,
    settings,
    wait_until,
)

pytestmark = pytest.mark.e2e

KEY_BITS = 512  # insecure, tests only: the ceremony refuses it without insecure_test_key_size
THRESHOLD = 2
LENGTH = 600
COLLECT_SHORT = {"advertise": 1.0, "masked_input": 2.0}  # collect = advertise + masked_input = 3 s
# and a key holder that stopped (refused at upload) is waited for 2 s at the challenge stage
CHALLENGE_SHORT = {"challenge": 2.0}


def _paillier_consortium(directory: Path, silos: list[str]) -> Consortium:
    consortium = Consortium.create(directory, silos=silos)
    create_paillier_keys(
        consortium.paths, threshold=THRESHOLD, key_bits=KEY_BITS, insecure_test_key_size=True
    )
    return consortium


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Four silos a..d with a 2-of-4 Paillier key."""
    return _paillier_consortium(tmp_path_factory.mktemp("paillier4") / "pki", ["a", "b", "c", "d"])


@pytest.fixture(scope="module")
def trio3(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """Three silos a..c with a 2-of-3 Paillier key."""
    return _paillier_consortium(tmp_path_factory.mktemp("paillier3") / "pki", ["a", "b", "c"])


def public_key(consortium: Consortium) -> ThresholdPublicKey:
    path = PaillierFiles.for_silo(consortium.paths.root, consortium.silos[0]).public_key
    return ThresholdPublicKey.from_json(path.read_bytes())


# -- coordinator ------------------------------------------------------------------------------------------------
@dataclass
class Running:
    service: PaillierRounds
    port: int
    store: SQLiteStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rounds(self) -> list[RoundRecord]:
        return self.store.rounds(FEDERATION)

    def model(self, round_: int) -> npt.NDArray[np.float32]:
        return self.store.model(FEDERATION, round_)[0]


@contextmanager
def running(
    consortium: Consortium,
    db: Path,
    federation_settings: FederationSettings,
    *,
    liar: type[PaillierServicer] | None = None,
) -> Iterator[Running]:
    store = SQLiteStore(db)
    service = PaillierRounds(
        settings=federation_settings,
        roster=consortium.roster,
        store=store,
        initial_model=np.zeros(federation_settings.vector_length, np.float32),
        audit=audit_trail(consortium, db),
        public_key=public_key(consortium),
    )
    server, port = create_paillier_server(
        service,
        "127.0.0.1:0",
        tls=consortium.coordinator_tls(),
        servicer=liar(service) if liar is not None else None,
    )
    server.start()
    for silo in consortium.roster.members:
        service.join(silo)  # round 0 opens at once, as in tests.e2e.harness.running_coordinator
    service.start()
    try:
        yield Running(service, port, store)
    finally:
        service.stop()
        server.stop(0).wait()
        store.close()
        service.audit.close()


def paillier_settings(n: int, **kwargs: object) -> FederationSettings:
    return settings(n=n, length=LENGTH, threshold=THRESHOLD, **kwargs)  # type: ignore[arg-type]


# -- silos --------------------------------------------------------------------------------------------------------
def sdk(
    consortium: Consortium,
    silo: str,
    address: str,
    state: Path,
    policy: SiloPolicy = SiloPolicy(min_cohort=2),  # noqa: B008 (frozen: safe as a default)
) -> PaillierSilo:
    files = PaillierFiles.for_silo(consortium.paths.root, silo)
    key, share = files.load(
        federation=consortium.federation, consortium_key=consortium.consortium_key
    )
    return PaillierSilo(
        address=address,
        federation=consortium.federation,
        silo=silo,
        signing_key=consortium.signing_key(silo),
        roster=consortium.roster,
        consortium_key=consortium.consortium_key,
        tls=consortium.silo_tls(silo),
        public_key=key,
        share=share,
        state_dir=state / silo,
        policy=policy,
        retry=RetryPolicy(attempts=4, initial=0.1, maximum=0.5),
    )


def run_silo(
    consortium: Consortium,
    silo: str,
    address: str,
    state: Path,
    units: dict[tuple[str, int], npt.NDArray[np.int64]],
    max_rounds: int | None = None,
) -> list[RoundReport]:
    def train(ctx: PaillierRoundContext) -> npt.NDArray[np.float64]:
        assert ctx.weights.shape == (LENGTH,)
        return exact(units[silo, ctx.round])

    with sdk(consortium, silo, address, state) as client:
        return list(client.run(train, max_rounds=max_rounds))


def updates(silos: list[str], rounds: int) -> dict[tuple[str, int], npt.NDArray[np.int64]]:
    return {
        (s, r): integer_update(10 * r + i, LENGTH)
        for r in range(rounds)
        for i, s in enumerate(silos)
    }


# -- tests --------------------------------------------------------------------------------------------------------
def test_aggregate_is_the_exact_sum_and_fedavg_is_right(quad: Consortium, tmp_path: Path) -> None:
    silos, rounds = quad.silos, 2
    units = updates(silos, rounds)
    with running(quad, tmp_path / "c.db", paillier_settings(4, rounds=rounds)) as coord:
        reports = in_threads(
            *[lambda s=s: run_silo(quad, s, coord.address, tmp_path, units) for s in silos]
        )
        records = coord.rounds()
        models = [coord.model(r) for r in range(rounds + 1)]
    assert [r.status for r in records] == [RoundStatus.COMPLETED] * rounds
    for r in range(rounds):
        assert records[r].survivors == tuple(silos) and records[r].dropped == ()
        assert np.array_equal(
            models[r + 1], expected_model(models[r], [units[s, r] for s in silos])
        )
        assert records[r].new_model_hash == model_hash(models[r + 1])
    # round 0 starts from zeros and n = 4 is a power of two: the float32 model holds the integer sum exactly
    total = np.sum([units[s, 0] for s in silos], axis=0)
    assert np.array_equal(models[1].astype(np.float64) * SCALE * len(silos), total)
    for silo_reports in reports:
        assert [rep.status for rep in silo_reports] == [RoundStatus.COMPLETED] * rounds
        assert [rep.new_model_hash for rep in silo_reports] == [r.new_model_hash for r in records]


def test_a_silo_that_assumes_more_colluders_than_the_key_resists_takes_no_part(
    quad: Consortium, tmp_path: Path
) -> None:
    """t = 2: the federation assumes c = 0, silo d assumes c = 2 (then the coordinator and two silos hold t
    shares and could decrypt d's ciphertexts). d refuses the round before it encrypts anything; the others,
    whose policy accepts the key (the positive control), complete it without d."""
    units = updates(quad.silos, 1)
    config = paillier_settings(4, deadlines=deadlines_with(**COLLECT_SHORT, **CHALLENGE_SHORT))

    def silo(name: str) -> list[RoundReport] | Exception:
        policy = SiloPolicy(min_cohort=3, max_collusion_assumed=THRESHOLD if name == "d" else 0)
        try:
            with sdk(quad, name, coord.address, tmp_path, policy) as client:
                return list(client.run(lambda ctx: exact(units[name, ctx.round])))
        except Unauthorized as exc:  # d's refusal is the result under test
            return exc

    with running(quad, tmp_path / "c.db", config) as coord:
        outcomes = in_threads(*[lambda s=s: silo(s) for s in quad.silos])
        records = coord.rounds()
    assert isinstance(outcomes[3], Unauthorized)
    assert "unsafe against 2 colluding silos" in str(outcomes[3])
    assert "threshold t=2 must exceed collusion c=2" in str(outcomes[3])
    assert records[0].status is RoundStatus.COMPLETED
    assert (records[0].survivors, records[0].dropped) == (("a", "b", "c"), ("d",))


def test_a_substituted_public_key_or_key_share_is_refused_at_load(tmp_path: Path) -> None:
    """Whoever can write next to the roster replaces the joint key (with one whose shares it dealt) or one
    silo's sealed share. Each file is well formed and loads in the consortium that made it (the positive
    control); the silo refuses it: the key is not signed by its pinned consortium key, the share does not
    belong to the signed key."""
    ours = Consortium.create(tmp_path / "ours", silos=["a", "b", "c"])
    theirs = Consortium.create(tmp_path / "theirs", silos=["a", "b", "c"])
    mine = {s: PaillierFiles.for_silo(ours.paths.root, s) for s in ours.silos}
    create_paillier_keys(ours.paths, threshold=2, key_bits=KEY_BITS, insecure_test_key_size=True)
    x25519 = {  # their ceremony deals to our silos' own X25519 keys, so its shares are sealed to them
        s: load_private_key(
            mine[s].x25519_key
        )  # encrypted at rest; the suite's passphrase file opens it
        .public_key()
        .public_bytes_raw()  # type: ignore[union-attr]
        for s in ours.silos
    }
    for consortium, recipients in ((theirs, x25519),):
        create_paillier_keys(
            consortium.paths,
            threshold=2,
            key_bits=KEY_BITS,
            insecure_test_key_size=True,
            recipients=recipients,
        )
    other = PaillierFiles.for_silo(theirs.paths.root, "a")
    substituted = dataclasses.replace(mine["a"], public_key=other.public_key)
    with pytest.raises(PKIError, match="not signed by the pinned consortium key"):
        substituted.load(federation=ours.federation, consortium_key=ours.consortium_key)
    resigned = dataclasses.replace(substituted, signature=other.signature)  # their signature too
    with pytest.raises(PKIError, match="not signed by the pinned consortium key"):
        resigned.load(federation=ours.federation, consortium_key=ours.consortium_key)
    # positive control: their files, with our silo's X25519 key, load in their consortium
    theirs_for_a = dataclasses.replace(other, x25519_key=mine["a"].x25519_key)
    key, _ = theirs_for_a.load(federation=theirs.federation, consortium_key=theirs.consortium_key)
    assert (
        key.fingerprint()
        != ThresholdPublicKey.from_json(mine["a"].public_key.read_bytes()).fingerprint()
    )
    swapped_share = dataclasses.replace(mine["a"], share=other.share)
    with pytest.raises(PKIError, match="does not open"):
        swapped_share.load(federation=ours.federation, consortium_key=ours.consortium_key)
    # a tampered share, properly sealed to a's key for our ceremony: it opens, but is not a's share of the
    # signed key (positive control: the same share resealed untampered loads)
    public, share = mine["a"].load(federation=ours.federation, consortium_key=ours.consortium_key)
    context = ceremony_context(ours.federation, public)
    for secret, refusal in ((share.secret, None), (share.secret + 1, "verification key")):
        path = tmp_path / f"share-{secret - share.secret}.json"
        sealed = seal_share(dataclasses.replace(share, secret=secret), x25519["a"], context)
        path.write_text(sealed.to_json(), encoding="utf-8")
        resealed = dataclasses.replace(mine["a"], share=path)
        if refusal is None:
            assert resealed.load(federation=ours.federation, consortium_key=ours.consortium_key)
        else:
            with pytest.raises(PKIError, match=refusal):
                resealed.load(federation=ours.federation, consortium_key=ours.consortium_key)


def test_the_coordinator_serves_only_the_joint_key_the_consortium_signed(tmp_path: Path) -> None:
    """``secagg serve`` in Paillier mode refuses a joint key whose signature is another consortium's (a key
    swapped on the coordinator's disk); the same configuration with the ceremony's own signature starts (the
    positive control)."""
    ours = Consortium.create(tmp_path / "ours", silos=["a", "b", "c"])
    theirs = Consortium.create(tmp_path / "theirs", silos=["a", "b", "c"])
    public = create_paillier_keys(
        ours.paths, threshold=2, key_bits=KEY_BITS, insecure_test_key_size=True
    )
    foreign = create_paillier_keys(
        theirs.paths, threshold=2, key_bits=KEY_BITS, insecure_test_key_size=True
    )
    serve, _ = write_demo_configs(
        ours.paths,
        tmp_path / "fed",
        rounds=1,
        model_size=LENGTH,
        coordinator="127.0.0.1:1",  # no silo dials it
        paillier_public_key=public,
    )
    coordinator = start_coordinator(ServeConfig.load(serve))
    coordinator.stop()
    public.write_bytes(foreign.read_bytes())
    public.with_suffix(".sig").write_bytes(foreign.with_suffix(".sig").read_bytes())
    with pytest.raises(PKIError, match="not signed by the pinned consortium key"):
        start_coordinator(ServeConfig.load(serve))


def test_too_few_contributions_abort_the_round_and_the_next_one_works(
    trio3: Consortium, tmp_path: Path
) -> None:
    units = updates(trio3.silos, 2)
    config = paillier_settings(3, rounds=2, deadlines=deadlines_with(**COLLECT_SHORT))
    with running(trio3, tmp_path / "c.db", config) as coord:

        def late_c() -> list[RoundReport]:
            # c sits out round 0 (only a and b contribute: below min_cohort = 3) and joins round 1
            wait_until(lambda: len(coord.rounds()) == 2, timeout=20.0, what="round 1 to open")
            return run_silo(trio3, "c", coord.address, tmp_path, units, max_rounds=1)

        reports = in_threads(
            lambda: run_silo(trio3, "a", coord.address, tmp_path, units),
            lambda: run_silo(trio3, "b", coord.address, tmp_path, units),
            late_c,
        )
        records = coord.rounds()
        models = [coord.model(r) for r in range(3)]
        events = [e.event for e in coord.service.audit.ledger.decoded()]
    assert [r.status for r in records] == [RoundStatus.ABORTED, RoundStatus.COMPLETED]
    assert "2 contributions, min_cohort is 3" in records[0].reason
    assert np.array_equal(models[1], models[0])  # nothing was released
    assert np.array_equal(models[2], expected_model(models[1], [units[s, 1] for s in trio3.silos]))
    aborted = [e for e in events if e.kind is EventKind.ROUND_ABORTED]
    assert [(e.round, e.body["stage"]) for e in aborted] == [(0, "collect")]
    assert [rep.status for rep in reports[0]] == [RoundStatus.ABORTED, RoundStatus.COMPLETED]
    assert [rep.status for rep in reports[2]] == [RoundStatus.COMPLETED]


# -- the decryption-oracle attack -----------------------------------------------------------------------------
class OracleLiar(PaillierServicer):
    """Asks the key holders to decrypt silo a's ciphertext alone, disguised as the aggregate.

    The real service runs underneath; this servicer captures a's upload as it streams past, serves a's
    ciphertexts in place of the aggregate, and answers the silos' spot-check challenges with honest openings
    relabelled for the forged request (the best a liar can do: it cannot forge the silos' signed roots).
    """

    only_a_listed = False
    honest_digest = b""
    forged_digest = b""

    def __init__(self, service: PaillierRounds) -> None:
        super().__init__(service)
        self.a_ciphertexts: list[bytes] = []
        self.partials: list[str] = []

    def UploadContribution(
        self, request_iterator: Iterable[ppb.ContributionChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        def spy() -> Iterator[ppb.ContributionChunk]:
            for chunk in request_iterator:
                if chunk.silo == "a":
                    self.a_ciphertexts.append(bytes(chunk.ciphertexts))
                yield chunk

        return super().UploadContribution(spy(), context)

    def GetDecryptionRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[ppb.DecryptionRequestPart]:
        width = self._service.public_key.ciphertext_bytes
        honest = request_from_pb(super().GetDecryptionRequest(request, context), width=width)
        self.honest_digest = honest.digest()
        contributions = honest.contributions
        if self.only_a_listed:
            contributions = tuple(c for c in contributions if c.silo_id == "a")
        forged = DecryptionRequest(
            context=honest.context,
            aggregate=b"".join(self.a_ciphertexts),
            contributions=contributions,
        )
        yield from request_to_pb(forged, width=width, per_part=8)

    def _relabelled(self, request: ppb.SpotCheckChallenge) -> SpotCheckChallenge:
        return replace(challenge_from_pb(request), request_digest=self.honest_digest)

    def PostChallenge(
        self, request: ppb.SpotCheckChallenge, context: grpc.ServicerContext
    ) -> pb.Ack:
        self.forged_digest = bytes(request.request_digest)
        self._service.challenge(request.silo, request.round, self._relabelled(request))
        return pb.Ack()

    def GetFoldRequests(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> ppb.FoldRequests:
        answer = super().GetFoldRequests(request, context)
        answer.request_digest = self.forged_digest  # what the contributors were shown
        return answer

    def OpenSpotChecks(
        self, request: ppb.SpotCheckChallenge, context: grpc.ServicerContext
    ) -> Iterator[ppb.SpotCheckOpenings]:
        response = self._service.open_spot_checks(
            request.silo, request.round, self._relabelled(request), request.wait_seconds
        )
        yield from openings_to_pb(
            replace(response, request_digest=bytes(request.request_digest)), budget=1 << 20
        )

    def SubmitPartialDecryption(
        self, request_iterator: Iterable[ppb.PartialDecryptionPart], context: grpc.ServicerContext
    ) -> pb.Ack:
        parts = list(request_iterator)
        self.partials.append(parts[0].silo if parts else "?")
        return super().SubmitPartialDecryption(iter(parts), context)


class SingleSiloLiar(OracleLiar):
    """The same attack without disguise: the request lists only silo a's commitment."""

    only_a_listed = True


@pytest.mark.parametrize(
    ("liar", "refusal"),
    [
        (OracleLiar, "aggregate is not the product of the signed contributions"),
        (SingleSiloLiar, "aggregate of 1 contributions, min_cohort is 3"),
    ],
)
def test_a_lying_coordinator_cannot_use_the_silos_as_a_decryption_oracle(
    trio3: Consortium, tmp_path: Path, liar: type[OracleLiar], refusal: str
) -> None:
    units = updates(trio3.silos, 1)
    servicers: list[OracleLiar] = []

    def make(service: PaillierRounds) -> OracleLiar:
        servicers.append(liar(service))
        return servicers[-1]

    with running(trio3, tmp_path / "c.db", paillier_settings(3), liar=make) as coord:  # type: ignore[arg-type]
        reports = in_threads(
            *[lambda s=s: run_silo(trio3, s, coord.address, tmp_path, units) for s in trio3.silos]
        )
        records = coord.rounds()
        models = [coord.model(0), coord.model(1)]
        events = [e.event for e in coord.service.audit.ledger.decoded()]
    (servicer,) = servicers
    assert servicer.a_ciphertexts  # the liar really held a's ciphertext and served it
    assert servicer.partials == []  # no silo sent a partial decryption of anything
    for silo_reports in reports:
        (report,) = silo_reports
        assert report.status is RoundStatus.ABORTED
        assert report.reason.startswith("refused:") and refusal in report.reason
    assert (
        records[0].status is RoundStatus.ABORTED
        and "refused by ['a', 'b', 'c']" in records[0].reason
    )
    assert np.array_equal(models[1], models[0])  # nothing was released
    failures = [e for e in events if e.kind is EventKind.VERIFICATION_FAILURE]
    assert sorted(e.body["silo"] for e in failures) == trio3.silos
    assert all(e.body["what"] == "decryption_request" for e in failures)


def test_a_silo_refuses_a_second_aggregate_for_a_round_it_already_checked(
    trio3: Consortium, tmp_path: Path
) -> None:
    """The decryption history persists: a restarted silo still refuses another request for the same round."""
    from coordinator.sdk.paillier import SQLiteDecryptionHistory
    from secagg.errors import ProtocolViolation

    path = tmp_path / "history.sqlite"
    history = SQLiteDecryptionHistory(path)
    context = bytes(32)
    assert history.bind(context, b"\x01" * 32, (3, 5)) == (3, 5)
    history.close()
    reopened = SQLiteDecryptionHistory(path)
    assert reopened.bind(context, b"\x01" * 32, (7, 9)) == (3, 5)  # same request: same positions
    with pytest.raises(ProtocolViolation):
        reopened.bind(context, b"\x02" * 32, (7, 9))
    reopened.close()


def test_audit_ledger_records_the_rounds_and_verifies(trio3: Consortium, tmp_path: Path) -> None:
    units = updates(trio3.silos, 1)
    with running(trio3, tmp_path / "c.db", paillier_settings(3)) as coord:
        in_threads(
            *[lambda s=s: run_silo(trio3, s, coord.address, tmp_path, units) for s in trio3.silos]
        )
        ledger = coord.service.audit.ledger
        events = [e.event for e in ledger.decoded()]
        signer = CheckpointSigner(
            load_ed25519_private(trio3.paths.audit_key), key_name=ledger_origin(FEDERATION)
        )
        bundle = write_bundle(
            ledger,
            tmp_path / "bundle",
            roster_bytes=trio3.paths.roster.read_bytes(),
            audit_public_key=signer.public_key,
        )
    report = verify_bundle(
        bundle, silo_keys=dict(trio3.roster.members), audit_public_key=signer.public_key
    )
    assert report.federation == FEDERATION
    assert len(report.entries) == len(events)
    kinds = [e.kind for e in events]
    assert kinds == [
        EventKind.FEDERATION_CREATED,
        EventKind.ROUND_OPENED,
        EventKind.PARTICIPANTS,
        EventKind.GLOBAL_MODEL,
        EventKind.ROUND_CLOSED,
    ]
    created, opened, participants = events[0], events[1], events[2]
    assert created.body["threat_model"]["mode"] == "paillier"
    assert created.body["threat_model"]["t"] == THRESHOLD
    assert opened.body["key_fingerprint"] == public_key(trio3).fingerprint().hex()
    assert list(participants.body["survivors"]) == trio3.silos
    assert len(participants.body["decrypters"]) >= THRESHOLD
    assert report.checkpoint.size == len(events)  # a checkpoint was signed after the round


def test_key_files_are_private_and_never_replaced(tmp_path: Path) -> None:
    consortium = Consortium.create(tmp_path / "pki", silos=["a", "b", "c"])
    path = create_paillier_keys(
        consortium.paths, threshold=2, key_bits=KEY_BITS, insecure_test_key_size=True
    )
    assert path == consortium.paths.root / "paillier.pub.json"
    for silo in consortium.silos:
        files = PaillierFiles.for_silo(consortium.paths.root, silo)
        for secret in (files.share, files.x25519_key):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        key, share = files.load(
            federation=consortium.federation, consortium_key=consortium.consortium_key
        )
        assert share.index == consortium.roster.index(silo)
        assert key.threshold == 2 and key.parties == 3
    with pytest.raises(PKIError, match="already exists"):
        create_paillier_keys(
            consortium.paths, threshold=2, key_bits=KEY_BITS, insecure_test_key_size=True
        )
    with pytest.raises(PKIError, match="key_bits"):
        create_paillier_keys(consortium.paths, threshold=2, key_bits=KEY_BITS)


# -- privacy attestations ------------------------------------------------------------------------------------------
STEP = MechanismStep(noise_multiplier=1.1, sample_rate=0.05, steps=20)  # epsilon ~2.0 at delta 1e-5
GREEDY_STEP = MechanismStep(
    noise_multiplier=1.1, sample_rate=0.2, steps=20
)  # epsilon ~6.4: over the ceiling
DELTA = 1e-5


@dataclass(frozen=True)
class DpUpdate:
    """A private round without torch: satisfies ``coordinator.sdk.masking.PrivateUpdate``."""

    update: npt.NDArray[np.float64]
    step: MechanismStep

    def attestation(
        self, *, federation: str, round: int, session_id: str, silo: str
    ) -> PrivacyAttestation:
        accountant = RdpAccountant(history=(self.step,))
        return PrivacyAttestation(
            federation=federation,
            round=round,
            session_id=session_id,
            silo=silo,
            mechanism=DP_SGD_MECHANISM,
            noise_multiplier=self.step.noise_multiplier,
            sample_rate=self.step.sample_rate,
            steps=self.step.steps,
            max_grad_norm=1.0,
            accountant=accountant.describe()["accountant"],
            epsilon=accountant.epsilon(DELTA),
            delta=DELTA,
            library_versions=library_versions(),
        )


def test_attestations_are_verified_and_an_over_budget_silo_is_refused(
    quad: Consortium, tmp_path: Path
) -> None:
    units = updates(quad.silos, 1)
    config = dataclasses.replace(
        paillier_settings(4, deadlines=deadlines_with(**COLLECT_SHORT, **CHALLENGE_SHORT)),
        privacy=PrivacyConfig(epsilon=3.0, delta=DELTA),
    )

    def silo(name: str) -> list[RoundReport] | Exception:
        step = GREEDY_STEP if name == "d" else STEP
        try:
            with sdk(quad, name, coord.address, tmp_path) as client:
                return list(client.run(lambda ctx: DpUpdate(exact(units[name, ctx.round]), step)))
        except Exception as exc:  # d's refusal is the result under test
            return exc

    with running(quad, tmp_path / "c.db", config) as coord:
        outcomes = in_threads(*[lambda s=s: silo(s) for s in quad.silos])
        records = coord.rounds()
        events = [e.event for e in coord.service.audit.ledger.decoded()]
    # PERMISSION_DENIED on the wire; the SDK maps it back to Unauthorized (PrivacyRefused's parent)
    assert isinstance(outcomes[3], Unauthorized)
    assert "privacy attestation refused" in str(outcomes[3])
    assert records[0].status is RoundStatus.COMPLETED
    assert records[0].survivors == ("a", "b", "c") and records[0].dropped == ("d",)
    attested = [e.body["silo"] for e in events if e.kind is EventKind.PRIVACY_ATTESTATION]
    refusals = [e.body["silo"] for e in events if e.kind is EventKind.BUDGET_REFUSAL]
    assert sorted(attested) == ["a", "b", "c"] and refusals == ["d"]
