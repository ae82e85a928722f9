"""Paillier mode over gRPC: the round service, its thin servicer, the wire conversions and server construction.

:class:`PaillierRoundService` has the shape of :class:`~coordinator.rounds.RoundService`: one driver thread runs
the rounds with deadlines, gRPC handler threads call the submit/wait methods, the store keeps rounds and global
models, FedAvg applies ``new = old + mean(decoded sum)``, and every privacy-relevant fact goes to the audit
ledger with a signed checkpoint after every round. A round has two stages:

- ``collect`` (deadline ``advertise + masked_input``, the masking mode's train-and-upload window): each silo
  streams its packed ciphertexts after a signed Merkle commitment; the :class:`~secagg.paillier.PaillierAggregator`
  multiplies every chunk into the running aggregate as it arrives and spools it to a SQLite file for spot checks.
  The stage closes early once every roster member has contributed.
- ``decrypt`` (deadline ``consistency + unmask``): key holders fetch the aggregate with the signed commitments,
  challenge the coordinator at positions they draw themselves, and return partial decryptions (or refuse). The
  coordinator combines as soon as ``t`` valid ones are in, decodes the exact integer sum and applies FedAvg.

Notes:
    - The coordinator holds only the joint public key (DESIGN 5): it can multiply ciphertexts, never decrypt
      one. It asks key holders to decrypt the aggregate only; a silo checks that the aggregate is the product of
      at least ``min_cohort`` roster-signed contributions at positions it picks after the request is fixed, and
      keeps a persistent one-request-per-round history, so the coordinator cannot use it as a decryption oracle
      for one silo's ciphertext (:mod:`secagg.paillier` Notes).
    - The round's session id is ``SHA-256(label, 16 random bytes, SHA-256(global model))``
      (:func:`session_id_for`). It is bound into the round context every commitment is signed over, and each
      silo recomputes it from the nonce and the hash of the model it downloaded, so a coordinator that serves
      different models to different silos produces
      commitments no decrypter accepts (the role the signed model hash plays in masking mode's advertisements).
    - Ciphertext chunks are spooled to a per-round SQLite file (deleted when the round ends) rather than kept in
      RAM: memory grows with the vector, not with the number of silos (DESIGN 8). The spooled ciphertexts are
      encrypted under the threshold key, so the spool reveals nothing to anyone holding fewer than ``t`` shares.
    - A contribution whose stream breaks stays "in flight" and is divided back out of the aggregate when the
      collect stage closes (the aggregator's rollback); the silo cannot restart it in the same round, because the
      protocol refuses a second commitment from a silo.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from audits import EventKind
from coordinator.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FloatVector,
    RoundStatus,
    chunk_words,
)
from coordinator.errors import (
    DuplicateSubmission,
    InvalidInput,
    NotFound,
    StageError,
    Unauthorized,
)
from coordinator.rounds.audit import AuditTrail, attest_contribution
from coordinator.rounds.driver import FederationSettings, RoundDriver, RoundOutcome
from coordinator.store import Store
from secagg import Quantizer, Roster
from secagg.errors import ProtocolError, RoundAborted, SecAggError
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier import ThresholdPublicKey
from secagg.paillier import (
    DEFAULT_SPOT_CHECKS,
    SESSION_NONCE_BYTES,
    CiphertextChunk,
    DecryptionRequest,
    PaillierAggregator,
    PaillierRoundConfig,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckResponse,
    session_id_for,
)

log = logging.getLogger(__name__)

_REASON_CHARS = (
    300  # a silo's refusal reason is recorded, truncated (it names a check, never a payload)
)


class PaillierStage(enum.StrEnum):
    """Stages of a Paillier-mode round as the service runs it."""

    COLLECT = "collect"
    DECRYPT = "decrypt"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class PaillierRoundView:
    """What a silo learns about the round in progress."""

    config: PaillierRoundConfig
    model_hash: bytes
    session_nonce: bytes
    status: RoundStatus
    stage: PaillierStage
    rounds: int
    stage_deadline: float
    finished: bool


# ----------------------------------------------------------------------------------------------------------------
# Privacy attestations (shared with masking mode)


class SQLiteContributionStore:
    """A :class:`~secagg.paillier.ContributionStore` in a throwaway SQLite file (one per round). Thread-safe.

    Args:
        directory: where to create the file (a fresh temporary directory by default).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="secagg-paillier-", dir=directory))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self._dir / "contributions.sqlite"), check_same_thread=False, isolation_level=None
        )
        # a spool, not a record: losing it in a crash only aborts the open round, which a restart does anyway
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE chunks (silo TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, "
            "PRIMARY KEY (silo, idx))"
        )

    def append(self, silo_id: str, chunk_index: int, data: bytes) -> None:
        """Store chunk ``chunk_index`` of ``silo_id`` (chunks arrive in order)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM chunks WHERE silo = ?", (silo_id,)
            ).fetchone()
            if chunk_index != count:
                raise ProtocolError("chunks must be stored in order")
            self._db.execute("INSERT INTO chunks VALUES (?, ?, ?)", (silo_id, chunk_index, data))

    def chunks(self, silo_id: str) -> Iterator[bytes]:
        """The stored chunks of ``silo_id`` in order (read one at a time)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM chunks WHERE silo = ?", (silo_id,)
            ).fetchone()
        for index in range(int(count)):
            with self._lock:
                row = self._db.execute(
                    "SELECT data FROM chunks WHERE silo = ? AND idx = ?", (silo_id, index)
                ).fetchone()
            if row is None:
                return
            yield bytes(row[0])

    def discard(self, silo_id: str) -> None:
        """Forget everything stored for ``silo_id``."""
        with self._lock:
            self._db.execute("DELETE FROM chunks WHERE silo = ?", (silo_id,))

    def close(self) -> None:
        """Close and delete the spool."""
        with self._lock:
            self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Round state


class _PaillierRound:
    """In-memory state of the open round (the aggregate itself lives in the aggregator)."""

    def __init__(
        self,
        config: PaillierRoundConfig,
        aggregator: PaillierAggregator,
        spool: SQLiteContributionStore,
        start: FloatVector,
        model_hash: bytes,
        nonce: bytes,
    ) -> None:
        self.config = config
        self.nonce = nonce
        self.aggregator = aggregator
        self.spool = spool
        self.start = start
        self.model_hash = model_hash
        self.stage = PaillierStage.COLLECT
        self.deadline = 0.0
        self.uploading: set[str] = set()
        self.finished_uploads: set[str] = set()  # completed or failed: either way the silo is done
        self.attested: dict[str, tuple[bytes, bytes]] = {}
        self.request: DecryptionRequest | None = None
        self.partials: dict[str, PartialDecryptionMessage] = {}
        self.refusals: dict[str, str] = {}
        self.outcome: RoundOutcome | None = None


class ContributionUpload:
    """One silo's streamed contribution; use as a context manager.

    Every chunk is multiplied into the aggregate (and spooled) under the service lock as it arrives. If the
    stream ends without its last chunk, the contribution stays incomplete and the aggregator divides it back
    out when the collect stage closes.
    """

    def __init__(self, service: PaillierRoundService, state: _PaillierRound, silo: str) -> None:
        self._service = service
        self._state = state
        self.silo = silo
        self._done = False

    def add(self, chunk_index: int, data: bytes) -> None:
        """Multiply one chunk into the aggregate."""
        self._service._add_chunk(self._state, CiphertextChunk(self.silo, chunk_index, data))

    def finish(self) -> None:
        """The last chunk has arrived: the contribution must now be complete and verified."""
        self._service._finish_upload(self._state, self.silo)
        self._done = True

    def __enter__(self) -> ContributionUpload:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self._service._abandon_upload(self._state, self.silo)


class PaillierRoundService(RoundDriver):
    """Runs a Paillier-mode federation's rounds and answers the silos' calls. Thread-safe.

    The driver lifecycle and the audit record of outcomes come from :class:`~coordinator.rounds.RoundDriver`.

    Args:
        settings: the federation parameters; ``threshold`` must equal the joint key's ``t``.
        roster: the verified roster; its members are exactly the key's share holders (indices in roster order).
        store: persistence for rounds and global models.
        initial_model: round-0 model (used only when the store has none).
        audit: the federation's audit trail.
        public_key: the joint threshold Paillier public key (the coordinator holds nothing else).
        max_message_bytes: the gRPC message limit; upload chunks are sized below it.
        spot_checks: positions each decrypter checks (silos insist on their own minimum).
        spool_dir: where per-round ciphertext spools are created (system temp by default).
        clock: wall-clock source, injectable for tests.
        rng: randomness for session ids.
    """

    _THREAD_NAME = "paillier-driver"

    def __init__(
        self,
        *,
        settings: FederationSettings,
        roster: Roster,
        store: Store,
        initial_model: FloatVector,
        audit: AuditTrail,
        public_key: ThresholdPublicKey,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        spot_checks: int = DEFAULT_SPOT_CHECKS,
        spool_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: RandomSource = os.urandom,
    ) -> None:
        if initial_model.shape != (settings.vector_length,):
            raise InvalidInput(f"initial model must have {settings.vector_length} parameters")
        if public_key.parties != len(roster.members):
            raise InvalidInput(
                f"the Paillier key was dealt to {public_key.parties} parties, the roster has "
                f"{len(roster.members)}"
            )
        if settings.threshold != public_key.threshold:
            raise InvalidInput(
                f"settings threshold {settings.threshold} differs from the key's t={public_key.threshold}"
            )
        self.settings = settings
        self.roster = roster
        self.store = store
        self.audit = audit
        self.public_key = public_key
        self._clock = clock
        self._rng = rng
        self._spot_checks = spot_checks
        self._spool_dir = spool_dir
        self.chunk_ciphertexts = max(
            1, (chunk_words(max_message_bytes) * 4) // public_key.ciphertext_bytes
        )
        self._quantizer = Quantizer(
            clip=settings.clip, bits=settings.bits, max_silos=len(roster.members)
        )
        self._cond = threading.Condition(threading.RLock())
        self._round: _PaillierRound | None = None
        self._finished_rounds: dict[int, _PaillierRound] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._key_fingerprint = public_key.fingerprint()
        store.init_federation(
            settings.federation, settings=self._settings_json(), initial_model=initial_model
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

    def _settings_json(self) -> str:
        """Stored with the federation: a restart with another key or mode is refused by the store."""
        body = dataclasses.asdict(self.settings) | {
            "mode": "paillier",
            "paillier_key_fingerprint": self._key_fingerprint.hex(),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

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
        self.audit.created(
            config=json.loads(self._settings_json()),
            roster=self.roster,
            threat_model={
                "n": len(self.roster.members),
                "t": self.public_key.threshold,
                "c": s.collusion,
                "min_cohort": s.min_cohort,
                "mode": "paillier",
                "key_bits": self.public_key.key_bits,
                "key_fingerprint": self._key_fingerprint.hex(),
                "key_ceremony": "trusted dealer (Shoup / Damgard-Jurik threshold Paillier, safe primes)",
                "spot_checks": self._spot_checks,
            },
            privacy=privacy,
        )

    def _config(self, round_: int, session_id: bytes) -> PaillierRoundConfig:
        s = self.settings
        return PaillierRoundConfig(
            federation_id=s.federation,
            round_number=round_,
            session_id=session_id,
            vector_length=s.vector_length,
            value_bits=s.bits,
            max_contributors=len(self.roster.members),
            min_cohort=s.min_cohort,
            spot_checks=self._spot_checks,
            chunk_ciphertexts=self.chunk_ciphertexts,
        )

    def _run_round(self, round_: int) -> None:
        fed = self.settings.federation
        start, start_hash = self.store.model(fed, round_)
        nonce = self._rng(SESSION_NONCE_BYTES)
        config = self._config(round_, session_id_for(nonce, start_hash))
        spool = SQLiteContributionStore(self._spool_dir)
        aggregator = PaillierAggregator(
            public_key=self.public_key, config=config, roster=self.roster.members, store=spool
        )
        state = _PaillierRound(config, aggregator, spool, start, start_hash, nonce)
        self.store.open_round(fed, round_, start_hash)
        s = self.settings
        self.audit.record(
            EventKind.ROUND_OPENED,
            round_,
            {
                "model_hash": start_hash.hex(),
                "mode": "paillier",
                "session_id": config.session_id.hex(),
                "n": len(self.roster.members),
                "threshold": self.public_key.threshold,
                "collusion": s.collusion,
                "min_cohort": s.min_cohort,
                "vector_length": s.vector_length,
                "clip": s.clip,
                "bits": s.bits,
                "key_fingerprint": self._key_fingerprint.hex(),
                "spot_checks": config.spot_checks,
                "ciphertexts_per_silo": config.ciphertext_count(self.public_key),
            },
        )
        deadlines = s.deadlines
        outcome: RoundOutcome | None = None
        try:
            with self._cond:
                self._round = state
                state.deadline = self._clock() + deadlines.advertise + deadlines.masked_input
                self._cond.notify_all()
            self._collect(state)
            if self._stopping:
                return
            self._decrypt(state, deadlines.consistency + deadlines.unmask)
            if self._stopping:
                return
            outcome = state.outcome
            assert outcome is not None
            self._record_outcome(
                outcome,
                stage=None,
                restart=False,
                extra_participants={"decrypters": sorted(state.partials)},
            )
        except (SecAggError, InvalidInput) as exc:
            outcome = RoundOutcome(round_, RoundStatus.ABORTED, reason=str(exc))
            self.store.abort_round(fed, round_, outcome.reason)
            log.warning("round %d aborted: %s", round_, outcome.reason)
            self._record_outcome(outcome, stage=state.stage.value, restart=False)
        finally:
            spool.close()
            with self._cond:
                state.outcome = outcome
                state.stage = (
                    PaillierStage.DONE
                    if outcome is not None and outcome.status is RoundStatus.COMPLETED
                    else PaillierStage.ABORTED
                )
                self._round = None
                self._next = round_ + 1
                self._finished_rounds = {
                    r: st for r, st in self._finished_rounds.items() if r >= round_ - 1
                }
                self._finished_rounds[round_] = state
                self._cond.notify_all()

    def _collect(self, state: _PaillierRound) -> None:
        """Wait until every roster member has contributed or the deadline passes; fix the request."""
        members = frozenset(self.roster.members)
        with self._cond:
            while not self._stopping:
                remaining = state.deadline - self._clock()
                if (members <= state.finished_uploads and not state.uploading) or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            if self._stopping:
                return
            # incomplete contributions are divided back out here; RoundAborted below min_cohort
            state.request = state.aggregator.decryption_request()
            state.stage = PaillierStage.DECRYPT
            self._cond.notify_all()

    def _decrypt(self, state: _PaillierRound, limit: float) -> None:
        """Combine as soon as ``t`` valid partial decryptions are in; abort at the deadline or when all answered."""
        members = frozenset(self.roster.members)
        t = self.public_key.threshold
        tried = 0
        with self._cond:
            state.deadline = self._clock() + limit
            self._cond.notify_all()
        while True:
            with self._cond:
                while not self._stopping:
                    answered = set(state.partials) | set(state.refusals)
                    remaining = state.deadline - self._clock()
                    if len(state.partials) >= t and len(state.partials) > tried:
                        break
                    if members <= answered or remaining <= 0:
                        break
                    self._cond.wait(min(remaining, 0.5))
                if self._stopping:
                    return
                partials = list(state.partials.values())
                refusals = dict(state.refusals)
                out_of_time = state.deadline <= self._clock() or members <= (
                    set(state.partials) | set(state.refusals)
                )
            if len(partials) >= t and len(partials) > tried:
                tried = len(partials)
                try:
                    # outside the lock: proof checks and combination cost exponentiations over the vector
                    total = state.aggregator.finish(partials)
                except RoundAborted as exc:
                    self.audit.record(
                        EventKind.VERIFICATION_FAILURE,
                        state.config.round_number,
                        {"what": "partial_decryption", "reason": str(exc)},
                    )
                    if not out_of_time:
                        continue
                    raise
                self._complete(state, total)
                return
            if out_of_time:
                detail = f"; refused by {sorted(refusals)}" if refusals else ""
                raise RoundAborted(f"{len(partials)} partial decryptions, {t} needed{detail}")

    def _complete(self, state: _PaillierRound, total: np.ndarray[Any, Any]) -> None:
        assert state.request is not None
        contributors = tuple(c.silo_id for c in state.request.contributions)
        count = len(contributors)
        ring = np.asarray(total, dtype=np.int64).astype(
            np.uint32
        )  # two's complement, as masking mode
        mean = self._quantizer.decode_sum(ring, count=count) / count
        new_model = (state.start.astype(np.float64) + mean).astype(np.float32)
        dropped = tuple(m for m in self.roster.members if m not in contributors)
        digest = self.store.complete_round(
            self.settings.federation,
            state.config.round_number,
            survivors=contributors,
            dropped=dropped,
            new_model=new_model,
        )
        state.outcome = RoundOutcome(
            state.config.round_number, RoundStatus.COMPLETED, contributors, dropped, digest
        )

    # Silo-facing API -----------------------------------------------------------------------------------
    def _current(self, round_: int, stage: PaillierStage) -> _PaillierRound:
        state = self._round
        if state is None or state.config.round_number != round_:
            if round_ < self._next:
                raise StageError(f"round {round_} is over")
            raise NotFound(f"round {round_} is not open")
        if state.stage is not stage:
            raise StageError(f"round {round_} is in stage {state.stage.value}, not {stage.value}")
        return state

    def _state(self, round_: int) -> _PaillierRound | None:
        if self._round is not None and self._round.config.round_number == round_:
            return self._round
        return self._finished_rounds.get(round_)

    def view(self, *, after: int = 0, wait: float = 0.0) -> PaillierRoundView:
        """The open round with number >= ``after`` (waiting up to ``wait`` seconds for it to open)."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._stopping
                    or self.finished
                    or (self._round is not None and self._round.config.round_number >= after)
                ),
                wait,
            )
            state = self._round
            if state is None or state.config.round_number < after:
                if self.finished:
                    config = self._config(self._next, b"\0" * 32)
                    return PaillierRoundView(
                        config,
                        b"\0" * 32,
                        b"",
                        RoundStatus.COMPLETED,
                        PaillierStage.DONE,
                        self.settings.rounds,
                        0.0,
                        True,
                    )
                raise NotFound(f"no round >= {after} is open yet")
            return PaillierRoundView(
                state.config,
                state.model_hash,
                state.nonce,
                RoundStatus.OPEN,
                state.stage,
                self.settings.rounds,
                state.deadline,
                False,
            )

    def contribution(
        self,
        silo: str,
        round_: int,
        commitment: SignedCommitment,
        *,
        attestation: bytes = b"",
        signature: bytes = b"",
    ) -> ContributionUpload:
        """Stage collect: start a streamed contribution (a context manager).

        Raises:
            Unauthorized: the commitment names another silo.
            DuplicateSubmission: the silo already contributed (or is uploading) this round.
            StageError: an earlier upload of this silo broke off; it cannot be restarted this round.
            PrivacyRefused, InvalidInput: see :func:`attest_contribution`; a forged or mis-bound commitment.
        """
        self._member(silo)
        if commitment.silo_id != silo:
            raise Unauthorized("a silo can only commit to its own contribution")
        with self._cond:
            state = self._current(round_, PaillierStage.COLLECT)
            if silo in state.uploading or silo in state.aggregator.contributors:
                raise DuplicateSubmission(f"{silo} already contributed to round {round_}")
            if silo in state.finished_uploads:
                raise StageError(
                    f"{silo}'s upload for round {round_} broke off; it cannot be restarted"
                )
            if state.deadline < self._clock():
                raise StageError(f"the collect deadline of round {round_} has passed")
            attest_contribution(
                self.audit,
                privacy=self.settings.privacy,
                roster=self.roster,
                federation=self.settings.federation,
                round_=round_,
                session_id=state.config.session_id,
                silo=silo,
                payload=attestation,
                signature=signature,
                attested=state.attested,
            )
            self._protocol(lambda: state.aggregator.accept_commitment(commitment))
            state.uploading.add(silo)
        return ContributionUpload(self, state, silo)

    def _add_chunk(self, state: _PaillierRound, chunk: CiphertextChunk) -> None:
        with self._cond:
            if self._round is not state or state.stage is not PaillierStage.COLLECT:
                raise StageError(
                    f"the collect stage of round {state.config.round_number} has closed; "
                    "this upload was discarded"
                )
            if state.deadline < self._clock():
                raise StageError(
                    f"the collect deadline of round {state.config.round_number} has passed"
                )
            self._protocol(lambda: state.aggregator.accept_chunk(chunk))

    def _finish_upload(self, state: _PaillierRound, silo: str) -> None:
        with self._cond:
            if silo not in state.aggregator.contributors:
                raise InvalidInput("the upload ended before its last ciphertext")
            state.uploading.discard(silo)
            state.finished_uploads.add(silo)
            self._cond.notify_all()

    def _abandon_upload(self, state: _PaillierRound, silo: str) -> None:
        with self._cond:
            state.uploading.discard(silo)
            state.finished_uploads.add(silo)
            self._cond.notify_all()

    @staticmethod
    def _protocol(call: Callable[[], Any]) -> None:
        try:
            call()
        except RoundAborted:
            raise
        except SecAggError as exc:
            raise InvalidInput(str(exc)) from exc

    def _wait_decrypt(self, round_: int, wait: float) -> _PaillierRound:
        """Block until the collect stage of ``round_`` has closed; return the round state."""

        def ready() -> bool:
            state = self._state(round_)
            return (
                self._stopping
                or state is None
                or state.outcome is not None
                or state.stage is not PaillierStage.COLLECT
            )

        with self._cond:
            if not self._cond.wait_for(ready, wait):
                raise TimeoutError(f"the collect stage of round {round_} is still open")
            state = self._state(round_)
            if state is None:
                raise NotFound(f"round {round_} is not known")
            if state.stage is PaillierStage.ABORTED or (
                state.outcome is not None and state.outcome.status is RoundStatus.ABORTED
            ):
                reason = state.outcome.reason if state.outcome is not None else "aborted"
                raise RoundAborted(f"round {round_} was aborted: {reason}")
            if state.request is None:
                raise StageError(f"round {round_} has no decryption request")
            return state

    def decryption_request(self, silo: str, round_: int, wait: float) -> DecryptionRequest:
        """Stage decrypt: the request every key holder is asked to check and partially decrypt."""
        self._member(silo)
        state = self._wait_decrypt(round_, wait)
        assert state.request is not None
        return state.request

    def open_spot_checks(
        self, silo: str, round_: int, challenge: SpotCheckChallenge
    ) -> SpotCheckResponse:
        """Stage decrypt: open every contribution at the caller's positions."""
        self._member(silo)
        with self._cond:
            state = self._current(round_, PaillierStage.DECRYPT)
            positions = challenge.positions
            if len(positions) > max(state.config.spot_checks, DEFAULT_SPOT_CHECKS) * 4:
                raise InvalidInput("too many spot-check positions")
            try:
                return state.aggregator.open_spot_checks(challenge)
            except SecAggError as exc:
                raise InvalidInput(str(exc)) from exc

    def partial_decryption(self, silo: str, round_: int, message: PartialDecryptionMessage) -> None:
        """Stage decrypt: a key holder's partial decryption (its proof is checked when combined)."""
        self._member(silo)
        if message.silo_id != silo:
            raise Unauthorized("a silo can only decrypt as itself")
        with self._cond:
            state = self._current(round_, PaillierStage.DECRYPT)
            assert state.request is not None
            if silo in state.partials or silo in state.refusals:
                raise DuplicateSubmission(f"{silo} already answered the decryption request")
            if message.request_digest != state.request.digest():
                raise InvalidInput("the partial decryption is for another request")
            if message.partial.index != self.roster.index(silo):
                raise InvalidInput("the partial decryption names another share index")
            if len(message.partial.values) != state.config.ciphertext_count(self.public_key):
                raise InvalidInput("the partial decryption has the wrong length")
            state.partials[silo] = message
            self._cond.notify_all()

    def refuse(self, silo: str, round_: int, request_digest: bytes, reason: str) -> None:
        """Stage decrypt: a key holder refuses the request; recorded as a verification failure."""
        self._member(silo)
        with self._cond:
            state = self._current(round_, PaillierStage.DECRYPT)
            if silo in state.partials or silo in state.refusals:
                raise DuplicateSubmission(f"{silo} already answered the decryption request")
            text = reason[:_REASON_CHARS] or "refused"
            state.refusals[silo] = text
            self.audit.record(
                EventKind.VERIFICATION_FAILURE,
                round_,
                {
                    "what": "decryption_request",
                    "reason": text,
                    "silo": silo,
                    "request_digest": request_digest.hex(),
                },
            )
            self._cond.notify_all()
