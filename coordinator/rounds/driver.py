"""The round service: drives the ``secagg`` server role round after round, with deadlines, and applies FedAvg.

One driver thread runs the rounds; gRPC handler threads call the submit/wait methods. A stage closes when
every expected silo has answered or its deadline passes, whichever comes first; whoever has not answered by
then has dropped. All protocol state lives in memory for the duration of one round only.

Notes:
    The coordinator only ever holds the running sum of masked vectors and, after unmasking, the sum of at
    least ``max(threshold, min_cohort)`` silos' quantized updates (DESIGN 2 and 4). Uploads are added into the
    running sum chunk by chunk as they arrive; a broken upload is subtracted back out from a spool file, so a
    partial vector never pollutes the sum and memory does not grow with the number of silos. An upload still
    open when the masked-input deadline passes is rolled back by the driver itself, so a silo that stalls
    mid-stream counts as dropped instead of holding the round hostage.

    Every privacy-relevant fact goes to the audit ledger (:class:`~coordinator.rounds.audit.AuditTrail`) before the
    silos can observe it: the round opening, key fingerprints, each privacy attestation with the coordinator's
    own epsilon recomputation (or the refusal), participants, the new global model, the closing, and a signed
    checkpoint after every round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from audits import EventKind
from coordinator._malloc import release_free_memory
from coordinator.common import FloatVector, RoundStatus
from coordinator.config import Deadlines, PrivacyConfig, SiloDPConfig
from coordinator.errors import (
    DuplicateSubmission,
    InvalidInput,
    NotFound,
    StageError,
    Unauthorized,
)
from coordinator.rounds.audit import AuditTrail, attest_contribution
from coordinator.silo_dp import decode_sum
from coordinator.store import Store
from dp.distributed import UNIT_OF_PRIVACY, DistributedDPConfig, DistributedDPPlan, plan
from dp.errors import (
    TooFewContributors,
)
from secagg import (
    Advertisement,
    EncryptedShare,
    ProtocolError,
    Quantizer,
    Roster,
    RoundAborted,
    RoundConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["FederationSettings", "RoundDriver", "RoundOutcome", "RoundService", "RoundView"]

log = logging.getLogger(__name__)


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

    def to_json(self) -> str:
        """Canonical JSON of the settings (stored with the federation; a restart must match it)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RoundOutcome:
    """How a round ended."""

    round: int
    status: RoundStatus
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    new_model_hash: bytes = b""
    reason: str = ""
    silo_dp: Mapping[str, Any] | None = None  # silo-level DP facts of a completed round


@dataclass(frozen=True)
class RoundView:
    """What a silo learns about the round in progress."""

    config: RoundConfig
    status: RoundStatus
    stage: Stage
    rounds: int
    stage_deadline: float
    finished: bool


_STAGE_ORDER = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)


DECODE_BLOCK = 1 << 16
"""Coordinates decoded at a time by :func:`fedavg` (its float64 temporaries are 512 KiB each)."""


def fedavg(
    quantizer: Quantizer,
    start: FloatVector,
    total: npt.NDArray[np.uint32],
    count: int,
    *,
    block: int = DECODE_BLOCK,
) -> FloatVector:
    """FedAvg: ``start + decode(total) / count`` as float32, computed ``block`` coordinates at a time.

    Equal, bit for bit, to ``(start.astype(float64) + quantizer.decode_sum(total, count=count) / count)
    .astype(float32)``: every step is element-wise. Decoding the whole vector at once would hold five float64
    and int64 temporaries of twice the vector's size at the same time (the coordinator's peak memory).
    """
    if block < 1:
        raise ValueError("block must be positive")
    new_model: FloatVector = np.empty(start.shape[0], dtype=np.float32)
    for lo in range(0, start.shape[0], block):
        hi = lo + block
        mean = quantizer.decode_sum(total[lo:hi], count=count) / count
        new_model[lo:hi] = start[lo:hi].astype(np.float64) + mean
    return new_model


class _Round:
    """In-memory state of the open round."""

    def __init__(self, config: RoundConfig, roster: Roster, start: FloatVector) -> None:
        self.config = config
        self._server: SecAggServer | None = SecAggServer(config=config, roster=roster)
        self.start = start
        self.stage = Stage.ADVERTISE_KEYS
        self.deadline = 0.0
        self.expected: frozenset[str] = frozenset(roster.members)
        self.arrived: set[str] = set()
        self.uploads: dict[str, Upload] = {}
        self.attested: dict[str, tuple[bytes, bytes]] = {}  # silo -> (attestation, signature)
        self.advertisements: tuple[Advertisement, ...] = ()
        self.inbox: Mapping[str, tuple[EncryptedShare, ...]] = {}
        self.survivors: tuple[str, ...] = ()
        self.request: UnmaskRequest | None = None
        self.outcome: RoundOutcome | None = None

    @property
    def server(self) -> SecAggServer:
        """The ``secagg`` server role of this round, until the round ends."""
        if self._server is None:
            raise StageError(f"round {self.config.round} is over")
        return self._server

    def release(self) -> None:
        """Drop what only the open round needs: the protocol state (with its running sum) and the start model.

        A finished round stays in memory for late long polls, which read only the stage results kept here;
        without this, the last finished round would hold two more vectors for the whole next round.
        """
        self._server = None
        self.start = np.empty(0, dtype=np.float32)
        self.uploads.clear()


class Upload:
    """One silo's streamed masked vector; use as a context manager so a broken stream is rolled back.

    Each chunk is added into the running sum and spooled to a temporary file under the service lock, so the
    round driver can roll an unfinished upload back at the deadline (:meth:`_rollback`) while its handler
    thread is still blocked reading from the network.
    """

    def __init__(self, service: RoundService, state: _Round, silo: str) -> None:
        self._service = service
        self._state = state
        self.silo = silo
        self._spool = tempfile.TemporaryFile(prefix="secagg-upload-")  # noqa: SIM115 - closed in __exit__
        self._chunks: list[tuple[int, int, int]] = []  # (offset, length, spool position) added
        self._done = False
        self.cancelled = False

    def add(self, offset: int, values: npt.NDArray[np.uint32]) -> None:
        """Add one chunk into the running sum (and spool it in case the stream breaks)."""
        self._service._add_chunk(self, self._state, offset, values)

    def finish(self) -> None:
        """The last chunk has arrived: the silo's submission is complete."""
        self._service._finish_upload(self, self._state)
        self._done = True

    def _spool_chunk(self, values: npt.NDArray[np.uint32]) -> int:
        """Write a chunk to the spool before it is added; returns its position in the spool."""
        position = self._spool.seek(0, 2)
        self._spool.write(np.ascontiguousarray(values).data)  # the chunk's own buffer, not a copy
        return position

    def _rollback(self) -> None:
        """Subtract every chunk added so far (caller holds the service lock)."""
        if self.cancelled:
            return
        self.cancelled = True
        for offset, length, position in reversed(self._chunks):
            self._spool.seek(position)
            chunk = np.frombuffer(self._spool.read(length * 4), dtype=np.uint32)
            self._state.server.discard_masked_chunk(self.silo, offset, chunk)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._done:
                self._service._abandon_upload(self, self._state)
        finally:
            self._spool.close()


class RoundDriver:
    """What both aggregation modes share: the driver thread's lifecycle and the audit record of round outcomes.

    A subclass sets ``settings``, ``store``, ``audit``, ``_cond``, ``_round``, ``_next``, ``_stopping`` and
    ``_thread`` and implements :meth:`_run_round`.
    """

    _THREAD_NAME = "round-driver"
    settings: FederationSettings
    store: Store
    audit: AuditTrail
    _cond: threading.Condition
    _round: object | None
    _next: int
    _stopping: bool
    _thread: threading.Thread | None
    roster: Roster
    _model_cache: tuple[int, bytes, bytes] | None = None  # (round, float32 bytes, hash)
    # One lock for every driver in the process (a class attribute, so neither mode's constructor has to make
    # it): model loads are rare (once per round) and short, so sharing it costs nothing.
    _model_load = threading.Lock()

    def _run_round(self, round_: int) -> None:
        raise NotImplementedError

    def _state(self, round_: int) -> Any:
        """The in-memory state of round ``round_`` (open, or one of the last finished), or ``None``."""
        raise NotImplementedError

    # Shared silo-facing calls ---------------------------------------------------------------------------
    def _member(self, silo: str) -> None:
        if silo not in self.roster.members:
            raise Unauthorized(f"{silo!r} is not a member of federation {self.settings.federation}")

    def _start_model(self, round_: int) -> tuple[FloatVector, bytes]:
        """The model round ``round_`` starts from, as a read-only view of the cached download bytes.

        The round keeps it until FedAvg; sharing the download cache's memory saves one vector per round.
        """
        data, digest = self.model_bytes(round_)
        model: FloatVector = np.frombuffer(data, dtype="<f4")
        return model, digest

    def _remember_model(self, round_: int, model: FloatVector, digest: bytes) -> None:
        """Cache the model round ``round_`` starts from (just stored under ``digest``) for its downloads."""
        data = np.ascontiguousarray(model, dtype="<f4").tobytes()
        with self._cond:
            if round_ >= (self._model_cache[0] if self._model_cache else -1):
                self._model_cache = (round_, data, digest)

    def _forget_model(self, round_: int) -> None:
        """Drop the cached model of round ``round_`` (a late download reads it from the store again)."""
        with self._cond:
            if self._model_cache is not None and self._model_cache[0] == round_:
                self._model_cache = None

    def model_bytes(self, round_: int) -> tuple[bytes, bytes]:
        """The global model round ``round_`` starts from, as float32 little-endian bytes, and its hash.

        The latest model is kept in memory once, so N silos downloading it at the same time share one copy
        instead of each holding their own (coordinator memory must not grow with the number of silos). Loads
        are single-flight: the N requests that arrive together when a round opens all miss the cache, and if
        each loaded the model itself (the SQLite blob, the array, its bytes: three vectors each) the
        coordinator's peak memory would be N times that.
        """
        with self._model_load:
            with self._cond:
                cached = self._model_cache
            if cached is not None and cached[0] == round_:
                return cached[1], cached[2]
            model, digest = self.store.model(self.settings.federation, round_)
            data = model.astype("<f4").tobytes()
            del model  # one vector less while the bytes exist (the array is not needed any more)
            with self._cond:
                if round_ >= (self._model_cache[0] if self._model_cache else -1):
                    self._model_cache = (round_, data, digest)
            return data, digest

    def result(self, round_: int, wait: float) -> RoundOutcome:
        """The outcome of a round (from memory, or from the store for earlier rounds)."""
        if round_ >= self.settings.rounds:
            raise NotFound(f"round {round_} is beyond the {self.settings.rounds} planned rounds")
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or round_ < self._next, wait)
            state = self._state(round_)
            if state is not None and state.outcome is not None:
                outcome: RoundOutcome = state.outcome
                return outcome
        for record in self.store.rounds(self.settings.federation):
            if record.round == round_ and record.status is not RoundStatus.OPEN:
                return RoundOutcome(
                    round_,
                    record.status,
                    record.survivors,
                    record.dropped,
                    record.new_model_hash,
                    record.reason,
                )
        raise TimeoutError(f"round {round_} has not finished")

    # Lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the driver thread."""
        self._thread = threading.Thread(target=self._drive, name=self._THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after waking every waiter; an open round stays open in the store (aborted on restart)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def finished(self) -> bool:
        """True once every planned round has run."""
        return self._next >= self.settings.rounds and self._round is None

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until every planned round has run."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished or self._stopping, timeout)

    def _drive(self) -> None:
        while True:
            with self._cond:
                if self._stopping or self._next >= self.settings.rounds:
                    self._cond.notify_all()
                    return
                round_ = self._next
            self._run_round(round_)

    # Audit ---------------------------------------------------------------------------------------------
    def _reconcile_ledger(self) -> None:
        """Record the end of any round the store finished but the ledger missed (a crash between the two)."""
        recorded = self.audit.closed_rounds()
        for record in self.store.rounds(self.settings.federation):
            if record.status is RoundStatus.OPEN or record.round in recorded:
                continue
            outcome = RoundOutcome(
                record.round,
                record.status,
                record.survivors,
                record.dropped,
                record.new_model_hash,
                record.reason,
            )
            self._record_outcome(outcome, stage=None, restart=True)

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


class RoundService(RoundDriver):
    """Runs a federation's rounds and answers the silos' calls. Thread-safe.

    Args:
        settings: the federation parameters.
        roster: the verified roster.
        store: persistence for rounds and global models.
        initial_model: round-0 model (used only when the store has none).
        audit: the federation's audit trail (ledger and checkpoint signer).
        clock: wall-clock source, injectable for tests.
    """

    def __init__(
        self,
        *,
        settings: FederationSettings,
        roster: Roster,
        store: Store,
        initial_model: FloatVector,
        audit: AuditTrail,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if initial_model.shape != (settings.vector_length,):
            raise InvalidInput(f"initial model must have {settings.vector_length} parameters")
        self.settings = settings
        self.roster = roster
        self.store = store
        self.audit = audit
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._round: _Round | None = None
        self._finished_rounds: dict[int, _Round] = {}  # the last two, for late long polls
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._quantizer = Quantizer(
            clip=settings.clip, bits=settings.bits, max_silos=len(roster.members)
        )
        self.silo_dp_plan: DistributedDPPlan | None = None
        if settings.silo_dp is not None:
            d = settings.silo_dp
            self.silo_dp_plan = plan(
                DistributedDPConfig(
                    mechanism="ddg" if d.mechanism == "ddg" else "skellam",
                    l2_norm_clip=settings.clip,
                    rounds=settings.rounds,
                    n_silos=len(roster.members),
                    noise_multiplier=d.noise_multiplier,
                    target_delta=d.delta,
                    bits=d.bits,
                    dropouts_tolerated=d.dropouts_tolerated,
                    collusion_bound=settings.collusion,
                    rotation=d.rotation,
                ),
                settings.vector_length,
            )
        store.init_federation(
            settings.federation, settings=settings.to_json(), initial_model=initial_model
        )
        aborted = store.abort_open_rounds(
            settings.federation, "coordinator restarted during the round"
        )
        if aborted:
            log.warning(
                "rounds %s were interrupted by a restart and are recorded as aborted", aborted
            )
        self._record_creation()
        self._reconcile_ledger()
        self._next = len(store.rounds(settings.federation))

    # Audit ---------------------------------------------------------------------------------------------
    def _record_creation(self) -> None:
        s = self.settings
        privacy = None
        if s.privacy is not None:
            privacy = {
                "unit_of_privacy": s.privacy.unit_of_privacy,
                "budget": {"epsilon": s.privacy.epsilon, "delta": s.privacy.delta},
                "on_violation": s.privacy.on_violation,
                "require_attestation": s.privacy.require_attestation,
            }
        p = self.silo_dp_plan
        if p is not None:
            privacy = dict(privacy or {})
            privacy["silo_level"] = {
                "unit_of_privacy": UNIT_OF_PRIVACY,
                "mechanism": p.config.mechanism,
                "noise_multiplier": p.noise_multiplier,
                "bits": p.bits,
                "min_honest_survivors": p.config.min_honest,
                "planned_epsilon": p.epsilon,
                "delta": p.config.target_delta,
            }
        self.audit.created(
            config=json.loads(s.to_json()),
            roster=self.roster,
            threat_model={
                "n": len(self.roster.members),
                "t": s.threshold,
                "c": s.collusion,
                "min_cohort": s.min_cohort,
                "mode": "masking",
            },
            privacy=privacy,
        )

    def _config(self, round_: int, start_hash: bytes) -> RoundConfig:
        s = self.settings
        return RoundConfig(
            federation=s.federation,
            round=round_,
            model_hash=start_hash,
            vector_length=(
                self.silo_dp_plan.padded_dimension if self.silo_dp_plan else s.vector_length
            ),
            quantizer=self._quantizer,
            n=len(self.roster.members),
            threshold=s.threshold,
            collusion=s.collusion,
            min_cohort=s.min_cohort,
        )

    def _run_round(self, round_: int) -> None:
        fed = self.settings.federation
        start, start_hash = self._start_model(round_)
        state = _Round(self._config(round_, start_hash), self.roster, start)
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
            },
        )
        deadlines = self.settings.deadlines
        limits = (
            deadlines.advertise,
            deadlines.share_keys,
            deadlines.masked_input,
            deadlines.consistency,
            deadlines.unmask,
        )
        with self._cond:
            self._round = state
            state.deadline = self._clock() + limits[0]
            self._cond.notify_all()
        try:
            for stage, limit in zip(_STAGE_ORDER, limits, strict=True):
                self._run_stage(state, stage, limit)
                if self._stopping:
                    return
            outcome = state.outcome
            assert outcome is not None
            self._record_outcome(outcome, stage=None, restart=False)
        except (SecAggError, ProtocolError) as exc:
            outcome = RoundOutcome(round_, RoundStatus.ABORTED, reason=str(exc))
            self.store.abort_round(fed, round_, outcome.reason)
            log.warning("round %d aborted: %s", round_, outcome.reason)
            self._record_outcome(outcome, stage=state.stage.value, restart=False)
        with self._cond:
            state.outcome = outcome
            state.stage = (
                Stage.DONE if outcome and outcome.status is RoundStatus.COMPLETED else Stage.ABORTED
            )
            self._round = None
            self._next = round_ + 1
            self._finished_rounds = {
                r: s for r, s in self._finished_rounds.items() if r >= round_ - 1
            }
            state.release()
            self._finished_rounds[round_] = state
            self._cond.notify_all()

    def _run_stage(self, state: _Round, stage: Stage, limit: float) -> None:
        with self._cond:
            state.stage = stage
            state.arrived = set()
            state.deadline = self._clock() + limit
            self._cond.notify_all()
            while not self._stopping:
                remaining = state.deadline - self._clock()
                if state.expected <= state.arrived or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            if self._stopping:
                return
            if stage is Stage.MASKED_INPUT:
                # uploads still open at the deadline are cut off here: their silos count as dropped
                for upload in state.uploads.values():
                    upload._rollback()
                state.uploads.clear()
            self._close_stage(state, stage)
            self._cond.notify_all()
        release_free_memory()  # outside the lock: handler threads need not wait for it

    def _close_stage(self, state: _Round, stage: Stage) -> None:
        server = state.server
        if stage is Stage.ADVERTISE_KEYS:
            state.advertisements = server.close_advertise()
            state.expected = frozenset(ad.silo for ad in state.advertisements)
            self.audit.key_fingerprints(state.config.round, state.advertisements)
        elif stage is Stage.SHARE_KEYS:
            state.inbox = server.close_share_keys()
            state.expected = frozenset(state.inbox)
        elif stage is Stage.MASKED_INPUT:
            state.survivors = server.close_masked_input()
            state.expected = frozenset(state.survivors)
        elif stage is Stage.CONSISTENCY_CHECK:
            state.request = server.close_consistency()
            state.expected = frozenset(sig.silo for sig in state.request.signatures)
        elif stage is Stage.UNMASK:
            result = server.close_unmask()
            survivors = result.survivors
            count = len(survivors)
            silo_dp = None
            if self.silo_dp_plan is None:
                new_model = fedavg(self._quantizer, state.start, result.total, count)
            else:
                mean, silo_dp = self._decode_silo_dp(state, result.total, count)
                new_model = (state.start.astype(np.float64) + mean).astype(np.float32)
                del mean
            # The running sum and the start model (with its download cache) are not needed any more: free them
            # before the store makes its copies of the new model, or they would all be resident together.
            del result, server
            state.release()
            self._forget_model(state.config.round)
            # everyone on the roster who did not contribute, whether they dropped mid-round or never came
            dropped = tuple(m for m in self.roster.members if m not in survivors)
            digest = self.store.complete_round(
                self.settings.federation,
                state.config.round,
                survivors=survivors,
                dropped=dropped,
                new_model=new_model,
            )
            # the next round starts from this model: serve it from memory rather than reading it back
            self._remember_model(state.config.round + 1, new_model, digest)
            state.outcome = RoundOutcome(
                state.config.round,
                RoundStatus.COMPLETED,
                survivors,
                dropped,
                digest,
                silo_dp=silo_dp,
            )

    def _decode_silo_dp(
        self, state: _Round, total: npt.NDArray[np.uint32], count: int
    ) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
        """Decode a distributed-DP sum; the silo-level epsilon composes over the completed rounds so far."""
        p = self.silo_dp_plan
        assert p is not None
        try:
            estimate, wraps = decode_sum(total, p, state.config, count)
        except TooFewContributors as exc:
            raise RoundAborted(f"silo-level DP: {exc}") from exc
        completed = sum(
            r.status is RoundStatus.COMPLETED for r in self.store.rounds(self.settings.federation)
        )
        spent = p.silo_level_epsilon(rounds=completed + 1)
        facts = {
            "epsilon": spent.epsilon,
            "delta": spent.delta,
            "rounds": spent.rounds,
            "mechanism": spent.mechanism,
            "rdp_order": spent.order,
            "unit_of_privacy": UNIT_OF_PRIVACY,
            "noise_multiplier": p.noise_multiplier,
            "bits": p.bits,
            "contributors": count,
            "wraps": wraps,
        }
        return estimate / count, facts

    # Silo-facing API -----------------------------------------------------------------------------------
    def _current(self, round_: int, stage: Stage) -> _Round:
        state = self._round
        if state is None or state.config.round != round_:
            if round_ < self._next:
                raise StageError(f"round {round_} is over")
            raise NotFound(f"round {round_} is not open")
        if state.stage != stage:
            raise StageError(f"round {round_} is in stage {state.stage.value}, not {stage.value}")
        return state

    def view(self, *, after: int = 0, wait: float = 0.0) -> RoundView:
        """The open round with number >= ``after`` (waiting up to ``wait`` seconds for it to open)."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._stopping
                    or self.finished
                    or (self._round is not None and self._round.config.round >= after)
                ),
                wait,
            )
            state = self._round
            if state is None or state.config.round < after:
                if self.finished:
                    config = self._config(self._next, b"\0" * 32)
                    return RoundView(
                        config, RoundStatus.COMPLETED, Stage.DONE, self.settings.rounds, 0.0, True
                    )
                raise NotFound(f"no round >= {after} is open yet")
            return RoundView(
                state.config,
                RoundStatus.OPEN,
                state.stage,
                self.settings.rounds,
                state.deadline,
                False,
            )

    def advertise(self, silo: str, round_: int, ad: Advertisement) -> None:
        """Stage 1 submission."""
        self._member(silo)
        if ad.silo != silo:
            raise Unauthorized("a silo can only advertise its own keys")
        with self._cond:
            state = self._current(round_, Stage.ADVERTISE_KEYS)
            if silo in state.arrived:
                raise DuplicateSubmission(f"{silo} already advertised keys for round {round_}")
            self._protocol(lambda: state.server.receive_advertisement(ad))
            self._arrive(state, silo)

    def share_keys(self, silo: str, round_: int, message: ShareKeys) -> None:
        """Stage 2 submission."""
        self._member(silo)
        if message.sender != silo:
            raise Unauthorized("a silo can only send its own shares")
        with self._cond:
            state = self._current(round_, Stage.SHARE_KEYS)
            if silo in state.arrived:
                raise DuplicateSubmission(f"{silo} already shared its keys for round {round_}")
            self._protocol(lambda: state.server.receive_shares(message))
            self._arrive(state, silo)

    def upload(
        self, silo: str, round_: int, *, attestation: bytes = b"", signature: bytes = b""
    ) -> Upload:
        """Stage 3: start a streamed submission (a context manager).

        Args:
            silo: the authenticated caller.
            round_: the round.
            attestation: the silo's privacy attestation (JSON of ``PrivacyAttestation.to_dict``), or empty.
            signature: the silo's Ed25519 signature over the attestation's signing payload.

        Raises:
            PrivacyRefused: the attestation under-reports epsilon or exceeds the ceiling (policy "refuse"),
                or is missing where the federation requires one. Recorded in the audit ledger.
            InvalidInput: a malformed attestation, one bound to another round or session, or a bad signature.
        """
        self._member(silo)
        with self._cond:
            state = self._current(round_, Stage.MASKED_INPUT)
            if silo in state.arrived or silo in state.uploads:
                raise DuplicateSubmission(
                    f"{silo} already submitted its masked input for round {round_}"
                )
            if silo not in state.expected:
                raise StageError(f"{silo} is not in U2 of round {round_}")
            self._attest(state, silo, attestation, signature)
            upload = Upload(self, state, silo)
            state.uploads[silo] = upload
        return upload

    def _attest(self, state: _Round, silo: str, payload: bytes, signature: bytes) -> None:
        """Verify, recompute and record a silo's privacy attestation (caller holds the lock)."""
        attest_contribution(
            self.audit,
            privacy=self.settings.privacy,
            roster=self.roster,
            federation=self.settings.federation,
            round_=state.config.round,
            session_id=state.server.session_id,
            silo=silo,
            payload=payload,
            signature=signature,
            attested=state.attested,
        )

    def _add_chunk(
        self, upload: Upload, state: _Round, offset: int, values: npt.NDArray[np.uint32]
    ) -> None:
        with self._cond:
            if (
                upload.cancelled
                or self._round is not state
                or state.stage is not Stage.MASKED_INPUT
            ):
                raise StageError(
                    f"the masked-input stage of round {state.config.round} has closed; "
                    "this upload was discarded"
                )
            if state.deadline < self._clock():
                raise StageError(
                    f"the masked-input deadline of round {state.config.round} has passed"
                )
            position = upload._spool_chunk(values)
            self._protocol(lambda: state.server.add_masked_chunk(upload.silo, offset, values))
            upload._chunks.append((offset, values.shape[0], position))

    def _abandon_upload(self, upload: Upload, state: _Round) -> None:
        with self._cond:
            if self._round is state and state.stage is Stage.MASKED_INPUT:
                upload._rollback()
            if state.uploads.get(upload.silo) is upload:
                del state.uploads[upload.silo]
            self._cond.notify_all()

    def _finish_upload(self, upload: Upload, state: _Round) -> None:
        with self._cond:
            if (
                upload.cancelled
                or self._round is not state
                or state.stage is not Stage.MASKED_INPUT
            ):
                raise StageError(
                    f"the masked-input stage of round {state.config.round} has closed; "
                    "this upload was discarded"
                )
            self._protocol(lambda: state.server.finish_masked_input(upload.silo))
            del state.uploads[upload.silo]
            self._arrive(state, upload.silo)

    def sign_survivors(self, silo: str, round_: int, signature: SurvivorSignature) -> None:
        """Stage 4 submission."""
        self._member(silo)
        if signature.silo != silo:
            raise Unauthorized("a silo can only sign as itself")
        with self._cond:
            state = self._current(round_, Stage.CONSISTENCY_CHECK)
            if silo in state.arrived:
                raise DuplicateSubmission(
                    f"{silo} already signed the survivor set of round {round_}"
                )
            self._protocol(lambda: state.server.receive_survivor_signature(signature))
            self._arrive(state, silo)

    def unmask(self, silo: str, round_: int, response: UnmaskResponse) -> None:
        """Stage 5 submission."""
        self._member(silo)
        if response.silo != silo:
            raise Unauthorized("a silo can only unmask as itself")
        with self._cond:
            state = self._current(round_, Stage.UNMASK)
            if silo in state.arrived:
                raise DuplicateSubmission(
                    f"{silo} already sent its unmask shares for round {round_}"
                )
            self._protocol(lambda: state.server.receive_unmask(response))
            self._arrive(state, silo)

    def _arrive(self, state: _Round, silo: str) -> None:
        state.arrived.add(silo)
        self._cond.notify_all()

    @staticmethod
    def _protocol(call: Callable[[], Any]) -> None:
        try:
            call()
        except RoundAborted:
            raise
        except SecAggError as exc:
            raise InvalidInput(str(exc)) from exc

    # Stage results (long polls) ------------------------------------------------------------------------
    def _wait_past(self, round_: int, stage: Stage, wait: float) -> _Round:
        """Block until ``stage`` of ``round_`` has closed; return the round state."""
        order = {s: i for i, s in enumerate(_STAGE_ORDER)}

        def ready() -> bool:
            state = self._state(round_)
            return (
                self._stopping
                or state is None
                or state.outcome is not None
                or (order.get(state.stage, len(order)) > order[stage])
            )

        with self._cond:
            if not self._cond.wait_for(ready, wait):
                raise TimeoutError(f"stage {stage.value} of round {round_} is still open")
            state = self._state(round_)
            if state is None:
                raise NotFound(f"round {round_} is not known")
            if state.outcome is not None and state.outcome.status is RoundStatus.ABORTED:
                raise RoundAborted(f"round {round_} was aborted: {state.outcome.reason}")
            return state

    def _state(self, round_: int) -> _Round | None:
        if self._round is not None and self._round.config.round == round_:
            return self._round
        return self._finished_rounds.get(round_)

    def advertisements(self, round_: int, wait: float) -> tuple[Advertisement, ...]:
        """Stage 1 result: U1's advertisements."""
        return self._wait_past(round_, Stage.ADVERTISE_KEYS, wait).advertisements

    def inbox(self, silo: str, round_: int, wait: float) -> tuple[EncryptedShare, ...]:
        """Stage 2 result: the shares addressed to ``silo``."""
        self._member(silo)
        state = self._wait_past(round_, Stage.SHARE_KEYS, wait)
        if silo not in state.inbox:
            raise StageError(f"{silo} is not in U2 of round {round_}")
        return state.inbox[silo]

    def survivors(self, round_: int, wait: float) -> tuple[str, ...]:
        """Stage 3 result: U3."""
        return self._wait_past(round_, Stage.MASKED_INPUT, wait).survivors

    def unmask_request(self, round_: int, wait: float) -> UnmaskRequest:
        """Stage 4 result: survivors, dropped and signatures."""
        request = self._wait_past(round_, Stage.CONSISTENCY_CHECK, wait).request
        assert request is not None
        return request
