"""The silo SDK for Paillier mode: encrypt each round's update under the joint key, and decrypt only aggregates.

A complete silo::

    from coordinator.sdk.paillier import PaillierSilo

    with PaillierSilo.from_config(SiloConfig.load("silo-hospital-a.toml")) as silo:
        for report in silo.run(lambda ctx: trainer.train_round(ctx.weights)):
            print(report.round, report.status, report.survivors)

Each round the silo: checks the round's parameters against its pinned roster, pinned joint key and own policy;
downloads the global model and checks it against the session id; fills its obfuscator pool (offline work,
before training); trains; quantizes, packs and encrypts the update; streams the ciphertext chunks after a
signed Merkle commitment and a proof of plaintext knowledge (with its signed privacy attestation when training
returns one). Then, as a key holder, it fetches the decryption request, binds it, posts a challenge it draws
itself (spot-check positions and a fold seed); as a contributor it answers every key holder's fold seed with a
signed, proven fold of its own ciphertexts; and as a key holder again it checks the openings and that the
product of every contributor's fold is the fold of the aggregate, and only then returns its partial
decryption.

Notes:
    - Decryption-oracle defence (DESIGN 5, :mod:`secagg.paillier` Notes). The silo refuses (and tells the
      coordinator, which records it in the audit ledger) any request with fewer than ``min_cohort`` distinct
      roster-signed, proven commitments for this round, or whose aggregate is not the product of the committed
      ciphertexts (at the spot-checked positions, and at every position through the folds). The one request it agreed to consider per round is kept in
      a SQLite file in the silo's state directory (:class:`SQLiteDecryptionHistory`, fsynced before the
      positions are revealed), so restarting the silo does not let a coordinator present a second aggregate
      for the same round or fish for new positions.
    - The silo insists on at least ``min_spot_checks`` positions (default 16) whatever the coordinator's
      round parameters say: the coordinator chooses the parameter but must not be able to weaken the check.
    - The round loop (join, round checks, model download, training, result, checkpoint witnessing) is
      :class:`coordinator.sdk.loop.SiloClient`, shared with masking mode; channel, retries, error mapping and
      long polls are :class:`coordinator.sdk.transport.Transport`. This module adds the Paillier pins, round
      checks and the two stages.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeAlias, Unpack

import numpy as np
import numpy.typing as npt

from coordinator.common import TlsFiles
from coordinator.config import SiloConfig
from coordinator.errors import Aborted, InvalidInput, StageError, Unauthorized
from coordinator.pki.paillier import PaillierFiles
from coordinator.proto.v1 import paillier_pb2 as ppb
from coordinator.proto.v1 import paillier_pb2_grpc as ppb_grpc
from coordinator.sdk.example import run_example_task
from coordinator.sdk.loop import (
    Attestation,
    Member,
    RoundContext,
    RoundMode,
    RoundStages,
    SiloClient,
    SiloConnection,
    TrainFn,
    connection_from_config,
    tls_from_config,
)
from coordinator.sdk.transport import Transport
from coordinator.wire.paillier import (
    challenge_to_pb,
    commitment_to_pb,
    fold_requests_from_pb,
    fold_to_pb,
    openings_from_pb,
    partial_to_pb,
    request_from_pb,
)
from secagg import Quantizer
from secagg.errors import InvalidParameters, ProtocolViolation
from secagg.hazmat.paillier import KeyShare, ObfuscatorPool, ThresholdPublicKey
from secagg.paillier import (
    DEFAULT_SPOT_CHECKS,
    CiphertextChunk,
    DecryptionRequest,
    PaillierContributor,
    PaillierRoundConfig,
    PartialDecrypter,
    SignedCommitment,
    SpotCheckChallenge,
    check_trust_parameters,
    session_id_for,
)

__all__ = [
    "PaillierFiles",
    "PaillierRoundContext",
    "PaillierSilo",
    "SQLiteDecryptionHistory",
    "run_example_paillier_silo",
]

COLLECT_STAGE: Final = "collect"
"""The first stage of a Paillier round: a silo takes part only in a round still collecting."""

_CHUNK_HEADROOM: Final = 16 * 1024
"""Bytes kept free in an upload chunk for protobuf framing, ids, the commitment and the attestation."""


# ----------------------------------------------------------------------------------------------------------------
# Persistent decryption history


class SQLiteDecryptionHistory:
    """A :class:`~secagg.paillier.DecryptionHistory` in a SQLite file (fsynced), surviving silo restarts.

    Args:
        path: the database file (created if missing).

    Notes:
        The binding is committed with ``synchronous=FULL`` *before* the positions are returned to the caller
        (and hence before the coordinator sees them), so a crash cannot let the coordinator observe positions
        that the silo then forgets. Rows are never updated or deleted.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS decryptions (context BLOB PRIMARY KEY, "
            "request_digest BLOB NOT NULL, positions TEXT NOT NULL, created REAL NOT NULL)"
        )

    def bind(
        self, context: bytes, request_digest: bytes, positions: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Bind ``context`` to ``request_digest`` once; return the positions stored for it.

        Raises:
            ProtocolViolation: a different request was already bound to ``context``.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT request_digest, positions FROM decryptions WHERE context = ?",
                    (context,),
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO decryptions VALUES (?, ?, ?, ?)",
                        (context, request_digest, json.dumps(list(positions)), time.time()),
                    )
                    stored_digest, stored = request_digest, positions
                else:
                    stored_digest = bytes(row[0])
                    stored = tuple(int(p) for p in json.loads(row[1]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if not hmac.compare_digest(stored_digest, request_digest):
            raise ProtocolViolation("a different aggregate was already presented for this round")
        return stored

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


# ----------------------------------------------------------------------------------------------------------------
# The SDK

PaillierRoundContext: TypeAlias = RoundContext[PaillierRoundConfig]
"""What the training function receives in Paillier mode."""

PaillierTrainFn: TypeAlias = TrainFn[PaillierRoundConfig]

Slots = npt.NDArray[np.int64]


class PaillierSilo(
    SiloClient[ppb.PaillierJoinResponse, ppb.PaillierRoundInfo, PaillierRoundConfig]
):
    """One silo's connection to a Paillier-mode federation.

    Args:
        address: the coordinator's ``host:port``, or a list of the replicas' (failed over in turn).
        federation: federation id.
        silo: this silo's id on the roster (and its certificate's common name).
        signing_key: the silo's Ed25519 roster key (signs commitments and attestations).
        roster: the pinned roster; verified here against ``consortium_key``.
        consortium_key: the pinned consortium public key (32 bytes).
        tls: the consortium CA, this silo's certificate and key (PEM).
        public_key: the pinned joint Paillier public key.
        share: this silo's opened key share (secret; never logged).
        state_dir: the silo's state directory (decryption history, witness).
        policy: the silo's own minimum requirements.
        min_spot_checks: fewest positions this silo checks, whatever the round says.
        retry: backoff for transient failures.
        rng: randomness for quantization, obfuscators and spot-check positions.
        max_message_bytes: the largest gRPC message this silo sends or accepts.
        audit_public_key: the coordinator's pinned audit key; the silo then witnesses checkpoints every round.
        workers: processes for the partial decryption (default: every core; gmpy2 holds the GIL).

    The arguments shared with masking mode are declared once, in :class:`~coordinator.sdk.loop.SiloConnection`.

    Raises:
        Unauthorized: the key share or the joint key does not belong to this silo and roster.
    """

    def __init__(
        self,
        *,
        tls: TlsFiles,
        public_key: ThresholdPublicKey,
        share: KeyShare,
        state_dir: Path,
        min_spot_checks: int = DEFAULT_SPOT_CHECKS,
        workers: int | None = None,
        **connection: Unpack[SiloConnection],
    ) -> None:
        if share.key_fingerprint != public_key.fingerprint():
            raise Unauthorized("the key share does not belong to the pinned Paillier public key")
        roster, silo = connection["roster"], connection["silo"]
        if public_key.parties != len(roster.members) or share.index != roster.index(silo):
            raise Unauthorized("the Paillier key was not dealt to this roster")
        if min_spot_checks < 1:
            raise ValueError("min_spot_checks must be >= 1")
        state_dir.mkdir(parents=True, exist_ok=True)

        def mode(transport: Transport, member: Member) -> _PaillierMode:
            return _PaillierMode(
                transport,
                member,
                public_key=public_key,
                share=share,
                history=SQLiteDecryptionHistory(state_dir / "paillier-decryptions.sqlite"),
                min_spot_checks=min_spot_checks,
                workers=workers,
            )

        super().__init__(connection, tls=tls, witness_path=state_dir / "witness.sqlite", mode=mode)

    @classmethod
    def from_config(
        cls, config: SiloConfig, *, files: PaillierFiles | None = None, **overrides: Any
    ) -> PaillierSilo:
        """Connect as described by a silo's TOML configuration, with the Paillier files next to its keys."""
        tls = tls_from_config(config)
        if tls is None:
            raise Unauthorized("Paillier mode requires mTLS")
        files = files or PaillierFiles.from_silo_config(config)
        connection = connection_from_config(config)
        public_key, share = files.load(
            federation=config.federation, consortium_key=connection["consortium_key"]
        )
        arguments: dict[str, Any] = {
            **connection,
            "tls": tls,
            "public_key": public_key,
            "share": share,
            "state_dir": config.state_dir,
        }
        return cls(**(arguments | overrides))


class _PaillierMode(
    RoundMode[ppb.PaillierJoinResponse, ppb.PaillierRoundInfo, PaillierRoundConfig]
):
    """Paillier mode in the shared loop: the pinned joint key, the round checks, then collect and decrypt."""

    first_stage = COLLECT_STAGE

    def __init__(
        self,
        transport: Transport,
        member: Member,
        *,
        public_key: ThresholdPublicKey,
        share: KeyShare,
        history: SQLiteDecryptionHistory,
        min_spot_checks: int,
        workers: int | None,
    ) -> None:
        self.stub = transport.stub(ppb_grpc.PaillierFederationStub)
        super().__init__(transport, member, self.stub)
        self._public_key = public_key
        self._share = share
        self._history = history
        self._min_spot_checks = min_spot_checks
        self._workers = workers

    def close(self) -> None:
        self._history.close()

    def check_join(self, answer: ppb.PaillierJoinResponse) -> None:
        if bytes(answer.key_fingerprint) != self._public_key.fingerprint():
            raise Unauthorized(
                "the coordinator serves a different Paillier key than the pinned one"
            )

    def accept(self, info: ppb.PaillierRoundInfo) -> _PaillierRound:
        config = _round_config(info)
        self._check_round(info, config)
        quantizer = Quantizer(
            clip=float(info.quantization.clip),
            bits=config.value_bits,
            max_silos=config.max_contributors,
        )
        return _PaillierRound(config, quantizer, self, deadline=float(info.stage_deadline_unix))

    def _check_round(self, info: ppb.PaillierRoundInfo, config: PaillierRoundConfig) -> None:
        """Refuse round parameters weaker than the pinned key, roster and this silo's policy."""
        roster, policy = self.member.roster, self.member.policy
        if config.federation_id != self.member.federation or info.n != len(roster.members):
            raise Unauthorized("round parameters do not match the pinned roster")
        if config.max_contributors != len(roster.members):
            raise Unauthorized("the slots are not sized for the roster")
        if bytes(info.key_fingerprint) != self._public_key.fingerprint():
            raise Unauthorized("the round uses another Paillier key")
        if info.threshold != self._public_key.threshold:
            raise Unauthorized("the round states another threshold than the key's")
        # the key's t must beat the larger of the round's c and this silo's own assumption (DESIGN 5): with
        # t <= c, the coordinator and c colluders decrypt one contribution; with min_cohort - c < 2, an
        # aggregate may hold a single honest one
        collusion = max(int(info.collusion), policy.max_collusion_assumed)
        try:
            check_trust_parameters(
                threshold=self._public_key.threshold,
                collusion=collusion,
                min_cohort=config.min_cohort,
                parties=len(roster.members),
            )
        except InvalidParameters as exc:
            raise Unauthorized(
                f"the Paillier key is unsafe against {collusion} colluding silos: {exc}"
            ) from exc
        if config.min_cohort < policy.min_cohort:
            raise Unauthorized(
                f"round min_cohort {config.min_cohort} is below this silo's {policy.min_cohort}"
            )
        if config.spot_checks < self._min_spot_checks:
            raise Unauthorized(
                f"round asks for {config.spot_checks} spot checks, this silo insists on "
                f"{self._min_spot_checks}"
            )
        if config.session_id != session_id_for(bytes(info.session_nonce), bytes(info.model_hash)):
            raise Unauthorized("the session id is not bound to the round's model")
        width = self._public_key.ciphertext_bytes
        limit = self.transport.max_message_bytes
        if config.chunk_ciphertexts * width + _CHUNK_HEADROOM > limit:
            raise InvalidInput("the round's upload chunks exceed this silo's message size limit")

    def decrypter(self, config: PaillierRoundConfig) -> PartialDecrypter:
        """This silo as a key holder of the round (checks the request before it decrypts anything)."""
        return PartialDecrypter(
            silo_id=self.member.silo,
            share=self._share,
            public_key=self._public_key,
            config=config,
            roster=self.member.roster.members,
            history=self._history,
            rng=self.member.rng,
            workers=self._workers,
        )

    def contributor(self, config: PaillierRoundConfig, pool: ObfuscatorPool) -> PaillierContributor:
        """This silo as a contributor of the round (encrypts and commits under the joint key)."""
        return PaillierContributor(
            silo_id=self.member.silo,
            signing_key=self.member.signing_key,
            public_key=self._public_key,
            config=config,
            pool=pool,
            rng=self.member.rng,
        )

    def obfuscators(self, config: PaillierRoundConfig) -> ObfuscatorPool:
        """A filled pool of the round's encryption obfuscators (offline work: independent of the update)."""
        pool = ObfuscatorPool(self._public_key, rng=self.member.rng)
        pool.fill(config.ciphertext_count(self._public_key))
        return pool

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes of one ciphertext under the joint key."""
        return self._public_key.ciphertext_bytes


class _PaillierRound(RoundStages[PaillierRoundConfig, Slots]):
    """One Paillier round: quantize into slots, encrypt and upload ("collect"), then check and decrypt."""

    def __init__(
        self,
        config: PaillierRoundConfig,
        quantizer: Quantizer,
        mode: _PaillierMode,
        *,
        deadline: float,
    ) -> None:
        super().__init__(config)
        self._quantizer = quantizer
        self._mode = mode
        self._transport = mode.transport
        self._stub = mode.stub
        self._deadline = deadline
        self._pool: ObfuscatorPool | None = None

    def prepare(self) -> None:
        # offline work first: the obfuscators do not depend on the update
        self._pool = self._mode.obfuscators(self.config)

    def encode(self, update: npt.NDArray[np.float64]) -> Slots:
        # two's complement in the ring -> the signed integers the slots hold
        ring = self._quantizer.encode(update, self._mode.member.rng)
        return ring.view(np.int32).astype(np.int64)

    def run(self, train: Callable[[], Slots], attest: Callable[[str], Attestation]) -> str | None:
        # collect is the first stage: the silo trains before it, as soon as it accepted the round
        encoded = train()
        pool = self._pool if self._pool is not None else self._mode.obfuscators(self.config)
        contributor = self._mode.contributor(self.config, pool)
        chunks, commitment = contributor.encrypt_update(encoded)
        session_id = self.config.session_id.hex()
        attestation = attest(session_id)
        self._transport.upload(
            self._stub.UploadContribution, lambda: self._upload(chunks, commitment, attestation)
        )
        # the witness proves this attestation reached the log (completeness), as in masking mode
        sent = attestation.sent(round=self.config.round_number, session_id=session_id)
        self._transport.record("sent", sent)
        return self._decrypt(contributor)

    def _decrypt(self, contributor: PaillierContributor) -> str | None:
        """Challenge, fold, check and partially decrypt the round's aggregate; returns the refusal reason if it
        refused.

        The stages after collect are bounded by the coordinator's deadlines, which the silo learns only
        stage by stage: their long polls wait until the coordinator closes or aborts the stage.
        """
        t, stub, r = self._transport, self._stub, self.config.round_number
        width = self._mode.ciphertext_bytes
        collect = functools.partial(request_from_pb, width=width)
        try:
            request = t.poll(
                lambda wait: t.read(stub.GetDecryptionRequest, t.stage_request(r, wait), collect),
                deadline=self._deadline,
            )
        except InvalidInput as exc:
            return f"malformed decryption request: {exc}"
        decrypter = self._mode.decrypter(self.config)

        def posted(challenge: SpotCheckChallenge, wait: float = 0.0) -> ppb.SpotCheckChallenge:
            return challenge_to_pb(
                challenge, federation=t.federation, round_=r, silo=t.silo, wait=wait
            )

        try:
            challenge = decrypter.challenge(request)
            t.submit(stub.PostChallenge, posted(challenge))
            if t.silo in {c.silo_id for c in request.contributions}:
                self._fold(contributor, request)
            response = t.poll(
                lambda wait: t.read(stub.OpenSpotChecks, posted(challenge, wait), openings_from_pb)
            )
            partial = decrypter.partially_decrypt(response)
        except (ProtocolViolation, InvalidInput) as exc:
            refusal = ppb.DecryptionRefusal(
                federation=t.federation,
                round=r,
                silo=t.silo,
                request_digest=request.digest(),
                reason=str(exc),
            )
            # the stage may have closed meanwhile; the refusal stands locally either way
            with contextlib.suppress(StageError, Aborted):
                t.submit(stub.RefuseDecryption, refusal)
            return str(exc)
        per_part = max(1, (t.chunk_words * 4) // width)
        # StageError: the threshold of partial decryptions was combined before this one arrived
        with contextlib.suppress(StageError):
            t.upload(
                stub.SubmitPartialDecryption,
                lambda: partial_to_pb(
                    partial, federation=t.federation, round_=r, width=width, per_part=per_part
                ),
            )
        return None

    def _fold(self, contributor: PaillierContributor, request: DecryptionRequest) -> None:
        """As a contributor: answer every key holder's fold seed for the request this silo checked.

        Raises:
            ProtocolViolation: the fold requests name another request, or a key holder asks twice.
        """
        t, stub, r = self._transport, self._stub, self.config.round_number
        answer = t.poll(lambda wait: t.call(stub.GetFoldRequests, t.stage_request(r, wait)))
        if bytes(answer.request_digest) != request.digest():
            raise ProtocolViolation("fold requests for another decryption request")
        folds = contributor.answer_folds(fold_requests_from_pb(answer))
        t.submit(
            stub.SubmitFolds,
            ppb.FoldAnswers(
                federation=t.federation,
                round=r,
                silo=t.silo,
                answers=[fold_to_pb(a) for a in folds],
            ),
        )

    def _upload(
        self,
        chunks: tuple[CiphertextChunk, ...],
        commitment: SignedCommitment,
        attestation: Attestation,
    ) -> Iterator[ppb.ContributionChunk]:
        t = self._transport
        for i, chunk in enumerate(chunks):
            message = ppb.ContributionChunk(
                federation=t.federation,
                round=self.config.round_number,
                silo=t.silo,
                chunk_index=chunk.chunk_index,
                ciphertexts=chunk.data,
                last=i == len(chunks) - 1,
            )
            if i == 0:
                message.commitment.CopyFrom(commitment_to_pb(commitment))
                message.attestation = attestation.payload
                message.attestation_signature = attestation.signature
            yield message


def _round_config(info: ppb.PaillierRoundInfo) -> PaillierRoundConfig:
    return PaillierRoundConfig(
        federation_id=info.federation,
        round_number=info.round,
        session_id=bytes(info.session_id),
        vector_length=int(info.vector_length),
        value_bits=int(info.quantization.bits),
        max_contributors=int(info.quantization.max_silos),
        min_cohort=int(info.min_cohort),
        spot_checks=int(info.spot_checks),
        chunk_ciphertexts=int(info.chunk_ciphertexts),
    )


# ----------------------------------------------------------------------------------------------------------------
# The demo's silo process


def run_example_paillier_silo(
    config: SiloConfig, *, events: bool = False, files: PaillierFiles | None = None
) -> list[dict[str, Any]]:
    """Run one Paillier-mode silo of the built-in example task until the federation ends.

    The same task as :func:`coordinator.sdk.masking.run_example_silo` (DP-SGD on the silo's breast-cancer shard);
    only the aggregation differs. Returns one summary per round; with ``events`` also prints them for the demo.
    """
    with PaillierSilo.from_config(config, files=files) as silo:
        return run_example_task(config, silo, events=events)
