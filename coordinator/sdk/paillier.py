"""The silo SDK for Paillier mode: encrypt each round's update under the joint key, and decrypt only aggregates.

A complete silo::

    from coordinator.sdk.paillier import PaillierSilo

    with PaillierSilo.from_config(SiloConfig.load("silo-hospital-a.toml")) as silo:
        for report in silo.run(lambda ctx: trainer.train_round(ctx.weights)):
            print(report.round, report.status, report.survivors)

Each round the silo: checks the round's parameters against its pinned roster, pinned joint key and own policy;
downloads the global model and checks it against the session id; fills its obfuscator pool (offline work,
before training); trains; quantizes, packs and encrypts the update; streams the ciphertext chunks after a
signed Merkle commitment (with its signed privacy attestation when training returns one). Then, as a key
holder, it fetches the decryption request, checks at positions it draws itself that the aggregate is the
product of at least ``min_cohort`` roster-signed contributions, and only then returns its partial decryption.

Notes:
    - Decryption-oracle defence (DESIGN 5, :mod:`secagg.paillier` Notes). The silo refuses (and tells the
      coordinator, which records it in the audit ledger) any request with fewer than ``min_cohort`` distinct
      roster-signed commitments for this round, or whose aggregate is not the product of the committed
      ciphertexts at the spot-checked positions. The one request it agreed to consider per round is kept in
      a SQLite file in the silo's state directory (:class:`SQLiteDecryptionHistory`, fsynced before the
      positions are revealed), so restarting the silo does not let a coordinator present a second aggregate
      for the same round or fish for new positions.
    - The silo insists on at least ``min_spot_checks`` positions (default 16) whatever the coordinator's
      round parameters say: the coordinator chooses the parameter but must not be able to weaken the check.
    - Transport, retries, long polls and checkpoint witnessing are those of :class:`coordinator.sdk.masking.Silo`,
      which this class drives (same channel, same error mapping).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, RoundStatus, TlsFiles, chunk_words
from coordinator.config import SiloConfig, SiloPolicy
from coordinator.errors import (
    Aborted,
    InvalidInput,
    StageError,
    Unauthorized,
)
from coordinator.pki import load_ed25519_private
from coordinator.pki.paillier import PaillierFiles
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import paillier_pb2 as ppb
from coordinator.proto.v1 import paillier_pb2_grpc as ppb_grpc
from coordinator.sdk.example import run_example_task
from coordinator.sdk.masking import PrivateUpdate, RetryPolicy, RoundReport, Silo
from coordinator.wire.paillier import (
    commitment_to_pb,
    openings_from_pb,
    partial_to_pb,
    request_from_pb,
)
from secagg import Quantizer, Roster, RoundAborted, SecAggError
from secagg.errors import ProtocolViolation
from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier import KeyShare, ObfuscatorPool, ThresholdPublicKey
from secagg.paillier import (
    DEFAULT_SPOT_CHECKS,
    CiphertextChunk,
    PaillierContributor,
    PaillierRoundConfig,
    PartialDecrypter,
    SignedCommitment,
    session_id_for,
)

__all__ = [
    "PaillierFiles",
    "PaillierRoundContext",
    "PaillierSilo",
    "SQLiteDecryptionHistory",
    "run_example_paillier_silo",
]

log = logging.getLogger(__name__)

_POLL_SECONDS = 20.0
_CHUNK_HEADROOM = (
    16 * 1024
)  # protobuf framing, ids, the commitment, the attestation and its signature


# ----------------------------------------------------------------------------------------------------------------
# Key material on disk


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


@dataclass(frozen=True)
class PaillierRoundContext:
    """What the training function receives in Paillier mode."""

    round: int
    weights: npt.NDArray[np.float32] = field(repr=False)
    config: PaillierRoundConfig


PaillierTrainFn = Callable[[PaillierRoundContext], "npt.ArrayLike | PrivateUpdate"]


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


class PaillierSilo:
    """One silo's connection to a Paillier-mode federation.

    Args:
        address: the coordinator's ``host:port``.
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
        workers: threads for the partial decryption's exponentiations.
    """

    def __init__(
        self,
        *,
        address: str,
        federation: str,
        silo: str,
        signing_key: Ed25519PrivateKey,
        roster: Roster,
        consortium_key: bytes,
        tls: TlsFiles,
        public_key: ThresholdPublicKey,
        share: KeyShare,
        state_dir: Path,
        policy: SiloPolicy | None = None,
        min_spot_checks: int = DEFAULT_SPOT_CHECKS,
        retry: RetryPolicy | None = None,
        rng: RandomSource = os.urandom,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        audit_public_key: bytes | None = None,
        workers: int = 1,
    ) -> None:
        if share.key_fingerprint != public_key.fingerprint():
            raise Unauthorized("the key share does not belong to the pinned Paillier public key")
        if public_key.parties != len(roster.members) or share.index != roster.index(silo):
            raise Unauthorized("the Paillier key was not dealt to this roster")
        if min_spot_checks < 1:
            raise ValueError("min_spot_checks must be >= 1")
        state_dir.mkdir(parents=True, exist_ok=True)
        self._transport = Silo(
            address=address,
            federation=federation,
            silo=silo,
            signing_key=signing_key,
            roster=roster,
            consortium_key=consortium_key,
            tls=tls,
            policy=policy,
            retry=retry,
            rng=rng,
            max_message_bytes=max_message_bytes,
            audit_public_key=audit_public_key,
            witness_path=state_dir / "witness.sqlite",
        )
        self.silo = silo
        self.federation = federation
        self._key = signing_key
        self._roster = roster
        self._policy = policy or SiloPolicy()
        self._min_spot_checks = min_spot_checks
        self._public_key = public_key
        self._share = share
        self._rng = rng
        self._workers = workers
        self._max_message_bytes = max_message_bytes
        self._history = SQLiteDecryptionHistory(state_dir / "paillier-decryptions.sqlite")
        self._stub = ppb_grpc.PaillierFederationStub(self._transport._channel)
        self._md = self._transport._metadata

    def __repr__(self) -> str:
        return f"PaillierSilo(silo={self.silo!r}, federation={self.federation!r})"

    @classmethod
    def from_config(
        cls, config: SiloConfig, *, files: PaillierFiles | None = None, **overrides: Any
    ) -> PaillierSilo:
        """Connect as described by a silo's TOML configuration, with the Paillier files next to its keys."""
        if config.tls is None:
            raise Unauthorized("Paillier mode requires mTLS")
        files = files or PaillierFiles.from_silo_config(config)
        public_key, share = files.load(federation=config.federation)
        arguments: dict[str, Any] = {
            "address": config.coordinator,
            "federation": config.federation,
            "silo": config.silo,
            "signing_key": load_ed25519_private(config.signing_key),
            "roster": config.load_roster(),
            "consortium_key": config.consortium_public_key,
            "tls": TlsFiles(
                config.tls.ca.read_bytes(),
                config.tls.cert.read_bytes(),
                config.tls.key.read_bytes(),
            ),
            "public_key": public_key,
            "share": share,
            "state_dir": config.state_dir,
            "policy": config.policy,
            "max_message_bytes": config.max_message_bytes,
            "audit_public_key": config.audit_public_key,
        }
        return cls(**(arguments | overrides))

    def close(self) -> None:
        """Close the channel, the witness and the decryption history."""
        self._transport.close()
        self._history.close()

    def __enter__(self) -> PaillierSilo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing ----------------------------------------------------------------------------------------
    def _stage(self, round_: int, wait: float) -> pb.StageRequest:
        return pb.StageRequest(
            federation=self.federation, round=round_, silo=self.silo, wait_seconds=wait
        )

    # public API ----------------------------------------------------------------------------------------
    def join(self) -> ppb.PaillierJoinResponse:
        """Check membership, the roster and the joint key the coordinator serves against the pinned ones."""
        response: ppb.PaillierJoinResponse = self._transport._rpc(
            lambda: self._stub.Join(
                pb.JoinRequest(federation=self.federation, silo=self.silo), metadata=self._md
            )
        )
        if response.roster_fingerprint != self._roster.fingerprint():
            raise Unauthorized("the coordinator serves a different roster than the pinned one")
        if bytes(response.key_fingerprint) != self._public_key.fingerprint():
            raise Unauthorized(
                "the coordinator serves a different Paillier key than the pinned one"
            )
        if response.max_message_bytes:
            self._max_message_bytes = min(self._max_message_bytes, response.max_message_bytes)
        return response

    def _check_round(self, info: ppb.PaillierRoundInfo, config: PaillierRoundConfig) -> None:
        """Refuse round parameters weaker than the pinned key, roster and this silo's policy."""
        if config.federation_id != self.federation or info.n != len(self._roster.members):
            raise Unauthorized("round parameters do not match the pinned roster")
        if config.max_contributors != len(self._roster.members):
            raise Unauthorized("the slots are not sized for the roster")
        if bytes(info.key_fingerprint) != self._public_key.fingerprint():
            raise Unauthorized("the round uses another Paillier key")
        if info.threshold != self._public_key.threshold:
            raise Unauthorized("the round states another threshold than the key's")
        if config.min_cohort < self._policy.min_cohort:
            raise Unauthorized(
                f"round min_cohort {config.min_cohort} is below this silo's {self._policy.min_cohort}"
            )
        if config.spot_checks < self._min_spot_checks:
            raise Unauthorized(
                f"round asks for {config.spot_checks} spot checks, this silo insists on "
                f"{self._min_spot_checks}"
            )
        if config.session_id != session_id_for(bytes(info.session_nonce), bytes(info.model_hash)):
            raise Unauthorized("the session id is not bound to the round's model")
        width = self._public_key.ciphertext_bytes
        if config.chunk_ciphertexts * width + _CHUNK_HEADROOM > self._max_message_bytes:
            raise InvalidInput("the round's upload chunks exceed this silo's message size limit")

    def download_model(self, round_: int, expected_hash: bytes) -> npt.NDArray[np.float32]:
        """Stream the global model of a round and check its hash."""
        return self._transport._download_model_from(self._stub, round_, expected_hash)

    def run(
        self, train: PaillierTrainFn, *, max_rounds: int | None = None
    ) -> Iterator[RoundReport]:
        """Take part in every round until the federation finishes; yields one report per round joined."""
        self.join()
        next_round, done = 0, 0
        while max_rounds is None or done < max_rounds:
            request = pb.GetRoundRequest(federation=self.federation, after=next_round)

            def get_round(wait: float, request: pb.GetRoundRequest = request) -> Any:
                request.wait_seconds = wait
                return self._stub.GetRound(request, metadata=self._md)

            info: ppb.PaillierRoundInfo = self._transport._poll(get_round, time.time() + 3600)
            if info.state == pb.ROUND_STATE_FINISHED:
                return
            config = _round_config(info)
            next_round = config.round_number + 1
            if info.stage != "collect":
                log.info(
                    "round %d is past collection; waiting for the next one", config.round_number
                )
                continue
            self._check_round(info, config)
            weights = self.download_model(config.round_number, bytes(info.model_hash))
            # offline work first: the obfuscators do not depend on the update
            pool = ObfuscatorPool(self._public_key, rng=self._rng)
            pool.fill(config.ciphertext_count(self._public_key))
            trained = train(PaillierRoundContext(config.round_number, weights, config))
            private = trained if isinstance(trained, PrivateUpdate) else None
            update = np.asarray(
                private.update if private is not None else trained, dtype=np.float64
            )
            report = self._round(config, info, update, private, pool)
            self._transport.witness_checkpoint()
            yield report
            done += 1

    def _round(
        self,
        config: PaillierRoundConfig,
        info: ppb.PaillierRoundInfo,
        update: npt.NDArray[np.float64],
        private: PrivateUpdate | None,
        pool: ObfuscatorPool,
    ) -> RoundReport:
        r = config.round_number
        deadline = float(info.stage_deadline_unix)
        quantizer = Quantizer(
            clip=float(info.quantization.clip),
            bits=config.value_bits,
            max_silos=config.max_contributors,
        )
        # two's complement in the ring -> the signed integers the slots hold
        values = quantizer.encode(update, self._rng).view(np.int32).astype(np.int64)
        contributor = PaillierContributor(
            silo_id=self.silo,
            signing_key=self._key,
            public_key=self._public_key,
            config=config,
            pool=pool,
        )
        try:
            chunks, commitment = contributor.encrypt_update(values)
            attestation, attestation_signature = b"", b""
            if private is not None:
                facts = private.attestation(
                    federation=self.federation,
                    round=r,
                    session_id=config.session_id.hex(),
                    silo=self.silo,
                )
                attestation = json.dumps(facts.to_dict(), sort_keys=True).encode("utf-8")
                attestation_signature = self._key.sign(facts.signing_payload())
            self._transport._rpc(
                lambda: self._stub.UploadContribution(
                    self._upload(r, chunks, commitment, attestation, attestation_signature),
                    metadata=self._md,
                ),
                submission=True,
            )
            refused = self._decrypt(config, deadline)
        except (Aborted, RoundAborted, StageError) as exc:
            return RoundReport(r, RoundStatus.ABORTED, reason=str(exc))
        except SecAggError as exc:
            log.error("round %d refused: %s", r, exc)
            return RoundReport(r, RoundStatus.ABORTED, reason=f"refused: {exc}")
        if refused is not None:
            return RoundReport(r, RoundStatus.ABORTED, reason=f"refused: {refused}")
        result: pb.RoundResult = self._transport._poll(
            lambda w: self._stub.GetResult(self._stage(r, w), metadata=self._md), deadline
        )
        status = (
            RoundStatus.COMPLETED
            if result.state == pb.ROUND_STATE_COMPLETED
            else RoundStatus.ABORTED
        )
        return RoundReport(
            r,
            status,
            tuple(result.survivors),
            tuple(result.dropped),
            bytes(result.new_model_hash),
            result.reason,
        )

    def _decrypt(self, config: PaillierRoundConfig, deadline: float) -> str | None:
        """Check and partially decrypt the round's aggregate; returns the refusal reason if it refused."""
        r = config.round_number
        width = self._public_key.ciphertext_bytes

        def fetch(wait: float) -> Any:
            return request_from_pb(
                self._stub.GetDecryptionRequest(self._stage(r, wait), metadata=self._md),
                width=width,
            )

        try:
            request = self._transport._poll(fetch, deadline)
        except InvalidInput as exc:
            return f"malformed decryption request: {exc}"
        decrypter = PartialDecrypter(
            silo_id=self.silo,
            share=self._share,
            public_key=self._public_key,
            config=config,
            roster=self._roster.members,
            history=self._history,
            rng=self._rng,
            workers=self._workers,
        )
        try:
            challenge = decrypter.challenge(request)
            response = self._transport._rpc(
                lambda: openings_from_pb(
                    self._stub.OpenSpotChecks(
                        ppb.SpotCheckChallenge(
                            federation=self.federation,
                            round=r,
                            silo=self.silo,
                            request_digest=challenge.request_digest,
                            positions=list(challenge.positions),
                        ),
                        metadata=self._md,
                    )
                )
            )
            partial = decrypter.partially_decrypt(response)
        except (ProtocolViolation, InvalidInput) as exc:
            reason = str(exc)
            log.error("round %d: decryption request refused: %s", r, reason)
            # the stage may have closed meanwhile; the refusal stands locally either way
            with contextlib.suppress(StageError, Aborted):
                self._transport._rpc(
                    lambda: self._stub.RefuseDecryption(
                        ppb.DecryptionRefusal(
                            federation=self.federation,
                            round=r,
                            silo=self.silo,
                            request_digest=request.digest(),
                            reason=reason,
                        ),
                        metadata=self._md,
                    ),
                    submission=True,
                )
            return reason
        per_part = max(1, (chunk_words(self._max_message_bytes) * 4) // width)
        # StageError: t partial decryptions were combined before this one arrived
        with contextlib.suppress(StageError):
            self._transport._rpc(
                lambda: self._stub.SubmitPartialDecryption(
                    partial_to_pb(
                        partial,
                        federation=self.federation,
                        round_=r,
                        width=width,
                        per_part=per_part,
                    ),
                    metadata=self._md,
                ),
                submission=True,
            )
        return None

    def _upload(
        self,
        round_: int,
        chunks: tuple[CiphertextChunk, ...],
        commitment: SignedCommitment,
        attestation: bytes,
        signature: bytes,
    ) -> Iterator[ppb.ContributionChunk]:
        for i, chunk in enumerate(chunks):
            message = ppb.ContributionChunk(
                federation=self.federation,
                round=round_,
                silo=self.silo,
                chunk_index=chunk.chunk_index,
                ciphertexts=chunk.data,
                last=i == len(chunks) - 1,
            )
            if i == 0:
                message.commitment.CopyFrom(commitment_to_pb(commitment))
                message.attestation = attestation
                message.attestation_signature = signature
            yield message


# ----------------------------------------------------------------------------------------------------------------
# The demo's silo process


def run_example_paillier_silo(
    config: SiloConfig, *, events: bool = False, files: PaillierFiles | None = None
) -> list[dict[str, Any]]:
    """Run one Paillier-mode silo of the built-in example task until the federation ends.

    The same task as :func:`coordinator.sdk.example.run_example_silo` (DP-SGD on the silo's breast-cancer shard);
    only the aggregation differs. Returns one summary per round; with ``events`` also prints them for the demo.
    """
    with PaillierSilo.from_config(config, files=files) as silo:
        return run_example_task(config, silo, events=events)
