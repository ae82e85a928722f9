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
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from audits import CheckpointSigner, EventKind
from coordinator._malloc import tune_allocator
from coordinator.audit import AuditTrail, attest_contribution, ledger_origin
from coordinator.config import DEFAULT_MAX_MESSAGE_BYTES, ServeConfig, chunk_words
from coordinator.errors import (
    DuplicateSubmission,
    InvalidInput,
    NotFound,
    StageError,
    Unauthorized,
)
from coordinator.pki import load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.proto.v1 import paillier_pb2 as ppb
from coordinator.proto.v1 import paillier_pb2_grpc as ppb_grpc
from coordinator.rounds import FederationSettings, RoundDriver, RoundOutcome, RoundService
from coordinator.service import (
    MAX_WAIT_SECONDS,
    AuditServicer,
    TlsFiles,
    _DecodeGuard,
    _Servicer,
    drain_upload,
    model_chunks,
    server_options,
)
from coordinator.store import FloatVector, RoundStatus, SQLiteStore, Store
from secagg import Quantizer, Roster
from secagg.errors import ProtocolError, RoundAborted, SecAggError
from secagg.hazmat.keys import RandomSource, encode_fields
from secagg.hazmat.paillier import PartialDecryption, ThresholdPublicKey
from secagg.paillier import (
    DEFAULT_SPOT_CHECKS,
    CiphertextChunk,
    DecryptionRequest,
    PaillierAggregator,
    PaillierRoundConfig,
    PartialDecryptionMessage,
    SignedCommitment,
    SpotCheckChallenge,
    SpotCheckOpening,
    SpotCheckResponse,
)

__all__ = [
    "PaillierCoordinator",
    "PaillierRoundService",
    "PaillierRoundView",
    "PaillierServicer",
    "PaillierStage",
    "create_paillier_server",
    "session_id_for",
    "start_paillier_coordinator",
]

log = logging.getLogger(__name__)

SESSION_NONCE_BYTES = 16
"""Random bytes that, with the round's starting model hash, determine the session id (:func:`session_id_for`)."""


def session_id_for(nonce: bytes, model_hash: bytes) -> bytes:
    """The round's 32-byte session id: SHA-256 over a label, the coordinator's nonce and the model hash.

    Notes:
        Binding the model hash into the session id (which every commitment signature and proof covers) is what
        lets each silo check that all contributors were served the same model: a silo recomputes the id from
        the nonce and the hash of the model it downloaded, and decrypters accept only commitments bound to
        their own context.
    """
    return hashlib.sha256(encode_fields("secagg/paillier/session/v1", nonce, model_hash)).digest()


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


# ----------------------------------------------------------------------------------------------------------------
# Wire conversions (only the servicer and the silo SDK touch protobuf classes)


def int_to_bytes(value: int) -> bytes:
    """Minimal big-endian encoding of a non-negative integer."""
    return int(value).to_bytes(max(1, (int(value).bit_length() + 7) // 8), "big")


def commitment_to_pb(c: SignedCommitment) -> ppb.SignedCommitment:
    """Dataclass -> wire."""
    return ppb.SignedCommitment(
        silo=c.silo_id,
        context=c.context,
        vector_length=c.vector_length,
        ciphertext_count=c.ciphertext_count,
        merkle_root=c.merkle_root,
        signature=c.signature,
    )


def commitment_from_pb(m: ppb.SignedCommitment) -> SignedCommitment:
    """Wire -> dataclass."""
    return SignedCommitment(
        silo_id=m.silo,
        context=bytes(m.context),
        vector_length=int(m.vector_length),
        ciphertext_count=int(m.ciphertext_count),
        merkle_root=bytes(m.merkle_root),
        signature=bytes(m.signature),
    )


def request_to_pb(
    request: DecryptionRequest, *, width: int, per_part: int
) -> Iterator[ppb.DecryptionRequestPart]:
    """Split a decryption request into parts of at most ``per_part`` ciphertexts."""
    total = len(request.aggregate) // width
    step = per_part * width
    for offset in range(0, max(len(request.aggregate), 1), step):
        part = ppb.DecryptionRequestPart(
            offset=offset // width,
            aggregate=request.aggregate[offset : offset + step],
            last=offset + step >= len(request.aggregate),
        )
        if offset == 0:
            part.context = request.context
            part.ciphertext_count = total
            part.contributions.extend(commitment_to_pb(c) for c in request.contributions)
        yield part


def request_from_pb(parts: Iterable[ppb.DecryptionRequestPart], *, width: int) -> DecryptionRequest:
    """Reassemble a streamed decryption request.

    Raises:
        InvalidInput: missing, repeated or out-of-order parts.
    """
    context = b""
    contributions: tuple[SignedCommitment, ...] = ()
    total = -1
    data: list[bytes] = []
    received = 0
    for i, part in enumerate(parts):
        if i == 0:
            context = bytes(part.context)
            contributions = tuple(commitment_from_pb(c) for c in part.contributions)
            total = int(part.ciphertext_count)
        if int(part.offset) != received:
            raise InvalidInput("decryption request parts out of order")
        data.append(bytes(part.aggregate))
        received += len(part.aggregate) // width
        if part.last:
            break
    else:
        raise InvalidInput("decryption request ended without its last part")
    aggregate = b"".join(data)
    if total < 0 or len(aggregate) != total * width:
        raise InvalidInput("decryption request has the wrong length")
    return DecryptionRequest(context=context, aggregate=aggregate, contributions=contributions)


def openings_to_pb(response: SpotCheckResponse, *, budget: int) -> Iterator[ppb.SpotCheckOpenings]:
    """Split spot-check openings into messages of at most about ``budget`` bytes."""
    batch: list[ppb.SpotCheckOpening] = []
    size = 0
    for o in response.openings:
        message = ppb.SpotCheckOpening(
            silo=o.silo_id, position=o.position, ciphertext=o.ciphertext, proof=list(o.proof)
        )
        cost = message.ByteSize() + 16
        if batch and size + cost > budget:
            yield ppb.SpotCheckOpenings(request_digest=response.request_digest, openings=batch)
            batch, size = [], 0
        batch.append(message)
        size += cost
    yield ppb.SpotCheckOpenings(request_digest=response.request_digest, openings=batch, last=True)


def openings_from_pb(parts: Iterable[ppb.SpotCheckOpenings]) -> SpotCheckResponse:
    """Reassemble streamed openings.

    Raises:
        InvalidInput: the stream ended without its last part or mixes requests.
    """
    digest: bytes | None = None
    openings: list[SpotCheckOpening] = []
    for part in parts:
        if digest is None:
            digest = bytes(part.request_digest)
        elif bytes(part.request_digest) != digest:
            raise InvalidInput("spot-check openings for two requests")
        openings.extend(
            SpotCheckOpening(
                silo_id=o.silo,
                position=int(o.position),
                ciphertext=bytes(o.ciphertext),
                proof=tuple(bytes(h) for h in o.proof),
            )
            for o in part.openings
        )
        if part.last:
            return SpotCheckResponse(request_digest=digest, openings=tuple(openings))
    raise InvalidInput("spot-check openings ended without their last part")


def partial_to_pb(
    message: PartialDecryptionMessage,
    *,
    federation: str,
    round_: int,
    width: int,
    per_part: int,
) -> Iterator[ppb.PartialDecryptionPart]:
    """Split a partial decryption into parts of at most ``per_part`` values."""
    values = message.partial.values
    for start in range(0, max(len(values), 1), per_part):
        chunk = values[start : start + per_part]
        part = ppb.PartialDecryptionPart(
            federation=federation,
            round=round_,
            silo=message.silo_id,
            offset=start,
            values=b"".join(int(v).to_bytes(width, "big") for v in chunk),
            last=start + per_part >= len(values),
        )
        if start == 0:
            part.request_digest = message.request_digest
            part.index = message.partial.index
            part.challenge = int_to_bytes(message.partial.challenge)
            part.response = int_to_bytes(message.partial.response)
        yield part


def partial_from_pb(
    first: ppb.PartialDecryptionPart,
    rest: Iterator[ppb.PartialDecryptionPart],
    *,
    width: int,
    limit: int,
) -> PartialDecryptionMessage:
    """Reassemble a streamed partial decryption (``first`` already read), at most ``limit`` values.

    Raises:
        InvalidInput: parts out of order, for another silo or round, too long, or no last part.
    """
    values: list[int] = []
    part: ppb.PartialDecryptionPart | None = first
    while part is not None:
        if (part.silo, part.round, part.federation) != (first.silo, first.round, first.federation):
            raise InvalidInput("every part must name the same silo, round and federation")
        if int(part.offset) != len(values) or len(part.values) % width:
            raise InvalidInput("partial decryption parts out of order or malformed")
        data = bytes(part.values)
        values.extend(
            int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)
        )
        if len(values) > limit:
            raise InvalidInput("the partial decryption is too long")
        if part.last:
            if next(rest, None) is not None:
                raise InvalidInput("parts after the last one")
            break
        part = next(rest, None)
    else:
        raise InvalidInput("partial decryption ended without its last part")
    return PartialDecryptionMessage(
        silo_id=first.silo,
        request_digest=bytes(first.request_digest),
        partial=PartialDecryption(
            index=int(first.index),
            values=tuple(values),
            challenge=int.from_bytes(first.challenge, "big"),
            response=int.from_bytes(first.response, "big"),
        ),
    )


_STAGE_STATE = {
    RoundStatus.COMPLETED: pb.ROUND_STATE_COMPLETED,
    RoundStatus.ABORTED: pb.ROUND_STATE_ABORTED,
}


# ----------------------------------------------------------------------------------------------------------------
# Servicer


class PaillierServicer(_Servicer, ppb_grpc.PaillierFederationServicer):
    """Thin adapter from gRPC calls to :class:`PaillierRoundService` (identity and errors from ``_Servicer``)."""

    def __init__(
        self,
        service: PaillierRoundService,
        *,
        revoked: frozenset[str] = frozenset(),
        insecure: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        # _Servicer reads only ``settings.federation`` and ``roster`` from the service it is given
        super().__init__(
            cast(RoundService, service),
            revoked=revoked,
            insecure=insecure,
            max_message_bytes=max_message_bytes,
        )
        self._service = service

    @staticmethod
    def _wait(seconds: float) -> float:
        return max(0.0, min(seconds, MAX_WAIT_SECONDS))

    @property
    def _width(self) -> int:
        return self._service.public_key.ciphertext_bytes

    def Join(
        self, request: pb.JoinRequest, context: grpc.ServicerContext
    ) -> ppb.PaillierJoinResponse:
        def run() -> ppb.PaillierJoinResponse:
            self._caller(context, request.silo)
            self._federation(request.federation)
            s = self._service
            return ppb.PaillierJoinResponse(
                federation=request.federation,
                roster_fingerprint=s.roster.fingerprint(),
                rounds=s.settings.rounds,
                current_round=len(s.store.rounds(request.federation)),
                max_message_bytes=self._max_message_bytes,
                key_fingerprint=s.public_key.fingerprint(),
                threshold=s.public_key.threshold,
            )

        return self._call(context, run)

    def GetRound(
        self, request: pb.GetRoundRequest, context: grpc.ServicerContext
    ) -> ppb.PaillierRoundInfo:
        def run() -> ppb.PaillierRoundInfo:
            self._caller(context)
            self._federation(request.federation)
            view = self._service.view(after=request.after, wait=self._wait(request.wait_seconds))
            s, c = self._service.settings, view.config
            return ppb.PaillierRoundInfo(
                federation=c.federation_id,
                round=c.round_number,
                state=pb.ROUND_STATE_FINISHED if view.finished else pb.ROUND_STATE_OPEN,
                stage=view.stage.value,
                model_hash=view.model_hash,
                vector_length=c.vector_length,
                quantization=pb.Quantization(
                    clip=s.clip, bits=c.value_bits, max_silos=c.max_contributors
                ),
                n=len(self._service.roster.members),
                threshold=self._service.public_key.threshold,
                collusion=s.collusion,
                min_cohort=c.min_cohort,
                rounds=view.rounds,
                stage_deadline_unix=view.stage_deadline,
                session_id=c.session_id,
                key_fingerprint=self._service.public_key.fingerprint(),
                spot_checks=c.spot_checks,
                chunk_ciphertexts=c.chunk_ciphertexts,
                session_nonce=view.session_nonce,
            )

        return self._call(context, run)

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        def run() -> tuple[bytes, bytes]:
            self._caller(context)
            self._federation(request.federation)
            return self._service.model_bytes(request.round)

        data, digest = self._call(context, run)
        yield from model_chunks(data, digest, self._max_message_bytes)

    def UploadContribution(
        self, request_iterator: Iterable[ppb.ContributionChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            chunks = iter(request_iterator)
            first = next(chunks, None)
            if first is None:
                raise InvalidInput("empty upload")
            silo = self._caller(context, first.silo)
            self._federation(first.federation)
            if not first.HasField("commitment"):
                raise InvalidInput("the first chunk must carry the signed commitment")
            with self._service.contribution(
                silo,
                first.round,
                commitment_from_pb(first.commitment),
                attestation=bytes(first.attestation),
                signature=bytes(first.attestation_signature),
            ) as upload:
                drain_upload(
                    first,
                    chunks,
                    silo,
                    lambda c: upload.add(int(c.chunk_index), bytes(c.ciphertexts)),
                    upload.finish,
                )
            return pb.Ack()

        return self._call(context, run)

    def GetDecryptionRequest(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[ppb.DecryptionRequestPart]:
        def run() -> tuple[DecryptionRequest, int]:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            found = self._service.decryption_request(
                silo, request.round, self._wait(request.wait_seconds)
            )
            return found, self._service.chunk_ciphertexts

        decryption_request, per_part = self._call(context, run)
        yield from request_to_pb(decryption_request, width=self._width, per_part=per_part)

    def OpenSpotChecks(
        self, request: ppb.SpotCheckChallenge, context: grpc.ServicerContext
    ) -> Iterator[ppb.SpotCheckOpenings]:
        def run() -> SpotCheckResponse:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            challenge = SpotCheckChallenge(
                request_digest=bytes(request.request_digest),
                positions=tuple(int(p) for p in request.positions),
            )
            return self._service.open_spot_checks(silo, request.round, challenge)

        response = self._call(context, run)
        yield from openings_to_pb(response, budget=self._max_message_bytes // 2)

    def SubmitPartialDecryption(
        self, request_iterator: Iterable[ppb.PartialDecryptionPart], context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            parts = iter(request_iterator)
            first = next(parts, None)
            if first is None:
                raise InvalidInput("empty partial decryption")
            silo = self._caller(context, first.silo)
            self._federation(first.federation)
            limit = (
                self._service.settings.vector_length
            )  # >= ciphertexts per silo; exact check below
            message = partial_from_pb(first, parts, width=self._width, limit=limit)
            self._service.partial_decryption(silo, first.round, message)
            return pb.Ack()

        return self._call(context, run)

    def RefuseDecryption(
        self, request: ppb.DecryptionRefusal, context: grpc.ServicerContext
    ) -> pb.Ack:
        def run() -> pb.Ack:
            silo = self._caller(context, request.silo)
            self._federation(request.federation)
            self._service.refuse(silo, request.round, bytes(request.request_digest), request.reason)
            return pb.Ack()

        return self._call(context, run)

    def GetResult(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        def run() -> pb.RoundResult:
            self._caller(context, request.silo)
            self._federation(request.federation)
            outcome = self._service.result(request.round, self._wait(request.wait_seconds))
            return pb.RoundResult(
                round=outcome.round,
                state=_STAGE_STATE.get(outcome.status, pb.ROUND_STATE_OPEN),
                survivors=list(outcome.survivors),
                dropped=list(outcome.dropped),
                new_model_hash=outcome.new_model_hash,
                reason=outcome.reason,
            )

        return self._call(context, run)


def create_paillier_server(
    service: PaillierRoundService,
    address: str,
    *,
    tls: TlsFiles,
    revoked: Iterable[str] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_workers: int = 64,
    servicer: PaillierServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Build (without starting) the Paillier-mode gRPC server; returns it and the bound port.

    mTLS is mandatory (no insecure variant): the server requires a client certificate chained to the
    consortium CA. It also serves the read-only ``Audit`` service (for silos witnessing checkpoints) and
    standard health checking. ``servicer`` replaces the default one (tests substitute a lying coordinator).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=server_options(max_message_bytes),  # the masking-mode server's options (see there)
        interceptors=[_DecodeGuard()],
    )
    refused = frozenset(revoked)
    ppb_grpc.add_PaillierFederationServicer_to_server(
        servicer or PaillierServicer(service, revoked=refused, max_message_bytes=max_message_bytes),
        server,
    )
    pb_grpc.add_AuditServicer_to_server(
        AuditServicer(
            cast(RoundService, service),  # reads only ``audit`` and ``settings.federation``
            revoked=refused,
            insecure=False,
            max_message_bytes=max_message_bytes,
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(
        "coordinator.proto.v1.PaillierFederation", health_pb2.HealthCheckResponse.SERVING
    )
    health_servicer.set("coordinator.proto.v1.Audit", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port


# ----------------------------------------------------------------------------------------------------------------
# Runner


@dataclass
class PaillierCoordinator:
    """A running Paillier-mode coordinator: the round service, the gRPC server, its port and its store."""

    service: PaillierRoundService
    server: grpc.Server
    port: int
    store: SQLiteStore

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and close the store and the ledger."""
        self.service.stop()
        self.server.stop(grace).wait()
        self.store.close()
        self.service.audit.close()


def start_paillier_coordinator(
    config: ServeConfig, paillier_public_key: Path
) -> PaillierCoordinator:
    """Build and start the Paillier-mode coordinator described by ``config`` (rounds begin at once).

    The federation's threshold is the key's ``t`` (``[rounds] threshold`` is the masking-mode Shamir threshold
    and is not used here). ``insecure_debug_no_tls`` is refused: Paillier mode always uses mTLS.

    Raises:
        ValueError: the configuration asks for no TLS.
    """
    if config.tls is None:
        raise ValueError("Paillier mode requires mTLS; insecure_debug_no_tls is not supported")
    tune_allocator()  # before the gRPC server's threads exist (see coordinator._malloc)
    public_key = ThresholdPublicKey.from_json(paillier_public_key.read_bytes())
    roster = config.load_roster()
    r = config.rounds
    settings = FederationSettings(
        federation=config.federation,
        rounds=r.count,
        vector_length=config.model.size,
        clip=r.clip,
        bits=r.bits,
        threshold=public_key.threshold,
        collusion=r.collusion,
        min_cohort=r.min_cohort,
        deadlines=config.deadlines,
        privacy=config.privacy,
    )
    if config.model.initial is not None:
        initial = np.load(config.model.initial, allow_pickle=False).astype(np.float32)
    else:
        initial = np.zeros(config.model.size, dtype=np.float32)
    store = SQLiteStore(config.storage)
    origin = ledger_origin(config.federation)
    signer = CheckpointSigner(load_ed25519_private(config.audit_key), key_name=origin)
    audit = AuditTrail.open(config.storage, federation=config.federation, signer=signer)
    service = PaillierRoundService(
        settings=settings,
        roster=roster,
        store=store,
        initial_model=initial,
        audit=audit,
        public_key=public_key,
        max_message_bytes=config.max_message_bytes,
    )
    tls = TlsFiles(
        config.tls.ca.read_bytes(), config.tls.cert.read_bytes(), config.tls.key.read_bytes()
    )
    server, port = create_paillier_server(
        service,
        config.listen,
        tls=tls,
        revoked=config.revoked_certificates,
        max_message_bytes=config.max_message_bytes,
    )
    server.start()
    service.start()
    return PaillierCoordinator(service, server, port, store)
