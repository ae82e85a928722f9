"""The round service: drives the ``secagg`` server role round after round, with deadlines, and applies FedAvg.

One driver thread runs the rounds; gRPC handler threads call the submit/wait methods. A stage closes when
every expected silo has answered or its deadline passes, whichever comes first; whoever has not answered by
then has dropped. All protocol state lives in memory for the duration of one round only.

Notes:
    The coordinator only ever holds the running sum of masked vectors and, after unmasking, the sum of at
    least ``max(threshold, min_cohort)`` silos' quantized updates (DESIGN 2 and 4). Uploads are added into the
    running sum chunk by chunk as they arrive; a broken upload is subtracted back out from a spool file, so a
    partial vector never pollutes the sum and memory does not grow with the number of silos.
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

from coordinator.config import Deadlines
from coordinator.errors import DuplicateSubmission, InvalidInput, NotFound, StageError, Unauthorized
from coordinator.store import FloatVector, RoundStatus, Store
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

__all__ = ["FederationSettings", "RoundOutcome", "RoundService", "RoundView"]

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


class _Round:
    """In-memory state of the open round."""

    def __init__(self, config: RoundConfig, roster: Roster, start: FloatVector) -> None:
        self.config = config
        self.server = SecAggServer(config=config, roster=roster)
        self.start = start
        self.stage = Stage.ADVERTISE_KEYS
        self.deadline = 0.0
        self.expected: frozenset[str] = frozenset(roster.members)
        self.arrived: set[str] = set()
        self.uploading: set[str] = set()
        self.advertisements: tuple[Advertisement, ...] = ()
        self.inbox: Mapping[str, tuple[EncryptedShare, ...]] = {}
        self.survivors: tuple[str, ...] = ()
        self.request: UnmaskRequest | None = None
        self.outcome: RoundOutcome | None = None


class Upload:
    """One silo's streamed masked vector; use as a context manager so a broken stream is rolled back."""

    def __init__(self, service: RoundService, silo: str, round_: int) -> None:
        self._service = service
        self._silo = silo
        self._round = round_
        self._spool = tempfile.TemporaryFile(prefix="secagg-upload-")  # noqa: SIM115 - closed in __exit__
        self._chunks: list[tuple[int, int]] = []  # (offset, length) in spool order
        self._done = False

    def add(self, offset: int, values: npt.NDArray[np.uint32]) -> None:
        """Add one chunk into the running sum (and spool it in case the stream breaks)."""
        self._service._add_chunk(self._silo, self._round, offset, values)
        self._spool.write(values.tobytes())
        self._chunks.append((offset, values.shape[0]))

    def finish(self) -> None:
        """The last chunk has arrived: the silo's submission is complete."""
        self._service._finish_upload(self._silo, self._round)
        self._done = True

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._done:
                position = sum(length for _, length in self._chunks) * 4
                for offset, length in reversed(self._chunks):
                    position -= length * 4
                    self._spool.seek(position)
                    chunk = np.frombuffer(self._spool.read(length * 4), dtype=np.uint32)
                    self._service._discard_chunk(self._silo, self._round, offset, chunk)
                self._service._abandon_upload(self._silo, self._round)
        finally:
            self._spool.close()


class RoundService:
    """Runs a federation's rounds and answers the silos' calls. Thread-safe.

    Args:
        settings: the federation parameters.
        roster: the verified roster.
        store: persistence for rounds and global models.
        initial_model: round-0 model (used only when the store has none).
        clock: wall-clock source, injectable for tests.
    """

    def __init__(
        self,
        *,
        settings: FederationSettings,
        roster: Roster,
        store: Store,
        initial_model: FloatVector,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if initial_model.shape != (settings.vector_length,):
            raise InvalidInput(f"initial model must have {settings.vector_length} parameters")
        self.settings = settings
        self.roster = roster
        self.store = store
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._round: _Round | None = None
        self._finished_rounds: dict[int, _Round] = {}  # the last two, for late long polls
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._quantizer = Quantizer(
            clip=settings.clip, bits=settings.bits, max_silos=len(roster.members)
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
        self._next = len(store.rounds(settings.federation))

    # Lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the driver thread."""
        self._thread = threading.Thread(target=self._drive, name="round-driver", daemon=True)
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

    def _config(self, round_: int, start_hash: bytes) -> RoundConfig:
        s = self.settings
        return RoundConfig(
            federation=s.federation,
            round=round_,
            model_hash=start_hash,
            vector_length=s.vector_length,
            quantizer=self._quantizer,
            n=len(self.roster.members),
            threshold=s.threshold,
            collusion=s.collusion,
            min_cohort=s.min_cohort,
        )

    def _run_round(self, round_: int) -> None:
        fed = self.settings.federation
        start, start_hash = self.store.model(fed, round_)
        state = _Round(self._config(round_, start_hash), self.roster, start)
        self.store.open_round(fed, round_, start_hash)
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
        except (SecAggError, ProtocolError) as exc:
            outcome = RoundOutcome(round_, RoundStatus.ABORTED, reason=str(exc))
            self.store.abort_round(fed, round_, outcome.reason)
            log.warning("round %d aborted: %s", round_, outcome.reason)
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
                # uploads still streaming at the deadline are cut off and rolled back by their handler
                self._cond.wait_for(lambda: not state.uploading, 10.0)
            self._close_stage(state, stage)
            self._cond.notify_all()

    def _close_stage(self, state: _Round, stage: Stage) -> None:
        server = state.server
        if stage is Stage.ADVERTISE_KEYS:
            state.advertisements = server.close_advertise()
            state.expected = frozenset(ad.silo for ad in state.advertisements)
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
            count = len(result.survivors)
            mean = self._quantizer.decode_sum(result.total, count=count) / count
            new_model = (state.start.astype(np.float64) + mean).astype(np.float32)
            digest = self.store.complete_round(
                self.settings.federation,
                state.config.round,
                survivors=result.survivors,
                dropped=result.dropped,
                new_model=new_model,
            )
            state.outcome = RoundOutcome(
                state.config.round, RoundStatus.COMPLETED, result.survivors, result.dropped, digest
            )

    # Silo-facing API -----------------------------------------------------------------------------------
    def _member(self, silo: str) -> None:
        if silo not in self.roster.members:
            raise Unauthorized(f"{silo!r} is not a member of federation {self.settings.federation}")

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

    def model(self, round_: int) -> tuple[FloatVector, bytes]:
        """The global model round ``round_`` starts from."""
        return self.store.model(self.settings.federation, round_)

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

    def upload(self, silo: str, round_: int) -> Upload:
        """Stage 3: start a streamed submission (a context manager)."""
        self._member(silo)
        with self._cond:
            state = self._current(round_, Stage.MASKED_INPUT)
            if silo in state.arrived or silo in state.uploading:
                raise DuplicateSubmission(
                    f"{silo} already submitted its masked input for round {round_}"
                )
            if silo not in state.expected:
                raise StageError(f"{silo} is not in U2 of round {round_}")
            state.uploading.add(silo)
        return Upload(self, silo, round_)

    def _add_chunk(
        self, silo: str, round_: int, offset: int, values: npt.NDArray[np.uint32]
    ) -> None:
        with self._cond:
            state = self._current(round_, Stage.MASKED_INPUT)
            if state.deadline < self._clock():
                raise StageError(f"the masked-input deadline of round {round_} has passed")
            self._protocol(lambda: state.server.add_masked_chunk(silo, offset, values))

    def _discard_chunk(
        self, silo: str, round_: int, offset: int, values: npt.NDArray[np.uint32]
    ) -> None:
        with self._cond:
            state = self._round
            if (
                state is not None
                and state.config.round == round_
                and state.stage is Stage.MASKED_INPUT
            ):
                state.server.discard_masked_chunk(silo, offset, values)

    def _abandon_upload(self, silo: str, round_: int) -> None:
        with self._cond:
            state = self._round
            if state is not None and state.config.round == round_:
                state.uploading.discard(silo)
            self._cond.notify_all()

    def _finish_upload(self, silo: str, round_: int) -> None:
        with self._cond:
            state = self._current(round_, Stage.MASKED_INPUT)
            self._protocol(lambda: state.server.finish_masked_input(silo))
            state.uploading.discard(silo)
            self._arrive(state, silo)

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

    def result(self, round_: int, wait: float) -> RoundOutcome:
        """The outcome of a round (from memory, or from the store for earlier rounds)."""
        if round_ >= self.settings.rounds:
            raise NotFound(f"round {round_} is beyond the {self.settings.rounds} planned rounds")
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or round_ < self._next, wait)
            state = self._state(round_)
            if state is not None and state.outcome is not None:
                return state.outcome
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
