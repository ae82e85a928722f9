"""Unit-test rig for the round pipeline: a fake clock, a real SQLite store and audit trail, and silos that play
the real protocol roles against the driver's silo-facing methods.

- No wire, no grpc, no protobuf: the "transport" is the test calling :class:`MaskingRounds` or
  :class:`PaillierRounds` methods directly, with every message made by the real role (``secagg.SecAggClient`` in
  masking mode; ``PaillierContributor`` and ``PartialDecrypter`` in Paillier mode). Nothing under test is mocked.
- No deadline is ever waited out: the driver reads time from :class:`FakeClock`; a test moves it past the open
  stage's deadline (:meth:`Rig.expire`) and calls ``driver.wake()``. Long polls block in real time, but only
  until the driver thread closes the stage, which takes milliseconds.
- Exact quantization, as in ``tests/e2e/harness.py``: with ``clip = EXACT_CLIP`` and ``bits = EXACT_BITS`` the
  quantizer's scale is exactly ``SCALE = 1024``, so updates made of multiples of ``1/SCALE`` encode with no
  rounding and a new global model can be checked bit for bit against an independent integer computation.
- One place knows the shape of the ``[deadlines]`` table: :func:`deadlines`.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import CheckpointSigner, Event, EventKind
from coordinator.common import ledger_origin
from coordinator.config import Deadlines, MaskingConfig, MaskingDeadlines, PaillierDeadlines
from coordinator.rounds.audit import AuditTrail
from coordinator.rounds.driver import FederationSettings, RoundDriver, RoundOutcome
from coordinator.rounds.fedavg import fedavg
from coordinator.rounds.masking import MaskingRounds
from coordinator.rounds.paillier import PaillierRounds, PaillierStage
from coordinator.rounds.uploads import Upload
from coordinator.store import RoundRecord, SQLiteStore
from secagg import Quantizer, Roster, RoundAborted, RoundConfig, SecAggClient, Stage
from secagg.hazmat.paillier import ObfuscatorPool, ThresholdKeyMaterial, deal_threshold_key
from secagg.paillier import (
    CiphertextChunk,
    InMemoryDecryptionHistory,
    PaillierContributor,
    PaillierRoundConfig,
    PartialDecrypter,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    session_id_for,
)

FloatVector = npt.NDArray[np.float32]
IntVector = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
D = TypeVar("D", bound=RoundDriver)

FEDERATION = "fed"
# n = 4; masking t = 3, Paillier t = 2; min_cohort = 3 in both: exactly one dropout is survivable
SILOS = ("a", "b", "c", "d")
LENGTH = 48
CHUNK = 16  # coordinates per masked upload chunk: three chunks a vector
EXACT_BITS = 16
EXACT_CLIP = 32767 / 1024  # levels / clip == 1024.0 exactly in IEEE arithmetic
SCALE = 1024
MASKING_T = 3
PAILLIER_T = 2
MIN_COHORT = 3

# Real seconds a long poll may block: a stage closes milliseconds after its last answer or wake().
WAIT = 5.0
# Every stage's deadline, in fake seconds, and a fake-clock jump past whatever stage is open.
LIMIT = 60.0
PAST = 10 * LIMIT
# The smallest key secagg.hazmat.paillier deals with insecure_test_key_size (tests only).
PAILLIER_KEY_BITS = 256

MASKING_STAGES: tuple[Stage, ...] = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)
STAGE_ORDER = {stage: i for i, stage in enumerate(MASKING_STAGES)}


# -- time, randomness, identities --------------------------------------------------------------------------------
class FakeClock:
    """The driver's injected wall clock: time moves only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def seeded(label: str) -> Callable[[int], bytes]:
    """A deterministic byte source (SHAKE-256 in counter mode) standing in for ``os.urandom``; tests only."""
    counter = itertools.count()
    return lambda n: hashlib.shake_256(f"{label}/{next(counter)}".encode()).digest(n)


def _ed25519(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


@dataclass(frozen=True)
class Members:
    """A signed roster, every member's roster key and the coordinator's audit key."""

    roster: Roster
    keys: Mapping[str, Ed25519PrivateKey]
    audit_key: Ed25519PrivateKey

    @property
    def silos(self) -> tuple[str, ...]:
        return tuple(self.roster.members)


def make_members(silos: Sequence[str]) -> Members:
    keys = {s: _ed25519(f"roster/{s}") for s in silos}
    roster = Roster.create(
        federation=FEDERATION,
        members={s: k.public_key().public_bytes_raw() for s, k in keys.items()},
        consortium_key=_ed25519("consortium"),
    )
    return Members(roster, keys, _ed25519("audit"))


def deadlines(seconds: float = LIMIT) -> Deadlines:
    """Every stage of both modes open for at most ``seconds`` (of fake time).

    The only place that knows the shape of the ``[deadlines]`` table (per-mode sub-tables).
    """
    return Deadlines(
        join=seconds,
        masking=MaskingDeadlines(
            advertise=seconds,
            share_keys=seconds,
            masked_input=seconds,
            consistency=seconds,
            unmask=seconds,
        ),
        paillier=PaillierDeadlines(
            collect=seconds, challenge=seconds, fold=seconds, decrypt=seconds
        ),
    )


def federation_settings(
    *,
    threshold: int,
    rounds: int = 1,
    length: int = LENGTH,
    min_cohort: int = MIN_COHORT,
    masking: MaskingConfig | None = None,
) -> FederationSettings:
    return FederationSettings(
        federation=FEDERATION,
        rounds=rounds,
        vector_length=length,
        clip=EXACT_CLIP,
        bits=EXACT_BITS,
        threshold=threshold,
        collusion=0,
        min_cohort=min_cohort,
        deadlines=deadlines(),
        masking=masking or MaskingConfig(),
    )


# -- updates and what the coordinator must make of them -----------------------------------------------------------
def integer_update(seed: int, length: int = LENGTH, bound: int = 100) -> IntVector:
    """A deterministic update in quantization units (times 1/SCALE gives the float update)."""
    return np.random.default_rng(seed).integers(-bound, bound + 1, length, dtype=np.int64)


def exact(units: IntVector) -> npt.NDArray[np.float64]:
    """The float update that the exact quantizer encodes to ``units`` with no rounding."""
    return units.astype(np.float64) / SCALE


def updates(silos: Iterable[str], round_: int = 0, length: int = LENGTH) -> dict[str, IntVector]:
    return {s: integer_update(100 * round_ + i, length) for i, s in enumerate(silos)}


def start_model(length: int = LENGTH) -> FloatVector:
    """A non-zero round-0 model (multiples of 1/SCALE), so FedAvg's ``start +`` is exercised too."""
    return (integer_update(7, length, bound=3000) / SCALE).astype(np.float32)


def expected_model(start: FloatVector, units: Sequence[IntVector]) -> FloatVector:
    """FedAvg of exactly representable updates computed with integers: start + (sum / SCALE) / count."""
    total = np.sum(np.stack(units), axis=0)
    mean = (total.astype(np.float64) / SCALE) / len(units)
    model: FloatVector = (start.astype(np.float64) + mean).astype(np.float32)
    return model


def independent_fedavg(
    quantizer: Quantizer, start: FloatVector, units: Sequence[IntVector]
) -> FloatVector:
    """Blockwise FedAvg (``coordinator.rounds.fedavg``) of the ring sum of the encoded updates, summed here."""
    total = np.zeros(start.shape[0], dtype=np.uint64)
    for u in units:
        total = (total + quantizer.encode(exact(u)).astype(np.uint64)) % (1 << 32)
    return fedavg(quantizer, start, total.astype(np.uint32), len(units), block=7)


def eventually(predicate: Callable[[], bool], what: str = "") -> None:
    """Poll ``predicate`` (something the driver thread does) until it holds; fail after WAIT seconds."""
    end = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.001)


# -- the coordinator under test -------------------------------------------------------------------------------------
@dataclass
class Rig(Generic[D]):
    """One coordinator under test: its driver, its SQLite store and audit trail (one file), the fake clock."""

    driver: D
    store: SQLiteStore
    audit: AuditTrail
    clock: FakeClock
    members: Members
    closed: bool = field(default=False)

    def expire(self) -> None:
        """Move the fake clock past the open stage's deadline and have the driver re-check it."""
        self.clock.advance(PAST)
        self.driver.wake()

    def records(self) -> list[RoundRecord]:
        return self.store.rounds(FEDERATION)

    def record(self, round_: int) -> RoundRecord:
        (record,) = [r for r in self.records() if r.round == round_]
        return record

    def model(self, round_: int) -> FloatVector:
        return self.store.model(FEDERATION, round_)[0]

    def events(self, *kinds: EventKind) -> list[Event]:
        """The ledger's events in order (only those of ``kinds`` if given)."""
        events = [entry.event for entry in self.audit.ledger.decoded()]
        return [e for e in events if not kinds or e.kind in kinds]

    def close(self) -> None:
        """Stop the driver and close its files (a process exit, as far as the files can tell)."""
        if not self.closed:
            self.closed = True
            self.driver.stop()
            self.store.close()
            self.audit.close()


class Coordinators:
    """Builds coordinators on one database file (a second one on the same file is a restart) and closes them."""

    def __init__(self, directory: Path, members: Members, clock: FakeClock) -> None:
        self.db = directory / "coordinator.sqlite"
        self.members = members
        self.clock = clock
        self.rigs: list[Rig[Any]] = []

    def _files(self) -> tuple[SQLiteStore, AuditTrail]:
        signer = CheckpointSigner(self.members.audit_key, key_name=ledger_origin(FEDERATION))
        return SQLiteStore(self.db), AuditTrail.open(self.db, federation=FEDERATION, signer=signer)

    def _rig(
        self,
        driver: D,
        store: SQLiteStore,
        audit: AuditTrail,
        start: bool,
        joined: Sequence[str] | None = None,
    ) -> Rig[D]:
        rig = Rig(driver, store, audit, self.clock, self.members)
        self.rigs.append(rig)
        for silo in self.members.silos if joined is None else joined:
            driver.join(
                silo
            )  # what each silo's Join call does; round 0 waits for min_cohort of them
        if start:
            driver.start()
        return rig

    def masking(
        self,
        *,
        rounds: int = 1,
        threshold: int = MASKING_T,
        min_cohort: int = MIN_COHORT,
        start: bool = True,
        masking: MaskingConfig | None = None,
        joined: Sequence[str] | None = None,
    ) -> Rig[MaskingRounds]:
        store, audit = self._files()
        driver = MaskingRounds(
            settings=federation_settings(
                threshold=threshold, rounds=rounds, min_cohort=min_cohort, masking=masking
            ),
            roster=self.members.roster,
            store=store,
            initial_model=start_model(),
            audit=audit,
            clock=self.clock,
        )
        return self._rig(driver, store, audit, start, joined)

    def paillier(
        self,
        keys: ThresholdKeyMaterial,
        *,
        rounds: int = 1,
        min_cohort: int = MIN_COHORT,
        one_ciphertext_chunks: bool = False,
        start: bool = True,
        joined: Sequence[str] | None = None,
    ) -> Rig[PaillierRounds]:
        store, audit = self._files()
        extra: dict[str, Any] = {}
        if (
            one_ciphertext_chunks
        ):  # chunks of one ciphertext, so an upload can break between two chunks
            extra["max_message_bytes"] = 16 * 1024 + keys.public_key.ciphertext_bytes
        driver = PaillierRounds(
            settings=federation_settings(
                threshold=keys.public_key.threshold, rounds=rounds, min_cohort=min_cohort
            ),
            roster=self.members.roster,
            store=store,
            initial_model=start_model(),
            audit=audit,
            clock=self.clock,
            public_key=keys.public_key,
            spool_dir=self.db.parent,
            rng=seeded("session-nonces"),
            **extra,
        )
        return self._rig(driver, store, audit, start, joined)

    def close(self) -> None:
        for rig in reversed(self.rigs):
            rig.close()


# -- silos ------------------------------------------------------------------------------------------------------
class MaskingSilo:
    """One silo on the real ``SecAggClient``, one stage per method, calling the driver directly.

    Each method fetches the previous stage's result (a long poll) and submits this stage's message, so "the silo
    vanished before stage X" is "the test never called method X".
    """

    def __init__(self, rig: Rig[MaskingRounds], silo: str, round_: int = 0) -> None:
        self.driver = rig.driver
        self.silo = silo
        view = rig.driver.view(after=round_, wait=WAIT)
        self.config: RoundConfig = view.config
        assert self.config.round == round_
        self.round = round_
        self.client = SecAggClient(
            silo=silo,
            signing_key=rig.members.keys[silo],
            roster=rig.members.roster,
            config=self.config,
            rng=seeded(f"masking/{silo}/{round_}"),
        )

    def advertise(self) -> None:
        self.driver.advertise(self.silo, self.round, self.client.advertise())

    def share_keys(self) -> None:
        ads = self.driver.advertisements(self.round, WAIT)
        self.driver.share_keys(self.silo, self.round, self.client.share_keys(ads))

    def mask(self, units: IntVector) -> U32:
        """Fetch the inbox and compute the masked vector (does not upload it)."""
        inbox = self.driver.inbox(self.silo, self.round, WAIT)
        encoded = self.config.quantizer.encode(exact(units), seeded(f"quantize/{self.silo}"))
        return self.client.masked_input(inbox, encoded)

    def upload(self, masked: U32, *, chunk: int = CHUNK) -> None:
        """Stream the whole masked vector in chunks of ``chunk`` coordinates."""
        with self.driver.upload(self.silo, self.round) as upload:
            for offset in range(0, masked.shape[0], chunk):
                upload.add(offset, masked[offset : offset + chunk])
            upload.finish()

    def masked_input(self, units: IntVector) -> None:
        self.upload(self.mask(units))

    def sign_survivors(self) -> tuple[str, ...]:
        survivors = self.driver.survivors(self.round, WAIT)
        self.driver.sign_survivors(self.silo, self.round, self.client.sign_survivors(survivors))
        return survivors

    def unmask(self) -> None:
        request = self.driver.unmask_request(self.round, WAIT)
        self.driver.unmask(self.silo, self.round, self.client.unmask(request))

    def step(self, stage: Stage, units: IntVector) -> None:
        """This silo's message for ``stage``."""
        if stage is Stage.ADVERTISE_KEYS:
            self.advertise()
        elif stage is Stage.SHARE_KEYS:
            self.share_keys()
        elif stage is Stage.MASKED_INPUT:
            self.masked_input(units)
        elif stage is Stage.CONSISTENCY_CHECK:
            self.sign_survivors()
        else:
            self.unmask()


class StreamBroke(Exception):
    """The network stream under an upload failed (what a server handler sees when a silo disconnects)."""


def stream(
    upload: Upload,
    chunks: Iterable[tuple[int, Any]],
    *,
    finish: bool = True,
    midway: Callable[[], None] | None = None,
) -> None:
    """Feed ``chunks`` (index, data) into ``upload`` as a server handler does, then finish, or break off with
    :class:`StreamBroke` when ``finish`` is false; ``midway`` runs after the last chunk, inside the stream."""
    with upload:
        for index, data in chunks:
            upload.add(index, data)
        if midway is not None:
            midway()
        if not finish:
            raise StreamBroke
        upload.finish()


def masking_silos(rig: Rig[MaskingRounds], round_: int = 0) -> dict[str, MaskingSilo]:
    return {s: MaskingSilo(rig, s, round_) for s in rig.members.silos}


def run_masking_round(
    rig: Rig[MaskingRounds],
    units: Mapping[str, IntVector],
    *,
    round_: int = 0,
    vanish: Mapping[str, Stage] | None = None,
    silos: Mapping[str, MaskingSilo] | None = None,
) -> RoundOutcome:
    """Every roster silo takes part in round ``round_``, except that silo ``s`` vanishes just before stage
    ``vanish[s]``. A stage that someone it expects never answers is closed by moving the clock past its
    deadline; every other stage closes by itself once all expected silos answered.
    """
    vanish = vanish or {}
    silos = silos if silos is not None else masking_silos(rig, round_)
    expected = set(silos)
    try:
        for stage in MASKING_STAGES:
            answering = {
                s
                for s in expected
                if s not in vanish or STAGE_ORDER[vanish[s]] > STAGE_ORDER[stage]
            }
            for s in sorted(answering):
                silos[s].step(stage, units[s])
            if answering != expected:
                rig.expire()
            rig.driver.wait_past(round_, stage, WAIT)
            expected = answering
    except RoundAborted:
        pass
    return rig.driver.result(round_, WAIT)


class PaillierSilo:
    """One silo on the real Paillier roles (contributor and key holder), calling the driver directly."""

    def __init__(
        self, rig: Rig[PaillierRounds], keys: ThresholdKeyMaterial, silo: str, round_: int = 0
    ) -> None:
        self.driver = rig.driver
        self.keys = keys
        self.silo = silo
        self.signing_key = rig.members.keys[silo]
        self.roster = rig.members.roster
        view = rig.driver.view(after=round_, wait=WAIT)
        self.config: PaillierRoundConfig = view.config
        assert self.config.round_number == round_
        # what the SDK checks first: the session id is bound to the model this silo would download
        assert self.config.session_id == session_id_for(view.session_nonce, view.model_hash)
        self.round = round_

    def encrypt(self, units: IntVector) -> tuple[tuple[CiphertextChunk, ...], SignedCommitment]:
        quantizer = Quantizer(
            clip=EXACT_CLIP, bits=self.config.value_bits, max_silos=self.config.max_contributors
        )
        values = quantizer.encode(exact(units)).view(np.int32).astype(np.int64)
        self.contributor = PaillierContributor(
            silo_id=self.silo,
            signing_key=self.signing_key,
            public_key=self.keys.public_key,
            config=self.config,
            pool=ObfuscatorPool(
                self.keys.public_key, rng=seeded(f"obfuscators/{self.silo}/{self.round}")
            ),
            rng=seeded(f"proofs/{self.silo}/{self.round}"),
        )
        return self.contributor.encrypt_update(values)

    def contribute(self, units: IntVector) -> None:
        chunks, commitment = self.encrypt(units)
        with self.driver.contribution(self.silo, self.round, commitment) as upload:
            for chunk in chunks:
                upload.add(chunk.chunk_index, chunk.data)
            upload.finish()

    def challenge(self) -> SpotCheckChallenge:
        """Stage challenge: fetch the request, bind it, post the positions and fold seed drawn here."""
        request = self.driver.decryption_request(self.silo, self.round, WAIT)
        self.decrypter = PartialDecrypter(
            silo_id=self.silo,
            share=self.keys.shares[self.roster.index(self.silo) - 1],
            public_key=self.keys.public_key,
            config=self.config,
            roster=self.roster.members,
            history=InMemoryDecryptionHistory(),
            rng=seeded(f"decrypter/{self.silo}/{self.round}"),
        )
        self.challenged = self.decrypter.challenge(request)
        self.driver.challenge(self.silo, self.round, self.challenged)
        return self.challenged

    def fold(self) -> None:
        """Stage fold: answer every recorded fold seed with this contributor's signed, proven folds."""
        _, requests = self.driver.fold_requests(self.silo, self.round, WAIT)
        self.driver.folds(self.silo, self.round, self.contributor.answer_folds(requests))

    def partial(self) -> PartialDecryptionMessage:
        """Stage decrypt: check the openings and folds for this silo's challenge, partially decrypt."""
        response = self.driver.open_spot_checks(self.silo, self.round, self.challenged, WAIT)
        return self.decrypter.partially_decrypt(response)

    def decrypt(self) -> None:
        self.driver.partial_decryption(self.silo, self.round, self.partial())

    def refuse(self, reason: str = "the aggregate looks wrong") -> None:
        request = self.driver.decryption_request(self.silo, self.round, WAIT)
        self.driver.refuse(self.silo, self.round, request.digest(), reason)


def check_aggregate(
    rig: Rig[PaillierRounds],
    silos: Mapping[str, PaillierSilo],
    *,
    round_: int = 0,
    challengers: Sequence[str] | None = None,
) -> None:
    """Stages challenge and fold: ``challengers`` (default: every silo) challenge the request, then every
    contributor answers the fold seeds; a challenge stage that waits for a silo that never answers is closed
    by moving the clock past its deadline. Afterwards the decrypt stage is open."""
    challengers = tuple(silos) if challengers is None else tuple(challengers)
    request = rig.driver.decryption_request(next(iter(silos)), round_, WAIT)
    for s in challengers:
        silos[s].challenge()
    if set(challengers) != set(silos):
        rig.expire()
    rig.driver.wait_past(round_, PaillierStage.CHALLENGE, WAIT)
    for c in request.contributions:
        silos[c.silo_id].fold()
    rig.driver.wait_past(round_, PaillierStage.FOLD, WAIT)


def paillier_silos(
    rig: Rig[PaillierRounds], keys: ThresholdKeyMaterial, round_: int = 0
) -> dict[str, PaillierSilo]:
    return {s: PaillierSilo(rig, keys, s, round_) for s in rig.members.silos}


def run_paillier_round(
    rig: Rig[PaillierRounds],
    keys: ThresholdKeyMaterial,
    units: Mapping[str, IntVector],
    *,
    round_: int = 0,
    contributors: Sequence[str] | None = None,
    decrypters: Sequence[str] = ("a", "b"),
) -> RoundOutcome:
    """``contributors`` (default: everyone) contribute, every silo challenges, the contributors fold, then
    ``decrypters`` partially decrypt; a stage left waiting for a silo that never answers is closed by moving the
    clock past its deadline."""
    silos = paillier_silos(rig, keys, round_)
    contributors = tuple(silos) if contributors is None else tuple(contributors)
    for s in contributors:
        silos[s].contribute(units[s])
    if set(contributors) != set(silos):
        rig.expire()
    try:
        rig.driver.wait_past(round_, PaillierStage.COLLECT, WAIT)
        check_aggregate(rig, silos, round_=round_)
        for s in decrypters:
            silos[s].decrypt()
        if len(decrypters) < keys.public_key.threshold:
            rig.expire()
    except RoundAborted:
        pass
    return rig.driver.result(round_, WAIT)


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def members() -> Members:
    return make_members(SILOS)


@pytest.fixture(scope="session")
def paillier_keys() -> ThresholdKeyMaterial:
    """A 2-of-4 threshold Paillier key, dealt once (insecure size, tests only)."""
    return deal_threshold_key(
        threshold=PAILLIER_T,
        parties=len(SILOS),
        key_bits=PAILLIER_KEY_BITS,
        rng=seeded("paillier-dealer"),
        insecure_test_key_size=True,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coordinators(tmp_path: Path, members: Members, clock: FakeClock) -> Iterator[Coordinators]:
    built = Coordinators(tmp_path, members, clock)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def masking(coordinators: Coordinators) -> Rig[MaskingRounds]:
    """A started one-round masking coordinator (n = 4, t = 3, min_cohort = 3)."""
    return coordinators.masking()


@pytest.fixture
def paillier(
    coordinators: Coordinators, paillier_keys: ThresholdKeyMaterial
) -> Rig[PaillierRounds]:
    """A started one-round Paillier coordinator (n = 4, t = 2, min_cohort = 3)."""
    return coordinators.paillier(paillier_keys)


# -- either mode ------------------------------------------------------------------------------------------------
MODES = ("masking", "paillier")


def build_rig(
    coordinators: Coordinators,
    mode: str,
    keys: ThresholdKeyMaterial,
    *,
    rounds: int = 1,
    start: bool = True,
    joined: Sequence[str] | None = None,
) -> Rig[Any]:
    """A coordinator of ``mode`` on the shared database file (a second call is a restart).

    ``joined``: the silos that join before it starts (default: all of them).
    """
    if mode == "masking":
        return coordinators.masking(rounds=rounds, start=start, joined=joined)
    return coordinators.paillier(keys, rounds=rounds, start=start, joined=joined)


def play_round(
    rig: Rig[Any],
    keys: ThresholdKeyMaterial,
    units: Mapping[str, IntVector],
    *,
    round_: int = 0,
    absent: Iterable[str] = (),
) -> RoundOutcome:
    """Round ``round_`` in either mode, with the ``absent`` silos never showing up."""
    absent = set(absent)
    if isinstance(rig.driver, MaskingRounds):
        vanish = {s: Stage.ADVERTISE_KEYS for s in absent}
        return run_masking_round(rig, units, round_=round_, vanish=vanish)
    cohort = [s for s in rig.members.silos if s not in absent]
    return run_paillier_round(rig, keys, units, round_=round_, contributors=cohort)


def announced_round(config: Any) -> int:
    """The round number a view's config announces, in either mode."""
    return int(config.round if isinstance(config, RoundConfig) else config.round_number)
