"""The silo SDK: join a federation, train on each round's global model, and take part in secure aggregation.

A complete silo::

    from coordinator.sdk.masking import Silo

    def train(ctx):  # ctx.weights: the global model (float32); return the update (new - old)
        return trainer.train_round(ctx.weights)  # a dp.training.PrivateTrainer: update + privacy facts

    with Silo.from_config(SiloConfig.load("silo-hospital-a.toml")) as silo:
        for report in silo.run(train):
            print(report.round, report.status, report.survivors)

Notes:
    The SDK verifies everything the ``secagg`` client role verifies (it *is* that role, driven over gRPC) and
    additionally: the coordinator's roster fingerprint equals the pinned roster, the round's parameters meet the
    silo's own policy (minimum cohort, collusion bound, threshold rule), and the downloaded model matches the hash
    every silo signs into its advertisement. Transient gRPC failures are retried with exponential backoff; a
    submission the server already holds (ALREADY_EXISTS after a retry) counts as delivered.

    When the training function returns a private update (anything with ``update`` and ``attestation(...)``,
    such as ``dp.training.RoundResult``), the SDK binds its privacy attestation to the round's session id, signs
    it with the silo's roster key and sends it with the first chunk of the masked upload. With a pinned audit
    key the silo also witnesses the coordinator's ledger: after every round it accepts the new signed checkpoint
    only with a valid RFC 9162 consistency proof from the last one it accepted, and keeps a local record of what
    it sent and spent (``audits.CheckpointWitness``), so a coordinator that rewrites history is caught.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import grpc
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import CheckpointWitness, VerificationError
from coordinator.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INSECURE_SILO_HEADER,
    RoundStatus,
    TlsFiles,
    chunk_words,
    ledger_origin,
    model_hash,
)
from coordinator.config import SiloConfig, SiloPolicy
from coordinator.errors import (
    Aborted,
    AuditFailure,
    CoordinatorError,
    InvalidInput,
    StageError,
    Unauthorized,
    Unavailable,
)
from coordinator.pki import load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.silo_dp import encode_update
from coordinator.wire.errors import from_rpc_error
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    config_from_pb,
    share_from_pb,
    share_to_pb,
    unmask_request_from_pb,
    unmask_response_to_pb,
)
from coordinator.wire.silo_dp import plan_from_pb
from dp.accounting import PrivacyAttestation
from secagg import Roster, RoundAborted, RoundConfig, SecAggClient, SecAggError
from secagg.hazmat.keys import RandomSource

__all__ = ["PrivateUpdate", "RetryPolicy", "RoundContext", "RoundReport", "Silo", "SiloPolicy"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 20.0
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures (UNAVAILABLE, RESOURCE_EXHAUSTED)."""

    attempts: int = 6
    initial: float = 0.2
    maximum: float = 5.0


@dataclass(frozen=True)
class RoundContext:
    """What the training function receives."""

    round: int
    weights: npt.NDArray[np.float32] = field(repr=False)
    config: RoundConfig


@dataclass(frozen=True)
class RoundReport:
    """How a round ended, from this silo's point of view."""

    round: int
    status: RoundStatus
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    new_model_hash: bytes = b""
    reason: str = ""


@runtime_checkable
class PrivateUpdate(Protocol):
    """A training result that carries its privacy facts (``dp.training.RoundResult`` is one)."""

    @property
    def update(self) -> npt.NDArray[Any]:
        """The model update (new - old weights), flat."""
        ...

    def attestation(
        self, *, federation: str, round: int, session_id: str, silo: str
    ) -> PrivacyAttestation:
        """The round's privacy attestation, bound to the round's session (unsigned)."""
        ...


TrainFn = Callable[[RoundContext], "npt.ArrayLike | PrivateUpdate"]


class Silo:
    """One silo's connection to a federation.

    Args:
        address: the coordinator's ``host:port``.
        federation: federation id.
        silo: this silo's id on the roster (and its certificate's common name).
        signing_key: the silo's Ed25519 roster key.
        roster: the pinned roster; verified here against ``consortium_key``.
        consortium_key: the pinned consortium public key (32 bytes).
        tls: the consortium CA, this silo's certificate and key (PEM). ``None`` only with
            ``insecure_debug_no_tls=True``.
        policy: the silo's own minimum requirements.
        retry: backoff for transient failures.
        rng: randomness for the protocol; ``os.urandom`` unless a test injects one.
        max_message_bytes: the largest gRPC message this silo sends or accepts; uploads are chunked below the
            smaller of this and the coordinator's own limit (announced in ``Join``).
        audit_public_key: the coordinator's pinned audit key; with ``witness_path``, the silo witnesses the
            coordinator's ledger checkpoints after every round.
        witness_path: the SQLite file of the silo's witness and local ledger.
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
        tls: TlsFiles | None,
        policy: SiloPolicy | None = None,
        retry: RetryPolicy | None = None,
        rng: RandomSource = os.urandom,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        audit_public_key: bytes | None = None,
        witness_path: Path | None = None,
        insecure_debug_no_tls: bool = False,
    ) -> None:
        roster.verify(consortium_key)
        if roster.federation != federation:
            raise Unauthorized(f"the pinned roster is for {roster.federation}, not {federation}")
        self.silo = silo
        self.federation = federation
        self._key = signing_key
        self._roster = roster
        self._policy = policy or SiloPolicy()
        self._retry = retry or RetryPolicy()
        self._rng = rng
        self._max_message_bytes = max_message_bytes
        self._chunk_words = chunk_words(max_message_bytes)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
            self._metadata: tuple[tuple[str, str], ...] = ()
        elif insecure_debug_no_tls:
            self._channel = grpc.insecure_channel(address, options=options)
            self._metadata = ((INSECURE_SILO_HEADER, silo),)
        else:
            raise ValueError(
                "TLS material is required (insecure_debug_no_tls is for local debugging only)"
            )
        self._stub = pb_grpc.FederationStub(self._channel)
        self._audit = pb_grpc.AuditStub(self._channel)
        self._witness: CheckpointWitness | None = None
        if audit_public_key is not None and witness_path is not None:
            witness_path.parent.mkdir(parents=True, exist_ok=True)
            self._witness = CheckpointWitness(
                witness_path, audit_public_key=audit_public_key, origin=ledger_origin(federation)
            )

    @classmethod
    def from_config(cls, config: SiloConfig, **overrides: Any) -> Silo:
        """Connect as described by a silo's TOML configuration (``secagg silo --config``)."""
        tls = None
        if config.tls is not None:
            tls = TlsFiles(
                config.tls.ca.read_bytes(),
                config.tls.cert.read_bytes(),
                config.tls.key.read_bytes(),
            )
        arguments: dict[str, Any] = {
            "address": config.coordinator,
            "federation": config.federation,
            "silo": config.silo,
            "signing_key": load_ed25519_private(config.signing_key),
            "roster": config.load_roster(),
            "consortium_key": config.consortium_public_key,
            "tls": tls,
            "policy": config.policy,
            "max_message_bytes": config.max_message_bytes,
            "audit_public_key": config.audit_public_key,
            "witness_path": config.state_dir / "witness.sqlite",
            "insecure_debug_no_tls": config.insecure_debug_no_tls,
        }
        return cls(**(arguments | overrides))

    def close(self) -> None:
        """Close the channel (and the witness database)."""
        self._channel.close()
        if self._witness is not None:
            self._witness.close()

    def __enter__(self) -> Silo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing ----------------------------------------------------------------------------------------
    def _rpc(self, call: Callable[[], T], *, submission: bool = False) -> T:
        """Run ``call`` with retries; map gRPC errors to SDK exceptions."""
        delay = self._retry.initial
        for attempt in range(self._retry.attempts):
            try:
                return call()
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                if submission and attempt > 0 and code == grpc.StatusCode.ALREADY_EXISTS:
                    return None  # type: ignore[return-value]  # delivered by an earlier attempt
                if code in _TRANSIENT and attempt + 1 < self._retry.attempts:
                    # jitter only spreads retries in time; it needs no cryptographic randomness
                    time.sleep(delay * (0.5 + random.random()))  # noqa: S311
                    delay = min(delay * 2, self._retry.maximum)
                    continue
                raise from_rpc_error(exc) from exc
        raise Unavailable(
            "coordinator unreachable"
        )  # pragma: no cover - loop always returns or raises

    def _poll(self, call: Callable[[float], T], deadline: float) -> T:
        """Long-poll a stage result until it is ready or ``deadline`` (unix time, plus a margin) passes."""
        while True:
            try:
                return self._rpc(lambda: call(_POLL_SECONDS))
            except CoordinatorError as exc:
                if not isinstance(exc.__cause__, grpc.Call) or exc.__cause__.code() != (
                    grpc.StatusCode.DEADLINE_EXCEEDED
                ):
                    raise
                if time.time() > deadline + 300:
                    raise Unavailable("the coordinator never closed the stage") from exc

    def _get_round(self, request: pb.GetRoundRequest, wait: float) -> pb.RoundInfo:
        request.wait_seconds = wait
        info: pb.RoundInfo = self._stub.GetRound(request, metadata=self._metadata)
        return info

    def _stage(self, round_: int, wait: float) -> pb.StageRequest:
        return pb.StageRequest(
            federation=self.federation, round=round_, silo=self.silo, wait_seconds=wait
        )

    # public API ----------------------------------------------------------------------------------------
    def join(self) -> pb.JoinResponse:
        """Check membership and that the coordinator serves the same roster this silo pinned."""
        response: pb.JoinResponse = self._rpc(
            lambda: self._stub.Join(
                pb.JoinRequest(federation=self.federation, silo=self.silo), metadata=self._metadata
            )
        )
        if response.roster_fingerprint != self._roster.fingerprint():
            raise Unauthorized("the coordinator serves a different roster than the pinned one")
        if response.max_message_bytes:
            limit = min(self._max_message_bytes, response.max_message_bytes)
            self._chunk_words = chunk_words(limit)
        return response

    def witness_checkpoint(self) -> None:
        """Accept the coordinator's latest checkpoint only if it extends the last one this silo accepted.

        Raises:
            AuditFailure: the checkpoint's signature does not verify, or it is not consistent with what this
                silo accepted before (the coordinator rewrote history).
        """
        witness = self._witness
        if witness is None:
            return
        md = self._metadata
        checkpoint: pb.Checkpoint = self._rpc(
            lambda: self._audit.GetCheckpoint(
                pb.CheckpointRequest(federation=self.federation), metadata=md
            )
        )
        latest = witness.latest()
        proof: list[bytes] = []
        if latest is not None and 0 < latest.size < checkpoint.size:
            response: pb.Proof = self._rpc(
                lambda: self._audit.GetConsistencyProof(
                    pb.ConsistencyProofRequest(
                        federation=self.federation,
                        old_size=latest.size,
                        new_size=checkpoint.size,
                    ),
                    metadata=md,
                )
            )
            proof = [bytes(h) for h in response.hashes]
        try:
            witness.update(checkpoint.note, proof)
        except VerificationError as exc:
            log.error("audit checkpoint refused: %s", exc)
            raise AuditFailure(
                f"the coordinator's audit log failed this silo's check: {exc}"
            ) from exc

    def download_model(self, round_: int, expected_hash: bytes) -> npt.NDArray[np.float32]:
        """Stream the global model of a round and check its hash."""
        return self._download_model_from(self._stub, round_, expected_hash)

    def _download_model_from(
        self, stub: Any, round_: int, expected_hash: bytes
    ) -> npt.NDArray[np.float32]:
        """:meth:`download_model` through ``stub``: either mode's service streams the same chunks."""

        def fetch() -> npt.NDArray[np.float32]:
            parts: list[bytes] = []
            total = 0
            for chunk in stub.DownloadModel(
                pb.DownloadModelRequest(federation=self.federation, round=round_),
                metadata=self._metadata,
            ):
                parts.append(chunk.values)
                total = chunk.total
            return np.frombuffer(b"".join(parts), dtype="<f4").astype(np.float32)[:total]

        weights = self._rpc(fetch)
        if model_hash(weights) != expected_hash:
            raise InvalidInput("the downloaded model does not match the round's model hash")
        return weights

    def run(self, train: TrainFn, *, max_rounds: int | None = None) -> Iterator[RoundReport]:
        """Take part in every round until the federation finishes; yields one report per round joined."""
        self.join()
        next_round, done = 0, 0
        while max_rounds is None or done < max_rounds:
            request = pb.GetRoundRequest(federation=self.federation, after=next_round)
            info: pb.RoundInfo = self._poll(
                functools.partial(self._get_round, request), time.time() + 3600
            )
            if info.state == pb.ROUND_STATE_FINISHED:
                return
            config = config_from_pb(info)
            silo_dp = plan_from_pb(info.silo_dp) if info.HasField("silo_dp") else None
            next_round = config.round + 1
            if info.stage != "advertise_keys":
                log.info(
                    "round %d is past key advertisement; waiting for the next one", config.round
                )
                continue
            self._policy.check_round(config, self._roster)
            self._policy.check_silo_dp(silo_dp.noise_multiplier if silo_dp else None)
            if silo_dp is not None and silo_dp.padded_dimension != config.vector_length:
                raise InvalidInput(
                    "the announced silo-level DP plan does not fit the round's vector"
                )
            weights = self.download_model(config.round, config.model_hash)
            trained = train(RoundContext(config.round, weights, config))
            private = trained if isinstance(trained, PrivateUpdate) else None
            update = np.asarray(
                private.update if private is not None else trained, dtype=np.float64
            )
            encoded = (
                encode_update(update, silo_dp, config)
                if silo_dp is not None
                else config.quantizer.encode(update, self._rng)
            )
            report = self._aggregate(config, encoded, private, info.stage_deadline_unix)
            self.witness_checkpoint()
            yield report
            done += 1

    def _sign(self, attestation: PrivacyAttestation) -> bytes:
        return self._key.sign(attestation.signing_payload())

    def _aggregate(
        self,
        config: RoundConfig,
        encoded: npt.NDArray[np.uint32],
        private: PrivateUpdate | None,
        deadline: float,
    ) -> RoundReport:
        """Run the five protocol stages for one round."""
        r, md = config.round, self._metadata
        client = SecAggClient(
            silo=self.silo, signing_key=self._key, roster=self._roster, config=config, rng=self._rng
        )
        try:
            ad = client.advertise()
            self._rpc(
                lambda: self._stub.AdvertiseKeys(
                    pb.AdvertiseKeysRequest(
                        federation=self.federation, round=r, advertisement=advertisement_to_pb(ad)
                    ),
                    metadata=md,
                ),
                submission=True,
            )
            ads = self._poll(
                lambda w: self._stub.GetAdvertisements(self._stage(r, w), metadata=md), deadline
            )
            shares = client.share_keys([advertisement_from_pb(a) for a in ads.advertisements])
            self._rpc(
                lambda: self._stub.ShareKeys(
                    pb.ShareKeysRequest(
                        federation=self.federation,
                        round=r,
                        sender=self.silo,
                        shares=[share_to_pb(s) for s in shares.shares],
                    ),
                    metadata=md,
                ),
                submission=True,
            )
            inbox = self._poll(
                lambda w: self._stub.GetInbox(self._stage(r, w), metadata=md), deadline
            )
            masked = client.masked_input([share_from_pb(s) for s in inbox.shares], encoded)
            attestation, attestation_signature = b"", b""
            if private is not None:
                facts = private.attestation(
                    federation=self.federation,
                    round=r,
                    session_id=client.session_id.hex(),
                    silo=self.silo,
                )
                attestation = json.dumps(facts.to_dict(), sort_keys=True).encode("utf-8")
                attestation_signature = self._sign(facts)
            self._rpc(
                lambda: self._stub.UploadMaskedInput(
                    self._chunks(r, masked, attestation, attestation_signature), metadata=md
                ),
                submission=True,
            )
            if self._witness is not None:
                sent = {
                    "round": r,
                    "session_id": client.session_id.hex(),
                    "model_hash": config.model_hash.hex(),
                    "coordinates": int(masked.shape[0]),
                }
                if private is not None:
                    sent["attestation"] = json.loads(attestation)
                    sent["attestation_signature"] = attestation_signature.hex()
                self._witness.record("sent", sent)
            survivors = self._poll(
                lambda w: self._stub.GetSurvivors(self._stage(r, w), metadata=md), deadline
            )
            signature = client.sign_survivors(list(survivors.survivors))
            self._rpc(
                lambda: self._stub.SignSurvivors(
                    pb.SignSurvivorsRequest(
                        federation=self.federation,
                        round=r,
                        silo=self.silo,
                        signature=signature.signature,
                    ),
                    metadata=md,
                ),
                submission=True,
            )
            request = self._poll(
                lambda w: self._stub.GetUnmaskRequest(self._stage(r, w), metadata=md), deadline
            )
            response = client.unmask(unmask_request_from_pb(request))
            self._rpc(
                lambda: self._stub.Unmask(
                    unmask_response_to_pb(self.federation, r, response), metadata=md
                ),
                submission=True,
            )
        except (Aborted, RoundAborted, StageError) as exc:
            return RoundReport(r, RoundStatus.ABORTED, reason=str(exc))
        except SecAggError as exc:
            # a protocol violation: refuse the round; the reason names the check that failed
            log.error("round %d refused: %s", r, exc)
            return RoundReport(r, RoundStatus.ABORTED, reason=f"refused: {exc}")
        result: pb.RoundResult = self._poll(
            lambda w: self._stub.GetResult(self._stage(r, w), metadata=md), deadline
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

    def _chunks(
        self, round_: int, masked: npt.NDArray[np.uint32], attestation: bytes, signature: bytes
    ) -> Iterator[pb.MaskedChunk]:
        data = masked.astype("<u4")
        step = self._chunk_words
        for start in range(0, data.shape[0], step):
            end = min(start + step, data.shape[0])
            chunk = pb.MaskedChunk(
                federation=self.federation,
                round=round_,
                silo=self.silo,
                offset=start,
                values=data[start:end].tobytes(),
                last=end == data.shape[0],
            )
            if start == 0:
                chunk.attestation = attestation
                chunk.attestation_signature = signature
            yield chunk
