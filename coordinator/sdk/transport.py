"""The silo SDK's one seam to the coordinator: channel, retries, error mapping, long polls, downloads, witness.

Both silo kinds (:class:`coordinator.sdk.masking.Silo`, :class:`coordinator.sdk.paillier.PaillierSilo`) hold a
:class:`Transport` and make every call through it, each with its own service stub built on the transport's
channel (:meth:`Transport.stub`). Only this module turns a ``grpc.RpcError`` into an SDK exception, and it does
so with the one two-way table of :mod:`coordinator.wire.errors`, so callers catch the
:class:`coordinator.errors.CoordinatorError` tree and never a gRPC type.

Notes:
    - Retries: UNAVAILABLE and RESOURCE_EXHAUSTED are transient (the coordinator restarts, or sheds load);
      they are retried with exponential backoff and jitter (:class:`RetryPolicy`). Every other failure is
      final.
    - Replicas and restarts: a silo may be given several coordinator replicas (:mod:`coordinator.sdk.replicas`).
      UNAVAILABLE from one (a standby does not bind its port until it leads, a killed leader answers nothing)
      moves the next attempt to the next replica, with a one-line warning. Once the federation has answered
      this silo, UNAVAILABLE is retried for :attr:`RetryPolicy.reconnect_seconds` rather than ``attempts``
      tries, so a coordinator restart or a standby's takeover does not end the silo's part; before any answer
      the ``attempts`` bound keeps "the coordinator is not running" a matter of seconds. The round loop
      then finds its place as after any interruption: the interrupted round is refused as aborted and the
      silo joins the next one. A submission retried after a lost answer may be refused with ALREADY_EXISTS because the first
      attempt did reach the coordinator: after a retry that counts as delivered, on the first attempt it is a
      real duplicate and raises :class:`~coordinator.errors.DuplicateSubmission`.
    - Long polls (:meth:`Transport.poll`): the coordinator answers a "Get" call when the stage closes, or with
      DEADLINE_EXCEEDED when the wait the silo asked for runs out; the silo then asks again, until well past
      the stage's own deadline (a coordinator that never closes a stage must not hold a silo forever).
    - Model download: the round's model is accepted only if its SHA-256 equals the hash the round announced
      (the hash every silo binds into its session), so a coordinator cannot train silos on a model other than
      the one it committed to.
    - Witness: with a pinned audit key the transport keeps an :class:`audits.witness.CheckpointWitness` and
      accepts a new signed checkpoint only with a valid RFC 9162 consistency proof from the last one it
      accepted (RFC 9162 section 8.1.4, the silos as witnesses). It then proves, by inclusion proofs, that
      every privacy attestation this silo sent is in the accepted log (completeness), publishes its latest
      accepted checkpoint signed with its roster key, and checks its peers' statements for a fork
      (:meth:`Transport.exchange_statements`; statements withheld for two rounds are warned and recorded).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audits.checkpoint import SignedCheckpoint, parse_checkpoint
from audits.errors import VerificationError
from audits.merkle import verify_consistency
from audits.witness import (
    CheckpointWitness,
    WitnessStatement,
    check_fork,
    sign_statement,
    statement_payload,
    verify_statement,
)
from coordinator.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INSECURE_SILO_HEADER,
    TlsFiles,
    chunk_words,
    ledger_origin,
    model_hash,
)
from coordinator.errors import AuditFailure, CoordinatorError, InvalidInput, Unavailable
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.sdk.replicas import ReplicaChannel, replica_addresses
from coordinator.wire.errors import from_rpc_error

__all__ = ["POLL_SECONDS", "RetryPolicy", "Transport"]

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 20.0
"""How long one long-poll call asks the coordinator to block (the server caps it too)."""

ROUND_WAIT_SECONDS: Final = 3600.0
"""How long :meth:`Transport.poll` waits for a round to open when the call has no stage deadline."""

POLL_MARGIN_SECONDS: Final = 300.0
"""How long past a stage's deadline a silo keeps asking before it calls the coordinator unavailable."""

_TRANSIENT: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

T = TypeVar("T")
Request = TypeVar("Request")
Response = TypeVar("Response")
Stub = TypeVar("Stub")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures (UNAVAILABLE, RESOURCE_EXHAUSTED).

    Args:
        attempts: calls made in all, the first included (at least 1).
        initial: seconds before the first retry, before jitter.
        maximum: the longest wait between two attempts, before jitter.
        reconnect_seconds: once the federation has answered this silo, how long (in backoff waits, before
            jitter) UNAVAILABLE keeps being retried, across the replicas, before the silo gives up: a
            coordinator restart or a standby's takeover must not end its federation. ``0``: ``attempts`` only.
    """

    attempts: int = 6
    initial: float = 0.2
    maximum: float = 5.0
    reconnect_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("need 0 <= initial <= maximum")
        if self.reconnect_seconds < 0:
            raise ValueError("reconnect_seconds must be >= 0")

    @property
    def reconnect_attempts(self) -> int:
        """Calls made in all on UNAVAILABLE once the federation has answered (at least ``attempts``).

        Counted from the waits without jitter (jitter averages out), so the bound never depends on a clock.
        A policy that never waits (``initial = 0``) keeps ``attempts``.
        """
        if self.initial <= 0:
            return self.attempts
        waited, retries = 0.0, 0
        while waited < self.reconnect_seconds:
            waited += min(self.initial * 2.0**retries, self.maximum)
            retries += 1
        return max(self.attempts, retries + 1)

    def delay(self, retry: int, *, jitter: float) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first), for ``jitter`` in ``[0, 1)``.

        The wait doubles from ``initial`` up to ``maximum`` and is then scaled by ``0.5 + jitter``, so silos
        that lost the coordinator at the same moment do not all come back at the same moment.
        """
        return min(self.initial * 2.0**retry, self.maximum) * (0.5 + jitter)


class Transport:
    """One silo's connection to the coordinator: every call a silo makes goes through here.

    Args:
        address: the coordinator's ``host:port``, or the replicas' (tried in order, failed over in turn).
        federation: federation id (set on the requests this transport builds).
        silo: this silo's id (its certificate's common name; the insecure debug header otherwise).
        tls: the consortium CA, this silo's certificate and key (PEM). ``None`` only with
            ``insecure_debug_no_tls=True``.
        max_message_bytes: the largest gRPC message this silo sends or accepts; lowered to the coordinator's
            own limit by :meth:`negotiate`.
        retry: backoff for transient failures.
        audit_public_key: the coordinator's pinned audit key; with ``witness_path`` the transport witnesses
            the coordinator's ledger checkpoints (:meth:`witness_checkpoint`).
        witness_path: the SQLite file of the silo's witness and local ledger.
        insecure_debug_no_tls: plaintext channel, the caller named by a header anyone can set (debug only).
        clock: unix time, for poll deadlines (tests inject one).
        sleep: how to wait between retries (tests inject one).
        poll_seconds: how long one long-poll call asks the coordinator to block.

    Raises:
        ValueError: no TLS material and no explicit ``insecure_debug_no_tls``; no address, or one listed twice.
    """

    def __init__(
        self,
        *,
        address: str | Sequence[str],
        federation: str,
        silo: str,
        tls: TlsFiles | None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryPolicy | None = None,
        audit_public_key: bytes | None = None,
        witness_path: Path | None = None,
        insecure_debug_no_tls: bool = False,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self.federation: Final = federation
        self.silo: Final = silo
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._poll_seconds = poll_seconds
        self._max_message_bytes = max_message_bytes
        self._answered = False
        """Whether the federation has answered a call (from then on UNAVAILABLE means a restart)."""
        self._reconnections = 0
        self._warned = False  # a failover warning was logged in the current outage
        # gRPC's own reconnect backoff grows to 120 s and fails calls at once meanwhile; keep it within ours
        backoff_ms = max(100, int(self._retry.maximum * 1000))
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", max(100, int(self._retry.initial * 1000))),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
        open_channel: Callable[[str], grpc.Channel]
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            open_channel = functools.partial(
                grpc.secure_channel, credentials=credentials, options=options
            )
            self._metadata: tuple[tuple[str, str], ...] = ()
        elif insecure_debug_no_tls:
            open_channel = functools.partial(grpc.insecure_channel, options=options)
            self._metadata = ((INSECURE_SILO_HEADER, silo),)
        else:
            raise ValueError(
                "TLS material is required (insecure_debug_no_tls is for local debugging only)"
            )
        self._channel = ReplicaChannel(replica_addresses(address), open_channel)
        self._audit = pb_grpc.AuditStub(self._channel)
        self._witness: CheckpointWitness | None = None
        self._audit_key = audit_public_key
        self._witness_path = witness_path
        if audit_public_key is not None and witness_path is not None:
            witness_path.parent.mkdir(parents=True, exist_ok=True)
            self._witness = CheckpointWitness(
                witness_path, audit_public_key=audit_public_key, origin=ledger_origin(federation)
            )

    def __repr__(self) -> str:
        return f"Transport(silo={self.silo!r}, federation={self.federation!r})"

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every replica's ``host:port``, in the order they are tried."""
        return self._channel.addresses

    @property
    def address(self) -> str:
        """The replica calls go to now."""
        return self._channel.current

    @property
    def reconnections(self) -> int:
        """How often the federation answered again after being UNAVAILABLE (a restart, a failover)."""
        return self._reconnections

    # lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the channel (and the witness database)."""
        self._channel.close()
        if self._witness is not None:
            self._witness.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # message sizes -----------------------------------------------------------------------------------
    @property
    def max_message_bytes(self) -> int:
        """The largest message both sides accept (this silo's limit until :meth:`negotiate`)."""
        return self._max_message_bytes

    @property
    def chunk_words(self) -> int:
        """4-byte words per streamed chunk, so a chunk message stays below :attr:`max_message_bytes`."""
        return chunk_words(self._max_message_bytes)

    def negotiate(self, coordinator_max_message_bytes: int) -> None:
        """Size chunks below the smaller of this silo's limit and the coordinator's (announced in Join).

        Only ever lowers the limit: a coordinator cannot make a silo send or accept more than it agreed to.
        ``0`` (a coordinator that announces nothing) changes nothing.
        """
        if coordinator_max_message_bytes > 0:
            self._max_message_bytes = min(self._max_message_bytes, coordinator_max_message_bytes)

    # calls -------------------------------------------------------------------------------------------
    def stub(self, factory: Callable[[grpc.Channel], Stub]) -> Stub:
        """A service stub on this transport's channel (e.g. ``transport.stub(FederationStub)``).

        Call its methods through :meth:`call`, :meth:`read`, :meth:`submit` or :meth:`upload`, never directly:
        those add the caller's metadata, the retries and the error mapping.
        """
        return factory(self._channel)

    def stage_request(self, round_: int, wait: float) -> pb.StageRequest:
        """The request naming this silo's wait on a stage of ``round_`` (blocking at most ``wait`` seconds)."""
        return pb.StageRequest(
            federation=self.federation, round=round_, silo=self.silo, wait_seconds=wait
        )

    def call(
        self, method: grpc.UnaryUnaryMultiCallable[Request, Response], request: Request
    ) -> Response:
        """A unary call, retried on transient failures.

        Raises:
            CoordinatorError: the subclass the error table names for the final status.
        """
        return self._retrying(lambda: method(request, metadata=self._metadata))

    def read(
        self,
        method: grpc.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        collect: Callable[[Iterator[Response]], T],
    ) -> T:
        """A server-streaming call, consumed by ``collect``; a stream broken off is retried from the start.

        Raises:
            CoordinatorError: the subclass the error table names for the final status.
        """
        return self._retrying(lambda: collect(iter(method(request, metadata=self._metadata))))

    def submit(self, method: grpc.UnaryUnaryMultiCallable[Request, Any], request: Request) -> None:
        """A unary submission; ALREADY_EXISTS after a retry means an earlier attempt was delivered.

        Raises:
            DuplicateSubmission: ALREADY_EXISTS on the first attempt (this silo submitted twice).
            CoordinatorError: the subclass the error table names for the final status.
        """
        self._retrying(
            lambda: _discard(method(request, metadata=self._metadata)), delivered=_discard
        )

    def upload(
        self,
        method: grpc.StreamUnaryMultiCallable[Request, Any],
        messages: Callable[[], Iterator[Request]],
    ) -> None:
        """A client-streamed submission; each attempt streams a fresh ``messages()`` from its start.

        Raises:
            DuplicateSubmission: ALREADY_EXISTS on the first attempt.
            CoordinatorError: the subclass the error table names for the final status.
        """
        self._retrying(
            lambda: _discard(method(messages(), metadata=self._metadata)), delivered=_discard
        )

    def roster_versions(self, since: int) -> list[str]:
        """The roster versions the coordinator serves after version ``since`` (JSON texts, oldest first).

        The caller verifies them against its own pins: the coordinator can withhold a version, not forge one.
        """
        request = pb.RosterRequest(federation=self.federation, since=since)
        return list(self.call(self._audit.GetRoster, request).versions)

    def revocation_list(self) -> tuple[bytes, dict[str, bytes]]:
        """The CA-signed CRL the coordinator enforces (PEM; empty if it has none) and the members' certificates
        it saw (silo id -> PEM). The caller verifies both against its pinned CA."""
        request = pb.RevocationListRequest(federation=self.federation)
        answer = self.call(self._audit.GetRevocationList, request)
        return bytes(answer.crl), {k: bytes(v) for k, v in answer.certificates.items()}

    def poll(
        self,
        fetch: Callable[[float], T],
        *,
        deadline: float | None = None,
        pending: type[CoordinatorError] | None = None,
    ) -> T:
        """Long-poll: ``fetch(wait)`` until the coordinator answers instead of running out the wait.

        Args:
            fetch: makes one call through this transport (:meth:`call` or :meth:`read`) that blocks at most
                ``wait`` seconds on the coordinator.
            deadline: unix time the awaited stage closes at the latest; ``None`` while waiting for a round
                to open (then an hour from now).
            pending: an error that, like a wait that ran out, only means "not yet" (``GetRound`` answers
                NOT_FOUND when no round numbered ``after`` or later opened during the wait).

        Raises:
            Unavailable: still no answer a margin past ``deadline``.
            CoordinatorError: any other failure of ``fetch``, at once.
        """
        limit = (self._clock() + ROUND_WAIT_SECONDS if deadline is None else deadline) + (
            POLL_MARGIN_SECONDS
        )
        while True:
            try:
                return fetch(self._poll_seconds)
            except CoordinatorError as exc:
                if not (_wait_ran_out(exc) or (pending is not None and isinstance(exc, pending))):
                    raise
                if self._clock() > limit:
                    raise Unavailable("the coordinator never closed the stage") from exc

    def poll_stage(
        self,
        method: grpc.UnaryUnaryMultiCallable[pb.StageRequest, Response],
        round_: int,
        *,
        deadline: float,
    ) -> Response:
        """:meth:`poll` a unary stage result of ``round_`` (the stage closes by ``deadline``)."""
        return self.poll(
            lambda wait: self.call(method, self.stage_request(round_, wait)), deadline=deadline
        )

    def download_model(
        self,
        method: grpc.UnaryStreamMultiCallable[pb.DownloadModelRequest, pb.ModelChunk],
        round_: int,
        expected_hash: bytes,
    ) -> npt.NDArray[np.float32]:
        """Stream the global model ``round_`` starts from through ``method`` and check it against its hash.

        Both modes' services stream the same ``ModelChunk`` messages, so ``method`` is either one's
        ``DownloadModel``.

        Raises:
            InvalidInput: the model's SHA-256 is not ``expected_hash`` (the round's announced model hash).
        """
        request = pb.DownloadModelRequest(federation=self.federation, round=round_)
        weights = self.read(method, request, _join_model)
        if model_hash(weights) != expected_hash:
            raise InvalidInput("the downloaded model does not match the round's model hash")
        return weights

    # witness -----------------------------------------------------------------------------------------
    @property
    def witnessing(self) -> bool:
        """Whether this transport witnesses the coordinator's ledger (an audit key and a witness file)."""
        return self._witness is not None

    def check_history(self) -> None:
        """Before any round: refuse a coordinator whose audit log does not extend the one this silo witnessed.

        At join time that is what a new study under an old federation id looks like from a silo's state
        directory (or a coordinator that rewrote its log): either way the silo takes no part, and says so before
        it trains, leading with the benign cause. Nothing is accepted here (the checkpoint's signature is checked
        by :meth:`witness_checkpoint` after each round, whose refusal keeps saying "rewrote history").

        Raises:
            AuditFailure: the coordinator's checkpoint is not an extension of the last one this silo accepted.
        """
        witness = self._witness
        latest = None if witness is None else witness.latest()
        if latest is None:
            return
        checkpoint = self.call(
            self._audit.GetCheckpoint, pb.CheckpointRequest(federation=self.federation)
        )
        served = parse_checkpoint(checkpoint.note)
        extends = served.size >= latest.size
        if extends and served.size > latest.size:
            request = pb.ConsistencyProofRequest(
                federation=self.federation, old_size=latest.size, new_size=served.size
            )
            proof = [bytes(h) for h in self.call(self._audit.GetConsistencyProof, request).hashes]
            try:
                verify_consistency(latest.size, served.size, proof, latest.root, served.root)
            except VerificationError:
                extends = False
        elif extends:
            extends = served.root == latest.root
        if not extends:
            raise AuditFailure(
                _new_study(self.federation, self._witness_path, latest.size, served.size)
            )

    def witness_checkpoint(self) -> None:
        """Accept the coordinator's latest checkpoint only if it extends the last one this silo accepted.

        Does nothing without a pinned audit key.

        Raises:
            AuditFailure: the checkpoint's signature does not verify, or it is not consistent with what this
                silo accepted before (the coordinator rewrote history).
        """
        witness = self._witness
        if witness is None:
            return
        checkpoint = self.call(
            self._audit.GetCheckpoint, pb.CheckpointRequest(federation=self.federation)
        )
        latest = witness.latest()
        proof: list[bytes] = []
        if latest is not None and 0 < latest.size < checkpoint.size:
            request = pb.ConsistencyProofRequest(
                federation=self.federation, old_size=latest.size, new_size=checkpoint.size
            )
            proof = [bytes(h) for h in self.call(self._audit.GetConsistencyProof, request).hashes]
        try:
            accepted = witness.update(checkpoint.note, proof)
        except VerificationError as exc:
            log.error("audit checkpoint refused: %s", exc)
            raise AuditFailure(
                f"the coordinator's audit log failed this silo's check: {exc}"
            ) from exc
        self._check_completeness(witness, latest.size if latest is not None else 0, accepted)

    def _check_completeness(
        self, witness: CheckpointWitness, start: int, checkpoint: SignedCheckpoint
    ) -> None:
        """Prove by inclusion proofs that every attestation this silo sent is in the accepted checkpoint."""
        if not witness.unconfirmed():
            return
        entries: list[bytes] = []
        while start + len(entries) < checkpoint.size:
            request = pb.EntriesRequest(
                federation=self.federation, start=start + len(entries), end=checkpoint.size
            )
            page = [bytes(e) for e in self.call(self._audit.GetEntries, request).entries]
            if not page:
                break  # short: check_completeness names the gap
            entries.extend(page)

        def prove(index: int) -> list[bytes]:
            request = pb.InclusionProofRequest(
                federation=self.federation, index=index, size=checkpoint.size
            )
            return [bytes(h) for h in self.call(self._audit.GetInclusionProof, request).hashes]

        try:
            witness.check_completeness(start, entries, prove, checkpoint)
        except VerificationError as exc:
            log.error("audit completeness check failed: %s", exc)
            witness.record(
                "audit_failure",
                {"check": "completeness", "size": checkpoint.size, "reason": str(exc)},
            )
            raise AuditFailure(
                f"the coordinator's audit log failed this silo's completeness check: {exc}"
            ) from exc

    def exchange_statements(
        self,
        signing_key: Ed25519PrivateKey,
        roster_keys: Mapping[str, bytes],
        superseded: Mapping[str, bytes] | None = None,
    ) -> list[str]:
        """Publish this silo's latest accepted checkpoint, signed, and check every peer's against it.

        Each peer statement must be signed by the peer's pinned roster key and carry a checkpoint the audit
        key signed; the two checkpoints must both be prefixes of one log (a consistency proof from the
        smaller size to the larger, verified against both roots; equal sizes need equal roots).
        Does nothing without a witness or before a checkpoint was accepted.

        ``superseded`` maps peers whose key the newest pinned roster version rotated to their previous key: a
        statement signed by that key was published before the rotation took effect, so it is neither evidence
        nor a forgery; it is skipped (and counts as not fresh), never accepted.

        Returns:
            The peers whose statements the coordinator withheld for the last rounds (warned and recorded).

        Raises:
            AuditFailure: a forged peer statement, or a fork (recorded locally with the reason).
        """
        witness, key = self._witness, self._audit_key
        if witness is None or key is None:
            return []
        mine = witness.latest()
        if mine is None:
            return []
        own = sign_statement(
            signing_key, federation=self.federation, silo=self.silo, note=mine.text
        )
        self.submit(
            self._audit.PublishStatement,
            pb.WitnessStatement(
                federation=own.federation, silo=own.silo, note=own.note, signature=own.signature
            ),
        )
        witness.record("statement", {"size": mine.size, "text": own.dumps()})
        served = self.call(
            self._audit.GetStatements, pb.StatementsRequest(federation=self.federation)
        )
        origin = ledger_origin(self.federation)
        sizes: dict[str, int] = {}
        for message in served.statements:
            peer = message.silo
            if peer == self.silo or peer not in roster_keys:
                continue
            statement = WitnessStatement(
                message.federation, peer, message.note, bytes(message.signature)
            )
            try:
                theirs = verify_statement(
                    statement,
                    roster_keys[peer],
                    federation=self.federation,
                    audit_public_key=key,
                    origin=origin,
                )
                proof: list[bytes] | None = None
                small, large = sorted((mine.size, theirs.size))
                if 0 < small < large:
                    request = pb.ConsistencyProofRequest(
                        federation=self.federation, old_size=small, new_size=large
                    )
                    try:
                        answer = self.call(self._audit.GetConsistencyProof, request)
                        proof = [bytes(h) for h in answer.hashes]
                    except InvalidInput:
                        proof = None  # the coordinator cannot prove it: check_fork says fork
                check_fork(mine, theirs, proof)
            except VerificationError as exc:
                if _signed_by(statement, (superseded or {}).get(peer)):
                    log.info(
                        "witness statement of %s is signed by its rotated-away roster key; skipped",
                        peer,
                    )
                    continue
                log.error("witness statement of %s failed this silo's check: %s", peer, exc)
                witness.record(
                    "audit_failure",
                    {"check": "statements", "peer": peer, "size": mine.size, "reason": str(exc)},
                )
                raise AuditFailure(
                    f"the coordinator's audit log failed this silo's fork check against {peer}: {exc}"
                ) from exc
            sizes[peer] = theirs.size
        withheld = witness.note_peers(sizes, [s for s in roster_keys if s != self.silo])
        if withheld:
            log.warning(
                "no fresh witness statement from %s for the last rounds: the coordinator may be "
                "withholding them",
                ", ".join(withheld),
            )
        return withheld

    def record(self, kind: str, body: Mapping[str, Any]) -> None:
        """Append a fact (what this silo sent or spent) to the local ledger; nothing without a witness."""
        if self._witness is not None:
            self._witness.record(kind, body)

    # plumbing ----------------------------------------------------------------------------------------
    def _retrying(self, attempt: Callable[[], T], *, delivered: Callable[[], T] | None = None) -> T:
        """``attempt()`` with backoff on transient codes and the one error mapping.

        ``delivered`` marks a submission: ALREADY_EXISTS after a retry returns ``delivered()`` instead of
        raising, because the attempt whose answer was lost did reach the coordinator.

        UNAVAILABLE moves the next attempt to the next replica (module Notes); once the federation has answered,
        it is retried :attr:`RetryPolicy.reconnect_attempts` times instead of ``attempts``.
        """
        number, lost = 0, False
        while True:
            address = self._channel.current
            try:
                answer = attempt()
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                if code not in _TRANSIENT:
                    self._reconnected(lost)  # the federation answered, if only with a refusal
                if delivered is not None and number > 0 and code == grpc.StatusCode.ALREADY_EXISTS:
                    return delivered()
                unavailable = code == grpc.StatusCode.UNAVAILABLE
                limit = (
                    self._retry.reconnect_attempts
                    if unavailable and self._answered
                    else self._retry.attempts
                )
                if code not in _TRANSIENT or number + 1 >= limit:
                    raise from_rpc_error(exc) from exc
                if unavailable:
                    lost = lost or self._answered
                    self._fail_over(address)
                # jitter only spreads retries in time; it needs no cryptographic randomness
                self._sleep(self._retry.delay(number, jitter=random.random()))  # noqa: S311
                number += 1
                continue
            self._reconnected(lost)
            return answer

    def _reconnected(self, lost: bool) -> None:
        """The federation answered; ``lost``: after it was UNAVAILABLE to this silo (a restart, a failover)."""
        if lost:
            self._reconnections += 1
        self._answered = True
        self._warned = False

    def _fail_over(self, failed: str) -> None:
        """After UNAVAILABLE from ``failed``: the next attempt goes to the next replica.

        Warned once per outage: while a standby takes over, the silo may go round the replicas several times,
        and one warning line per retry would bury the one that matters; later switches are logged at INFO.
        """
        following = self._channel.advance(failed)
        if following is not None and following != failed:
            (log.info if self._warned else log.warning)(
                "coordinator replica %s is unavailable; silo %s fails over to %s",
                failed,
                self.silo,
                following,
            )
            self._warned = True


def _discard(_: object = None) -> None:
    """Drop a submission's empty ``Ack``."""


def _wait_ran_out(exc: CoordinatorError) -> bool:
    """Whether a long-poll call ended because the wait it asked for ran out (DEADLINE_EXCEEDED)."""
    cause = exc.__cause__
    return isinstance(cause, grpc.Call) and cause.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _join_model(chunks: Iterator[pb.ModelChunk]) -> npt.NDArray[np.float32]:
    """The streamed model in one float32 array, each chunk copied once into place as it arrives.

    The array is sized by the first chunk's ``total`` and each chunk lands at its ``offset``, so the silo holds
    the model and one chunk, not the chunks plus their join plus a converted copy (three vectors at 4M
    parameters). A chunk that does not fit, or a stream that leaves a gap, is refused; the hash check of the
    caller then covers the values.
    """
    model: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
    filled = 0
    for chunk in chunks:
        if filled == 0 and model.shape[0] == 0:
            try:  # the pages are only touched as chunks arrive; what arrives is bounded as before
                model = np.empty(chunk.total, dtype=np.float32)
            except MemoryError as exc:
                raise InvalidInput(
                    f"the coordinator announced a model of {chunk.total} parameters, more than this "
                    "silo can hold; check the federation's model size"
                ) from exc
        values = chunk.values
        if len(values) % 4:
            raise InvalidInput("a model chunk's length is not a multiple of 4 bytes")
        end = chunk.offset + len(values) // 4
        if chunk.offset != filled or end > model.shape[0] or chunk.total != model.shape[0]:
            raise InvalidInput("the model stream's chunks do not tile the model in order")
        model[filled:end] = np.frombuffer(values, dtype="<f4")
        filled = end
    if filled != model.shape[0]:
        raise InvalidInput("the model stream ended before the whole model arrived")
    return model


def _new_study(federation: str, witness_path: Path | None, seen: int, served: int) -> str:
    """The refusal of a log that does not extend what this silo witnessed: a new study first, then an attack."""
    where = f" ({witness_path.parent})" if witness_path is not None else ""
    return (
        f"this silo's state directory{where} holds the audit log of an earlier run of federation "
        f"{federation!r} ({seen} entries) and the coordinator's log ({served} entries) does not extend it: a "
        "new study needs a new federation id (or a fresh state_dir for this silo). If it is the same study, "
        "the coordinator rewrote its history: stop and tell the consortium"
    )


def _signed_by(statement: WitnessStatement, key: bytes | None) -> bool:
    """Whether ``key`` (a peer's superseded roster key) made the statement's roster signature."""
    if key is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            statement.signature,
            statement_payload(statement.federation, statement.silo, statement.note),
        )
    except (InvalidSignature, ValueError):
        return False
    return True
