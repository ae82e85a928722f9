"""The one round driver: it runs a federation's rounds for any aggregation mode, which contributes only its stages.

One driver thread runs the rounds; gRPC handler threads call the submit/wait methods. A stage closes when
every expected silo has answered (or the mode says it may close early) or its deadline passes, whichever
comes first; whoever has not answered by then has dropped. Written once here, for every mode: store set-up
and restart reconciliation, the stage loop with the mode's deadlines, membership and duplicate checks, long
polls, the shared model cache, blockwise FedAvg, release of finished rounds, outcome records and checkpoints.

A mode (:mod:`coordinator.rounds.masking`, :mod:`coordinator.rounds.paillier`) subclasses
:class:`RoundDriver` and supplies its stages (:attr:`RoundDriver.stages`), how a round opens
(:meth:`RoundDriver.open_state`), when a stage may close early and what closing it means
(:meth:`RoundDriver.close_stage`), and its silo-facing stage methods, built on :meth:`RoundDriver.submit`,
:meth:`RoundDriver.open_upload` and :meth:`RoundDriver.wait_past`.

Notes:
    The coordinator only ever holds the running aggregate and, after the last stage, the sum of at least
    ``max(threshold, min_cohort)`` silos' quantized updates (DESIGN 2, 4 and 5). Every privacy-relevant fact
    goes to the audit ledger (:class:`~coordinator.rounds.audit.AuditTrail`) before the silos can observe it:
    the round opening, each privacy attestation with the coordinator's own epsilon recomputation (or the
    refusal), participants, the new global model, the closing, and a signed checkpoint after every round.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from audits import EventKind
from coordinator._malloc import release_free_memory
from coordinator.common import FloatVector, RoundReport, RoundStatus
from coordinator.config import Deadlines, MaskingConfig, PrivacyConfig, SiloDPConfig
from coordinator.errors import DuplicateSubmission, InvalidInput, NotFound, StageError, Unauthorized
from coordinator.metrics import Metrics
from coordinator.rounds.audit import AuditTrail, attest_contribution
from coordinator.rounds.fedavg import fedavg
from coordinator.rounds.polls import Signal, wait_for
from coordinator.rounds.roster import GovernedRoster
from coordinator.rounds.uploads import Upload, UploadSink, protocol
from coordinator.store import Store
from secagg import InvalidParameters, Quantizer, Roster, RoundAborted, SecAggError, check_threshold

__all__ = [
    "Aggregate",
    "FederationSettings",
    "RoundDriver",
    "RoundOutcome",
    "RoundState",
    "RoundView",
]

log = logging.getLogger(__name__)

RESTART_REASON = "coordinator restarted during the round"


@dataclass(frozen=True, kw_only=True)
class FederationSettings:
    """The coordinator's federation parameters (from ``secagg serve``'s TOML)."""

    federation: str
    rounds: int
    vector_length: int
    clip: float
    bits: int
    threshold: int
    collusion: int
    min_cohort: int
    deadlines: Deadlines = field(default_factory=Deadlines)
    privacy: PrivacyConfig | None = None
    silo_dp: SiloDPConfig | None = None
    masking: MaskingConfig = field(default_factory=MaskingConfig)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values.

        ``masking`` is left out: what it decides (the SecAgg+ graph, when on) is a mode fact that masking mode
        stores itself, so a federation created before the table existed restarts with the same settings.
        """
        body = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "masking"
        }
        return json.loads(json.dumps(body, default=_plain))  # type: ignore[no-any-return]

    def to_json(self) -> str:
        """Canonical JSON of the settings (stored with the federation; a restart must match it)."""
        return _canonical(self.as_dict())


def _plain(value: object) -> object:
    """JSON for the pydantic models a settings field may hold."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _canonical(body: Mapping[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RoundOutcome(RoundReport):
    """How a round ended, with the silo-level DP facts of a completed round (recorded in the ledger)."""

    silo_dp: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RoundView:
    """What a silo learns about the round in progress.

    ``config`` is the mode's announced round parameters (``secagg.RoundConfig`` in masking mode,
    ``secagg.paillier.PaillierRoundConfig`` in Paillier mode); ``session_nonce`` is empty in masking mode.
    """

    config: Any
    status: RoundStatus
    stage: enum.StrEnum
    rounds: int
    stage_deadline: float
    finished: bool
    model_hash: bytes = b""
    session_nonce: bytes = b""
    roster_fingerprint: str = ""


@dataclass(frozen=True)
class Aggregate:
    """What the last stage of a round produced: the contributors and their aggregate.

    Exactly one of ``total`` (the quantized sum in the 32-bit ring, averaged by blockwise FedAvg) and ``mean``
    (an already decoded mean update, for silo-level DP) is set.
    """

    contributors: tuple[str, ...]
    total: npt.NDArray[np.uint32] | None = None
    mean: npt.NDArray[np.float64] | None = None
    silo_dp: Mapping[str, Any] | None = None
    extra_participants: Mapping[str, Any] = field(default_factory=dict)


class RoundState:
    """The driver's in-memory state of one round; a mode subclasses it with its own protocol state."""

    def __init__(
        self, *, number: int, config: Any, start: FloatVector, start_hash: bytes, stage: Any
    ):
        self.number = number
        self.config = config
        self.start = start
        self.start_hash = start_hash
        self.session_nonce = b""
        self.stage: enum.StrEnum = stage
        self.deadline = 0.0
        self.expected: frozenset[str] = frozenset()
        self.arrived: set[str] = set()
        self.uploads: dict[str, Upload] = {}
        self.broken: set[str] = set()  # uploads that broke off and may not be restarted this round
        self.attested: dict[str, tuple[bytes, bytes]] = {}  # silo -> (attestation, signature)
        self.aggregate: Aggregate | None = None
        self.outcome: RoundOutcome | None = None

    @property
    def session_id(self) -> bytes:
        """The round's session id, which every attestation of the round must be bound to."""
        raise NotImplementedError

    def held_bytes(self) -> int:
        """Bytes of vectors this round still holds (the start model; a mode adds its aggregate)."""
        return int(self.start.nbytes)

    def release(self) -> None:
        """Drop what only the open round needs (the start model; a mode adds its protocol state).

        A finished round stays in memory for late long polls, which read only the stage results kept here;
        without this, the last finished round would hold its vectors for the whole next round.
        """
        self.start = np.empty(0, dtype=np.float32)
        self.uploads.clear()
        self.aggregate = None


class RoundDriver:
    """Runs a federation's rounds and answers the silos' calls, for the mode a subclass defines. Thread-safe.

    Args:
        settings: the federation parameters.
        roster: the verified roster.
        store: persistence for rounds and global models.
        initial_model: round-0 model (used only when the store has none).
        audit: the federation's audit trail (ledger and checkpoint signer).
        clock: wall-clock source, injectable for tests.
        metrics: where the driver and the servers count (a fresh registry of its own by default).
        governance: the governed roster (``[governance]``): new versions are adopted at a round open, each
            recorded as a ``roster_changed`` ledger entry; ``None`` keeps ``roster`` for the federation's life.
    """

    mode: ClassVar[str]
    """The mode's registry name (``coordinator.modes``)."""
    stages: ClassVar[Sequence[enum.StrEnum]]
    """The mode's stages, in order; each closes at its deadline (:meth:`stage_deadlines`) at the latest."""
    done: ClassVar[enum.StrEnum]
    aborted: ClassVar[enum.StrEnum]
    upload_stage: ClassVar[enum.StrEnum]
    """The stage in which silos stream their (masked or encrypted) update."""
    uploaded: ClassVar[str]
    """What a silo did once its upload is in, for the duplicate refusal ("submitted its masked input")."""
    _thread_name: ClassVar[str] = "round-driver"
    # One lock for every driver in the process: model loads are rare (once per round) and short.
    _model_load = threading.Lock()

    def __init__(
        self,
        *,
        settings: FederationSettings,
        roster: Roster,
        store: Store,
        initial_model: FloatVector,
        audit: AuditTrail,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        governance: GovernedRoster | None = None,
    ) -> None:
        if initial_model.shape != (settings.vector_length,):
            raise InvalidInput(f"initial model must have {settings.vector_length} parameters")
        self.settings = settings
        self.roster = roster
        self.store = store
        self.audit = audit
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.governance = governance
        self.cond = Signal(threading.RLock())
        """Guards every round state; handler threads wait on it for stage results, and an asyncio server
        listens to it (:meth:`on_change`)."""
        self.quantizer = Quantizer(
            clip=settings.clip, bits=settings.bits, max_silos=len(roster.members)
        )
        self._initial_model = initial_model
        self._round: RoundState | None = None
        self._finished_rounds: dict[int, RoundState] = {}  # the last two, for late long polls
        self._model_cache: tuple[int, bytes, bytes] | None = None  # (round, float32 bytes, hash)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next = 0
        self._joined: set[str] = set()
        self._certificates: dict[str, bytes] = {}
        self._cohort_shortfall: str | None = None

    def _set_up_store(self) -> None:
        """Register the federation, abort rounds a restart interrupted, and catch the ledger up.

        A mode calls this at the end of its constructor, once everything :meth:`settings_facts` and
        :meth:`threat_model` read is set.
        """
        s = self.settings
        self.store.init_federation(
            s.federation,
            settings=_canonical(s.as_dict() | self.settings_facts()),
            initial_model=self._initial_model,
        )
        del self._initial_model
        aborted = self.store.abort_open_rounds(s.federation, RESTART_REASON)
        if aborted:
            log.warning(
                "rounds %s were interrupted by a restart and are recorded as aborted", aborted
            )
        self._record_creation()
        if self.governance is not None:
            version = self.governance.resume(list(self.audit.ledger.decoded()))
            if version.roster != self.roster:
                problem = self.roster_problem(version.roster)
                if problem is not None:
                    raise InvalidInput(f"roster version {version.version} in force: {problem}")
                self._use_roster(version.roster)
        self._reconcile_ledger()
        self.metrics.ledger_entries.set(self.audit.ledger.size)
        self._next = len(self.store.rounds(s.federation))

    # What a mode supplies ------------------------------------------------------------------------------
    def stage_deadlines(self) -> Sequence[float]:
        """Seconds each of :attr:`stages` stays open at most."""
        raise NotImplementedError

    def settings_facts(self) -> dict[str, Any]:
        """Mode facts stored with the federation settings (a restart with other ones is refused)."""
        return {}

    def threat_model(self) -> dict[str, Any]:
        """Mode facts for the ledger's threat-model record, beyond n, t, c and min_cohort."""
        return {"mode": self.mode}

    def privacy_facts(self) -> dict[str, Any]:
        """Mode facts for the ledger's privacy record (silo-level DP), beyond the ``[privacy]`` table."""
        return {}

    def open_state(self, round_: int, start: FloatVector, start_hash: bytes) -> RoundState:
        """The state of a new round starting from ``start``."""
        raise NotImplementedError

    def announce(self, round_: int) -> Any:
        """The round parameters a silo sees once the federation has finished (no round is open)."""
        raise NotImplementedError

    def opened_facts(self, state: RoundState) -> dict[str, Any]:
        """Mode facts for the ledger's round-opened record."""
        return {}

    def may_close(self, state: RoundState) -> bool:
        """Whether the open stage may close before its deadline (caller holds :attr:`cond`)."""
        return state.expected <= (state.arrived | state.broken) and not state.uploads

    def close_stage(self, state: RoundState, *, expired: bool) -> bool:
        """Close the open stage of ``state``; False keeps it open (it is called again when ready or expired).

        Called without :attr:`cond` held: a mode takes it for what touches shared state and does slow work
        (proof checks, decryption) outside it. The last stage sets ``state.aggregate``. Raising
        ``secagg.SecAggError`` or :class:`InvalidInput` aborts the round with its message as the reason.
        """
        raise NotImplementedError

    def close_round(self, state: RoundState) -> None:
        """Release what the mode opened for ``state`` (spool files); called once the round has ended."""

    def roster_problem(self, roster: Roster) -> str | None:
        """Why this federation cannot run its next rounds on ``roster`` (a new roster version), or ``None``.

        The threshold, collusion bound and ``min_cohort`` are the federation's settings and do not change with
        the roster: a version whose size breaks their rules (t > (n + c) / 2, t <= n, min_cohort <= n) is
        refused and the roster in force stays. A mode adds what else it sized for the roster.
        """
        s = self.settings
        try:
            check_threshold(
                n=len(roster.members),
                threshold=s.threshold,
                collusion=s.collusion,
                min_cohort=s.min_cohort,
            )
        except InvalidParameters as exc:
            return str(exc)
        return None

    def _use_roster(self, roster: Roster) -> None:
        """Run the next rounds on ``roster`` (caller holds :attr:`cond`, or nothing runs yet)."""
        self.roster = roster
        self.quantizer = Quantizer(
            clip=self.settings.clip, bits=self.settings.bits, max_silos=len(roster.members)
        )

    def _adopt_roster(self, round_: int) -> None:
        """Adopt a new roster version before round ``round_`` opens, if the governed file offers one."""
        governance = self.governance
        if governance is None:
            return
        version = governance.poll()
        if version is None:
            return
        problem = self.roster_problem(version.roster)
        if problem is not None:
            log.error(
                "roster version %d refused: %s; the version in force stays",
                version.version,
                problem,
            )
            return
        body = governance.change(version) | {"first_round": round_}
        self.audit.record(
            EventKind.ROSTER_CHANGED, round_, body
        )  # in the ledger before it is in force
        governance.adopt(version)
        with self.cond:
            self._use_roster(version.roster)
        log.info(
            "roster version %d adopted from round %d: %d silos (added %s, removed %s, key rotated %s)",
            version.version,
            round_,
            len(version.roster.members),
            ", ".join(body["added"]) or "none",
            ", ".join(body["removed"]) or "none",
            ", ".join(r["id"] for r in body["rotated"]) or "none",
            extra={"round": round_, "roster_version": version.version},
        )

    # Silo-facing building blocks -------------------------------------------------------------------------
    def join(self, silo: str) -> None:
        """Record that ``silo`` has joined (its ``Join`` call); round 0 opens once ``min_cohort`` have."""
        self.member(silo)
        with self.cond:
            self._joined.add(silo)
            self.metrics.joined_silos.set(len(self._joined))
            self.cond.notify_all()

    def saw_certificate(self, silo: str, pem: bytes) -> None:
        """Keep the client certificate ``silo`` presented at its ``Join`` (its mutual-TLS handshake)."""
        if pem:
            with self.cond:
                self._certificates[silo] = pem

    @property
    def certificates(self) -> dict[str, bytes]:
        """Each member's certificate as seen at its latest ``Join`` (PEM); silos check their peers' with it."""
        with self.cond:
            return dict(self._certificates)

    @property
    def joined(self) -> frozenset[str]:
        """The silos that have joined since this coordinator started."""
        with self.cond:
            return frozenset(self._joined)

    @property
    def cohort_shortfall(self) -> str | None:
        """Why the federation gave up before round 0 (too few silos joined by the join deadline), if it did."""
        return self._cohort_shortfall

    def member(self, silo: str) -> None:
        """Refuse a caller that is not on the roster."""
        if silo not in self.roster.members:
            raise Unauthorized(f"{silo!r} is not a member of federation {self.settings.federation}")

    def current(self, round_: int, stage: enum.StrEnum) -> RoundState:
        """The open round ``round_``, which must be in ``stage`` (caller holds :attr:`cond`)."""
        state = self._round
        if state is None or state.number != round_:
            if round_ < self._next:
                raise StageError(f"round {round_} is over")
            raise NotFound(f"round {round_} is not open")
        if state.stage is not stage:
            raise StageError(f"round {round_} is in stage {state.stage.value}, not {stage.value}")
        return state

    def submit(
        self,
        silo: str,
        round_: int,
        stage: enum.StrEnum,
        receive: Callable[[RoundState], object],
        *,
        already: str,
    ) -> None:
        """A one-message submission: check the caller and the stage, hand it to the mode, mark it arrived.

        Args:
            silo: the authenticated caller.
            round_: the round.
            stage: the stage the submission belongs to.
            receive: the mode's handler (under :attr:`cond`); a ``SecAggError`` becomes :class:`InvalidInput`.
            already: what the silo did, for the duplicate refusal ("advertised keys").
        """
        self.member(silo)
        with self.cond:
            state = self.current(round_, stage)
            if silo in state.arrived:
                raise DuplicateSubmission(f"{silo} already {already} for round {round_}")
            protocol(lambda: receive(state))
            self.arrive(state, silo)

    def arrive(self, state: RoundState, silo: str) -> None:
        """Record ``silo``'s answer to the open stage (caller holds :attr:`cond`)."""
        state.arrived.add(silo)
        self.cond.notify_all()

    def open_upload(
        self,
        silo: str,
        round_: int,
        sink: Callable[[RoundState], UploadSink],
        *,
        attestation: bytes = b"",
        signature: bytes = b"",
    ) -> Upload:
        """Start a streamed submission in the mode's :attr:`upload_stage` (a context manager), after its
        privacy attestation (bound to the round's session id) is checked and recorded.

        Raises:
            DuplicateSubmission: the silo already submitted (or is submitting) this round.
            StageError: the stage deadline has passed, the silo is not expected in this stage, or an earlier
                upload broke off where the mode allows no restart.
            PrivacyRefused, InvalidInput: see :func:`~coordinator.rounds.audit.attest_contribution`, or the
                mode's sink refused the stream's header.
        """
        stage, already = self.upload_stage, self.uploaded
        self.member(silo)
        with self.cond:
            state = self.current(round_, stage)
            if silo in state.arrived or silo in state.uploads:
                raise DuplicateSubmission(f"{silo} already {already} for round {round_}")
            if silo in state.broken:
                raise StageError(
                    f"{silo}'s upload for round {round_} broke off; it cannot be restarted"
                )
            if silo not in state.expected:
                raise StageError(f"{silo} may not submit in stage {stage.value} of round {round_}")
            if state.deadline <= self.clock():
                raise StageError(f"the {stage.value} deadline of round {round_} has passed")
            epsilon = attest_contribution(
                self.audit,
                privacy=self.settings.privacy,
                roster=self.roster,
                federation=self.settings.federation,
                round_=round_,
                session_id=state.session_id,
                silo=silo,
                payload=attestation,
                signature=signature,
                attested=state.attested,
            )
            if epsilon is not None:
                self.metrics.epsilon.labels(silo=silo).set(epsilon)
            upload = Upload(self, state, silo, protocol(lambda: sink(state)))
            state.uploads[silo] = upload
        return upload

    def stage_open(self, state: RoundState, stage: enum.StrEnum) -> bool:
        """Whether ``state`` is the open round and in ``stage`` (caller holds :attr:`cond`)."""
        return self._round is state and state.stage is stage

    def upload_open(self, state: RoundState, stage: enum.StrEnum) -> None:
        """Refuse a chunk when ``stage`` of ``state`` is no longer open (caller holds :attr:`cond`)."""
        if not self.stage_open(state, stage):
            raise StageError(
                f"the {stage.value} stage of round {state.number} has closed; "
                "this upload was discarded"
            )
        if state.deadline <= self.clock():
            raise StageError(f"the {stage.value} deadline of round {state.number} has passed")

    def wait_past(self, round_: int, stage: enum.StrEnum, wait: float) -> RoundState:
        """Block until ``stage`` of ``round_`` has closed (a long poll); return the round state.

        Raises:
            TimeoutError: the stage is still open after ``wait`` seconds.
            NotFound: the round is not known.
            RoundAborted: the round was aborted.
        """
        order = {s: i for i, s in enumerate(self.stages)}

        def ready() -> bool:
            state = self._state(round_)
            return (
                self._stopping
                or state is None
                or state.outcome is not None
                or order.get(state.stage, len(order)) > order[stage]
            )

        with self.cond:
            if not wait_for(self.cond, ready, wait):
                raise TimeoutError(f"stage {stage.value} of round {round_} is still open")
            state = self._state(round_)
            if state is None:
                raise NotFound(f"round {round_} is not known")
            if state.stage is self.aborted or (
                state.outcome is not None and state.outcome.status is RoundStatus.ABORTED
            ):
                reason = state.outcome.reason if state.outcome is not None else "aborted"
                raise RoundAborted(f"round {round_} was aborted: {reason}")
            if self._stopping and order.get(state.stage, len(order)) <= order[stage]:
                raise RoundAborted(f"round {round_} was interrupted: the coordinator is stopping")
            return state

    # Shared silo-facing calls ----------------------------------------------------------------------------
    def view(self, *, after: int = 0, wait: float = 0.0) -> RoundView:
        """The open round with number >= ``after`` (waiting up to ``wait`` seconds for it to open)."""
        with self.cond:
            wait_for(
                self.cond,
                lambda: (
                    self._stopping
                    or self.finished
                    or (self._round is not None and self._round.number >= after)
                ),
                wait,
            )
            state = self._round
            if state is None or state.number < after:
                if self.finished:
                    return RoundView(
                        self.announce(self._next),
                        RoundStatus.COMPLETED,
                        self.done,
                        self.settings.rounds,
                        0.0,
                        True,
                        b"\0" * 32,
                        roster_fingerprint=self.roster.fingerprint(),
                    )
                raise NotFound(f"no round >= {after} is open yet")
            return RoundView(
                state.config,
                RoundStatus.OPEN,
                state.stage,
                self.settings.rounds,
                state.deadline,
                False,
                state.start_hash,
                state.session_nonce,
                self.roster.fingerprint(),
            )

    def held_bytes(self, round_: int) -> int:
        """Bytes of vectors round ``round_`` still holds in memory (0 once a finished round is released).

        A finished round stays in memory for late long polls; this shows it kept none of its vectors.
        """
        with self.cond:
            state = self._state(round_)
            return 0 if state is None else state.held_bytes()

    def open_round_number(self) -> int | None:
        """The number of the round in progress, or ``None`` between rounds."""
        with self.cond:
            return None if self._round is None else self._round.number

    def model_bytes(self, round_: int) -> tuple[bytes, bytes]:
        """The global model round ``round_`` starts from, as float32 little-endian bytes, and its hash.

        The latest model is kept in memory once, so N silos downloading it at the same time share one copy
        instead of each holding their own (coordinator memory must not grow with the number of silos). Loads
        are single-flight: the N requests that arrive together when a round opens all miss the cache, and if
        each loaded the model itself (the SQLite blob, the array, its bytes: three vectors each) the
        coordinator's peak memory would be N times that.
        """
        with self._model_load:
            with self.cond:
                cached = self._model_cache
            if cached is not None and cached[0] == round_:
                return cached[1], cached[2]
            model, digest = self.store.model(self.settings.federation, round_)
            data = model.astype("<f4").tobytes()
            del model  # one vector less while the bytes exist
            self._cache_model(round_, data, digest)
            return data, digest

    def result(self, round_: int, wait: float) -> RoundOutcome:
        """The outcome of a round (from memory, or from the store for earlier rounds)."""
        if round_ >= self.settings.rounds:
            raise NotFound(f"round {round_} is beyond the {self.settings.rounds} planned rounds")
        with self.cond:
            wait_for(self.cond, lambda: self._stopping or round_ < self._next, wait)
            state = self._state(round_)
            if state is not None and state.outcome is not None:
                return state.outcome
        for record in self.store.rounds(self.settings.federation):
            if record.round == round_ and record.status is not RoundStatus.OPEN:
                return _outcome_of(record)
        raise TimeoutError(f"round {round_} has not finished")

    # Lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the driver thread."""
        self._thread = threading.Thread(target=self._drive, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after waking every waiter; an open round stays open in the store (aborted on restart)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (thread-safe, non-blocking: it runs with the lock held) whenever a long poll's
        answer may have changed; returns the function that removes it (see :mod:`coordinator.rounds.polls`)."""
        return self.cond.listen(listener)

    def wake(self) -> None:
        """Re-check the open stage's deadline now (after an injected clock moved on; tests use it)."""
        with self.cond:
            self.cond.notify_all()

    @property
    def finished(self) -> bool:
        """True once every planned round has run."""
        return self._next >= self.settings.rounds and self._round is None

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until every planned round has run, or the federation gave up waiting for its cohort."""
        with self.cond:
            return self.cond.wait_for(
                lambda: self.finished or self._stopping or self._cohort_shortfall is not None,
                timeout,
            )

    def run_round(self, round_: int) -> None:
        """Run round ``round_`` to its end (the driver thread's work; tests may call it directly)."""
        fed = self.settings.federation
        self._adopt_roster(round_)
        start, start_hash = self._start_model(round_)
        state = self.open_state(round_, start, start_hash)
        del start
        state.expected = frozenset(self.roster.members)
        self.store.open_round(fed, round_, start_hash)
        s = self.settings
        self.audit.record(
            EventKind.ROUND_OPENED,
            round_,
            {
                "model_hash": start_hash.hex(),
                "n": len(self.roster.members),
                "threshold": s.threshold,
                "collusion": s.collusion,
                "min_cohort": s.min_cohort,
                "vector_length": s.vector_length,
                "clip": s.clip,
                "bits": s.bits,
            }
            | self.opened_facts(state),
        )
        outcome: RoundOutcome | None = None
        began = time.monotonic()
        try:
            with self.cond:
                self._round = state
                self.cond.notify_all()
            for stage, limit in zip(self.stages, self.stage_deadlines(), strict=True):
                self._run_stage(state, stage, limit)
                if self._stopping:
                    return
            aggregate = state.aggregate
            assert aggregate is not None, "the last stage sets the aggregate"
            # the session every contributor's attestation is bound to (a verifier checks each is there)
            participants = {"session_id": state.session_id.hex()} | dict(
                aggregate.extra_participants
            )
            outcome = self._complete(state, aggregate)
            self._record_outcome(
                outcome, stage=None, restart=False, extra_participants=participants
            )
        except (SecAggError, InvalidInput) as exc:
            outcome = RoundOutcome(round_, RoundStatus.ABORTED, reason=str(exc))
            self.store.abort_round(fed, round_, outcome.reason)
            log.warning("round %d aborted: %s", round_, outcome.reason)
            self._record_outcome(outcome, stage=state.stage.value, restart=False)
        finally:
            self.close_round(state)
            if not self._stopping or outcome is not None:
                self._finish(state, outcome)
            if outcome is not None:
                self._count_round(outcome, time.monotonic() - began)

    def _count_round(self, outcome: RoundOutcome, seconds: float) -> None:
        """Count and log how a round ended (no update, mask or share: names, counts and hashes only)."""
        status = outcome.status.value
        self.metrics.rounds.labels(outcome=status).inc()
        if outcome.status is RoundStatus.COMPLETED:
            self.metrics.dropouts.inc(len(outcome.dropped))
        log.info(
            "round %d %s",
            outcome.round,
            status,
            extra={
                "round": outcome.round,
                "outcome": status,
                "duration_s": round(seconds, 3),
                "survivors": len(outcome.survivors),
                "dropped": len(outcome.dropped),
                "reason": outcome.reason or None,
            },
        )

    # Internals -------------------------------------------------------------------------------------------
    def _state(self, round_: int) -> RoundState | None:
        if self._round is not None and self._round.number == round_:
            return self._round
        return self._finished_rounds.get(round_)

    def _drive(self) -> None:
        if self._next == 0 and not self._await_cohort():
            return
        while True:
            with self.cond:
                if self._stopping or self._next >= self.settings.rounds:
                    self.cond.notify_all()
                    return
                round_ = self._next
            self.run_round(round_)

    def _await_cohort(self) -> bool:
        """Wait until ``min_cohort`` silos have joined, or the join deadline passes (then give up: False).

        A round opened before enough silos are connected can only abort (it could release no sum), and one
        aborted round after another used to run the federation to its end with nothing trained.
        """
        needed = self.settings.min_cohort
        limit = self.settings.deadlines.join
        deadline = self.clock() + limit
        with self.cond:
            while not self._stopping and len(self._joined) < needed:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    joined = len(self._joined)
                    self._cohort_shortfall = (
                        f"only {joined} of the {needed} silos round 0 needs (min_cohort) joined within "
                        f"the {limit:g} s join deadline"
                    )
                    log.warning("no round opened: %s", self._cohort_shortfall)
                    self.cond.notify_all()
                    return False
                self.cond.wait(min(remaining, 0.5))
            return not self._stopping

    def _run_stage(self, state: RoundState, stage: enum.StrEnum, limit: float) -> None:
        began = time.monotonic()
        outcome = "aborted"
        try:
            self._stage_loop(state, stage, limit)
            outcome = "stopped" if self._stopping else "closed"
        finally:
            seconds = time.monotonic() - began
            with self.cond:
                answered = len(state.arrived)
                expected = len(state.expected)
            self.metrics.stage_seconds.labels(stage=stage.value, mode=self.mode).observe(seconds)
            log.info(
                "round %d stage %s %s",
                state.number,
                stage.value,
                outcome,
                extra={
                    "round": state.number,
                    "stage": stage.value,
                    "duration_s": round(seconds, 3),
                    "answered": answered,
                    "dropped": max(0, expected - answered),
                    "outcome": outcome,
                },
            )

    def _stage_loop(self, state: RoundState, stage: enum.StrEnum, limit: float) -> None:
        with self.cond:
            state.stage = stage
            state.arrived = set()
            state.deadline = self.clock() + limit
            self.cond.notify_all()
        while True:
            with self.cond:
                while not self._stopping:
                    remaining = state.deadline - self.clock()
                    if remaining <= 0 or self.may_close(state):
                        break
                    self.cond.wait(min(remaining, 0.5))
                if self._stopping:
                    return
                expired = state.deadline <= self.clock()
                if expired:
                    # uploads still open at the deadline are cut off: their silos count as dropped
                    for upload in list(state.uploads.values()):
                        upload.cut_off()
                    state.uploads.clear()
            closed = self.close_stage(state, expired=expired)
            with self.cond:
                self.cond.notify_all()
            if closed:
                break
        release_free_memory()  # outside the lock: handler threads need not wait for it

    def _complete(self, state: RoundState, aggregate: Aggregate) -> RoundOutcome:
        """FedAvg over the aggregate, store the new model, and serve it to the next round from memory."""
        contributors = aggregate.contributors
        if aggregate.total is not None:
            new_model = fedavg(self.quantizer, state.start, aggregate.total, len(contributors))
        else:
            assert aggregate.mean is not None
            new_model = (state.start.astype(np.float64) + aggregate.mean).astype(np.float32)
        # The aggregate and the start model (with its download cache) are not needed any more: free them
        # before the store makes its copies of the new model, or they would all be resident together.
        silo_dp = aggregate.silo_dp
        del aggregate
        state.release()
        self._forget_model(state.number)
        # everyone on the roster who did not contribute, whether they dropped mid-round or never came
        dropped = tuple(m for m in self.roster.members if m not in contributors)
        digest = self.store.complete_round(
            self.settings.federation,
            state.number,
            survivors=contributors,
            dropped=dropped,
            new_model=new_model,
        )
        self._cache_model(
            state.number + 1, np.ascontiguousarray(new_model, dtype="<f4").tobytes(), digest
        )
        return RoundOutcome(
            state.number, RoundStatus.COMPLETED, contributors, dropped, digest, silo_dp=silo_dp
        )

    def _finish(self, state: RoundState, outcome: RoundOutcome | None) -> None:
        with self.cond:
            state.outcome = outcome
            completed = outcome is not None and outcome.status is RoundStatus.COMPLETED
            state.stage = self.done if completed else self.aborted
            self._round = None
            self._next = state.number + 1
            self._finished_rounds = {
                r: st for r, st in self._finished_rounds.items() if r >= state.number - 1
            }
            state.release()
            self._finished_rounds[state.number] = state
            self.cond.notify_all()

    def _start_model(self, round_: int) -> tuple[FloatVector, bytes]:
        """The model round ``round_`` starts from, as a read-only view of the cached download bytes.

        The round keeps it until FedAvg; sharing the download cache's memory saves one vector per round.
        """
        data, digest = self.model_bytes(round_)
        model: FloatVector = np.frombuffer(data, dtype="<f4")
        return model, digest

    def _cache_model(self, round_: int, data: bytes, digest: bytes) -> None:
        with self.cond:
            if round_ >= (self._model_cache[0] if self._model_cache else -1):
                self._model_cache = (round_, data, digest)

    def _forget_model(self, round_: int) -> None:
        """Drop the cached model of round ``round_`` (a late download reads it from the store again)."""
        with self.cond:
            if self._model_cache is not None and self._model_cache[0] == round_:
                self._model_cache = None

    # Audit -----------------------------------------------------------------------------------------------
    def _record_creation(self) -> None:
        s = self.settings
        privacy: dict[str, Any] | None = None
        if s.privacy is not None:
            privacy = {
                "unit_of_privacy": s.privacy.unit_of_privacy,
                "budget": {"epsilon": s.privacy.epsilon, "delta": s.privacy.delta},
                "on_violation": s.privacy.on_violation,
                "require_attestation": s.privacy.require_attestation,
            }
        extra = self.privacy_facts()
        if extra:
            privacy = dict(privacy or {}) | extra
        self.audit.created(
            config=s.as_dict() | self.settings_facts(),
            roster=self.roster,
            threat_model={
                "n": len(self.roster.members),
                "t": s.threshold,
                "c": s.collusion,
                "min_cohort": s.min_cohort,
            }
            | self.threat_model(),
            privacy=privacy,
            governance=None if self.governance is None else self.governance.created_facts(),
        )

    def _reconcile_ledger(self) -> None:
        """Record the end of any round the store finished but the ledger missed (a crash between the two)."""
        recorded = self.audit.closed_rounds()
        for record in self.store.rounds(self.settings.federation):
            if record.status is RoundStatus.OPEN or record.round in recorded:
                continue
            self._record_outcome(_outcome_of(record), stage=None, restart=True)

    def _record_outcome(
        self,
        outcome: RoundOutcome,
        *,
        stage: str | None,
        restart: bool,
        extra_participants: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how a round ended (participants, model, closing or abort) and sign a checkpoint."""
        extra: dict[str, Any] = {"recorded_at_restart": True} if restart else {}
        r = outcome.round
        if outcome.status is RoundStatus.COMPLETED:
            digest = outcome.new_model_hash.hex()
            closed: dict[str, Any] = {"global_model_hash": digest} | extra
            if outcome.silo_dp is not None:
                closed["silo_level_dp"] = dict(outcome.silo_dp)
                if outcome.silo_dp["wraps"]:
                    self.audit.record(
                        EventKind.INCIDENT,
                        r,
                        {
                            "severity": "warning",
                            "description": f"{outcome.silo_dp['wraps']} coordinates of the distributed-DP "
                            "sum wrapped around the modulus",
                        },
                    )
            self.audit.record_many(
                [
                    (
                        EventKind.PARTICIPANTS,
                        r,
                        {"survivors": list(outcome.survivors), "dropped": list(outcome.dropped)}
                        | dict(extra_participants or {})
                        | extra,
                    ),
                    (EventKind.GLOBAL_MODEL, r, {"model_hash": digest}),
                    (EventKind.ROUND_CLOSED, r, closed),
                ]
            )
        else:
            body: dict[str, Any] = {"reason": outcome.reason or "aborted"} | extra
            if stage is not None:
                body["stage"] = stage
            self.audit.record(EventKind.ROUND_ABORTED, r, body)
        self.audit.checkpoint()
        self.metrics.ledger_entries.set(self.audit.ledger.size)


def _outcome_of(record: Any) -> RoundOutcome:
    return RoundOutcome(
        record.round,
        record.status,
        record.survivors,
        record.dropped,
        record.new_model_hash,
        record.reason,
    )
