"""The one round loop both silo kinds run; each aggregation mode plugs in only its own checks and stages.

A silo kind is a :class:`SiloClient` over a :class:`~coordinator.sdk.transport.Transport` and a
:class:`RoundMode`. The client joins (the pinned roster, then the mode's own pins), long-polls the next round,
stops when the federation has finished, skips a round already past its first stage, lets the mode check the
round against the silo's pins and policy (:meth:`RoundMode.accept`), downloads and hash-checks the model, lets
the mode do its offline work and run its stages (:class:`RoundStages`), waits for the result, witnesses the
audit checkpoint and yields a :class:`RoundReport`. The mode decides when, within its stages, the silo trains
and encodes its update: the loop hands it a ``train()`` to call once.

Notes:
    Train after admission (DESIGN 4.4): training spends record-level privacy budget, so a mode calls
    ``train()`` only once the round's cohort is fixed and includes this silo. Masking mode trains after the
    share-keys stage lists at least ``max(t, min_cohort)`` silos (and its silo-level DP plan's minimum
    contributors) including itself, so a coordinator that leaves the silo out of U1 or U2, or aborts the round
    before then, costs it nothing; Paillier mode trains before its collect stage, which is its first.

    When the training function returns a private update (anything with ``update`` and ``attestation(...)``,
    such as ``dp.training.RoundResult``), the loop binds its privacy attestation to the round's session id as
    soon as the mode knows it, and signs it with the silo's roster key; the mode sends it with the first chunk
    of its upload. A refusal (a check that failed: a :class:`secagg.SecAggError`, or the reason a mode
    returns) ends the silo's part in the round before it reveals anything more, and the report says
    ``refused: <the check>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Generic,
    Protocol,
    Required,
    Self,
    TypeAlias,
    TypedDict,
    TypeVar,
    runtime_checkable,
)

import grpc
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, RoundReport, RoundStatus, TlsFiles
from coordinator.config import SiloConfig, SiloPolicy
from coordinator.config.tls import check_tls
from coordinator.errors import (
    Aborted,
    ConfigError,
    InvalidInput,
    NotFound,
    PKIError,
    StageError,
    Unauthorized,
    Unavailable,
)
from coordinator.pki import load_ed25519_private, tls_key_pem
from coordinator.pki.enrol import PendingRotation
from coordinator.pki.governance import RosterVersion, RosterVersionPin
from coordinator.pki.held import HeldRevocations, server_certificate
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.sdk.transport import RetryPolicy, Transport
from dp.accounting import PrivacyAttestation
from secagg import Roster, RoundAborted, SecAggError
from secagg.hazmat.keys import RandomSource

__all__ = [
    "Attestation",
    "FederationCalls",
    "JoinAnswer",
    "Member",
    "PrivateUpdate",
    "RoundAnnouncement",
    "RoundContext",
    "RoundMode",
    "RoundReport",
    "RoundStages",
    "SiloClient",
    "SiloConnection",
    "TrainFn",
    "connection_from_config",
    "tls_from_config",
]

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT")
EncodedT = TypeVar("EncodedT")


# ----------------------------------------------------------------------------------------------------------------
# What the training function sees and what a round reports


@dataclass(frozen=True)
class RoundContext(Generic[ConfigT]):
    """What the training function receives: the round, its global model and the mode's round parameters."""

    round: int
    weights: npt.NDArray[np.float32] = field(repr=False)
    config: ConfigT


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


TrainFn: TypeAlias = Callable[[RoundContext[ConfigT]], "npt.ArrayLike | PrivateUpdate"]


@dataclass(frozen=True)
class Attestation:
    """A signed privacy attestation as it travels with an upload's first chunk (both empty without one).

    Attributes:
        payload: the attested facts as JSON with sorted keys.
        signature: Ed25519 by the silo's roster key over the attestation's signing payload.
    """

    payload: bytes = b""
    signature: bytes = field(default=b"", repr=False)

    def sent(self, **facts: Any) -> dict[str, Any]:
        """The silo's local record of an upload: ``facts`` and, when there is one, this attestation.

        The witness later proves that every attestation recorded here is in the coordinator's log
        (``audits.CheckpointWitness``, completeness), so both modes record them the same way.
        """
        if self.payload:
            facts["attestation"] = json.loads(self.payload)
            facts["attestation_signature"] = self.signature.hex()
        return facts


# ----------------------------------------------------------------------------------------------------------------
# Who the silo is


class SiloConnection(TypedDict, total=False):
    """The constructor arguments both silo kinds share (declared once; the kinds add their own).

    Keys:
        address: the coordinator's ``host:port``, or a list of the replicas' behind one federation (tried in
            order; the silo fails over to the next on UNAVAILABLE and reconnects by itself after a restart).
        federation: federation id.
        silo: this silo's id on the roster (and its certificate's common name).
        signing_key: the silo's Ed25519 roster key.
        roster: the pinned roster; verified against ``consortium_key``.
        consortium_key: the pinned consortium public key (32 bytes).
        policy: the silo's own minimum requirements (default :class:`~coordinator.config.SiloPolicy`).
        retry: backoff for transient failures.
        rng: randomness for the protocol; ``os.urandom`` unless a test injects one.
        max_message_bytes: the largest gRPC message this silo sends or accepts; chunks stay below the smaller
            of this and the coordinator's own limit (announced in ``Join``).
        audit_public_key: the coordinator's pinned audit key; the silo then witnesses the coordinator's
            ledger checkpoints after every round.
        roster_pin: the pinned roster version and governance (``[governance]``): when the coordinator announces
            another roster, the silo fetches the versions it serves, accepts them only if K pinned governors
            signed each and each extends the pinned one, pins the newest and runs the next round on it.
            ``None``: the roster is fixed, and another one is refused.
        revocations: the revocation list this silo holds (:class:`~coordinator.pki.held.HeldRevocations`):
            before every round the silo fetches the coordinator's, keeps it only if its pinned CA signed it and it
            is not older, then refuses a coordinator whose certificate it revokes and does not mask with a
            revoked peer. ``None``: no check of its own (the coordinator still enforces its list).
        next_signing_key: a rotated roster key not yet in force (``secagg pki request --rotate``): the silo keeps
            signing with ``signing_key`` until a roster version it accepts lists this key for it, and from that
            version's first round on signs with this one.
        rotation: the files of that rotation (:class:`~coordinator.pki.enrol.PendingRotation`), completed on disk
            when the switch happens so a restart signs with the new key; ``None`` for a key held in memory only.
    """

    address: Required[str | Sequence[str]]
    federation: Required[str]
    silo: Required[str]
    signing_key: Required[Ed25519PrivateKey]
    roster: Required[Roster]
    consortium_key: Required[bytes]
    policy: SiloPolicy | None
    retry: RetryPolicy | None
    rng: RandomSource
    max_message_bytes: int
    audit_public_key: bytes | None
    roster_pin: RosterVersionPin | None
    revocations: HeldRevocations | None
    next_signing_key: Ed25519PrivateKey | None
    rotation: PendingRotation | None


def connection_from_config(config: SiloConfig) -> SiloConnection:
    """The shared constructor arguments a silo's TOML configuration (``secagg silo --config``) describes.

    Raises:
        ConfigError: a key rotation in progress whose files are incomplete.
    """
    roster = config.load_roster()
    try:
        rotation = PendingRotation.at(config.signing_key)
        if rotation is not None and roster.members.get(config.silo) == rotation.public_key:
            rotation.complete()  # the version listing the new key was pinned, the rename was interrupted
            rotation = None
    except PKIError as exc:
        raise ConfigError(f"signing_key: {exc}") from exc
    return SiloConnection(
        address=config.coordinators,
        federation=config.federation,
        silo=config.silo,
        signing_key=load_ed25519_private(config.signing_key),
        next_signing_key=load_ed25519_private(rotation.next_key) if rotation else None,
        rotation=rotation,
        roster=roster,
        consortium_key=config.consortium_public_key,
        policy=config.policy,
        max_message_bytes=config.max_message_bytes,
        audit_public_key=config.audit_public_key,
        roster_pin=roster_pin_from_config(config),
        revocations=revocations_from_config(config),
    )


def revocations_from_config(config: SiloConfig) -> HeldRevocations | None:
    """The revocation list a silo with ``[tls]`` holds, in ``state_dir/revocations.pem`` (``None`` without TLS).

    Raises:
        ConfigError: the held list does not verify under the CA in ``[tls] ca``.
    """
    if config.tls is None:
        return None
    try:
        return HeldRevocations(config.state_dir / "revocations.pem", config.tls.ca.read_bytes())
    except PKIError as exc:
        raise ConfigError(f"state_dir: {exc}; delete it to fetch the coordinator's again") from exc


def roster_pin_from_config(config: SiloConfig) -> RosterVersionPin | None:
    """The roster pin ``[governance]`` describes, or ``None``.

    Raises:
        ConfigError: the pinned version does not load, or its roster is not the ``roster`` file's.
    """
    g = config.governance
    if g is None:
        return None
    try:
        pin = RosterVersionPin.load(
            version_file=g.roster_version,
            governance_file=g.file,
            roster_file=config.roster,
            consortium_key=config.consortium_public_key,
        )
        pinned = pin.pinned()
    except PKIError as exc:
        raise ConfigError(f"governance: {exc}") from exc
    if pinned.roster.fingerprint() != config.load_roster().fingerprint():
        raise ConfigError(
            f"governance: the roster of {g.roster_version} is not the `roster` file's; install the roster "
            "version with `secagg pki install`, which writes both"
        )
    return pin


def tls_from_config(config: SiloConfig) -> TlsFiles | None:
    """The PEM files a silo configuration names, checked and read; ``None`` when it names none.

    Raises:
        ConfigError: a certificate expired or not yet valid, a key not the certificate's, a certificate the CA
            did not issue (:func:`coordinator.config.tls.check_tls`): said here rather than as a failed handshake.
    """
    if config.tls is None:
        return None
    key = tls_key_pem(config.tls.key)
    check_tls(config.tls, role=f"silo {config.silo}", key_pem=key)
    return TlsFiles(config.tls.ca.read_bytes(), config.tls.cert.read_bytes(), key)


@dataclass(frozen=True)
class Member:
    """This silo as a mode sees it: its id, roster key, pinned roster, policy and randomness."""

    federation: str
    silo: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    roster: Roster = field(repr=False)
    policy: SiloPolicy
    rng: RandomSource = field(repr=False)
    peer_problem: Callable[[str], str | None] = field(repr=False, default=lambda silo: None)
    """Why this silo must not mask with a peer (its certificate is revoked), or ``None``."""


# ----------------------------------------------------------------------------------------------------------------
# What a mode plugs in


class JoinAnswer(Protocol):
    """What both modes' Join answers carry."""

    @property
    def roster_fingerprint(self) -> str:
        """SHA-256 hex of the roster the coordinator serves."""
        ...

    @property
    def max_message_bytes(self) -> int:
        """The largest message the coordinator accepts (0: not announced)."""
        ...

    @property
    def current_round(self) -> int:
        """The round in progress or about to open (the number of rounds that have opened)."""
        ...


class RoundAnnouncement(Protocol):
    """What both modes' round announcements (``GetRound`` answers) carry."""

    @property
    def round(self) -> int:
        """The round's number."""
        ...

    @property
    def state(self) -> int:
        """A ``RoundState`` value."""
        ...

    @property
    def stage(self) -> str:
        """The round's current stage."""
        ...

    @property
    def model_hash(self) -> bytes:
        """SHA-256 of the global model the round starts from."""
        ...

    @property
    def stage_deadline_unix(self) -> float:
        """When the current stage closes at the latest."""
        ...


JoinT = TypeVar("JoinT", bound=JoinAnswer)
InfoT = TypeVar("InfoT", bound=RoundAnnouncement)


class FederationCalls(Protocol[JoinT, InfoT]):
    """The calls every mode's federation service has (its generated stub has these and its own stages)."""

    @property
    def Join(self) -> grpc.UnaryUnaryMultiCallable[pb.JoinRequest, JoinT]:  # noqa: N802
        """Membership and the federation's parameters."""
        ...

    @property
    def GetRound(self) -> grpc.UnaryUnaryMultiCallable[pb.GetRoundRequest, InfoT]:  # noqa: N802
        """The first round numbered ``after`` or later (long poll)."""
        ...

    @property
    def DownloadModel(  # noqa: N802
        self,
    ) -> grpc.UnaryStreamMultiCallable[pb.DownloadModelRequest, pb.ModelChunk]:
        """The global model a round starts from, in chunks."""
        ...

    @property
    def GetResult(self) -> grpc.UnaryUnaryMultiCallable[pb.StageRequest, pb.RoundResult]:  # noqa: N802
        """A round's outcome (long poll)."""
        ...


class RoundStages(ABC, Generic[ConfigT, EncodedT]):
    """One round a mode takes part in: the parameters training sees, the mode's encoding and its stages.

    Args:
        config: the round's parameters, as the training function receives them.
    """

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    def prepare(self) -> None:
        """Offline work that does not depend on the update, done before the stages (default: none)."""
        return None

    @abstractmethod
    def encode(self, update: npt.NDArray[np.float64]) -> EncodedT:
        """The trained update (float, flat) as the integers this mode aggregates."""

    @abstractmethod
    def run(
        self, train: Callable[[], EncodedT], attest: Callable[[str], Attestation]
    ) -> str | None:
        """Take part in the mode's stages, up to (not including) the round's result.

        Args:
            train: trains on the round's model and returns the update as :meth:`encode` made it. Call it
                once, at the first point where this silo is admitted to the round's cohort (module Notes).
            attest: ``attest(session_id)`` is this silo's signed privacy attestation bound to the round's
                session (empty when training returned a bare update); only after ``train()``.

        Returns:
            ``None`` once this silo's part is done; the reason if it refused to go on (then it sent nothing
            more than what the refusal needs).

        Raises:
            Aborted, RoundAborted, StageError: the round ended without this silo.
            SecAggError: a protocol check failed: the loop reports the round as refused.
        """


class RoundMode(ABC, Generic[JoinT, InfoT, ConfigT]):
    """An aggregation mode as the shared loop drives it (one per silo, holding the mode's pinned material).

    Args:
        transport: the silo's transport; every call of the mode goes through it.
        member: this silo (id, roster key, pinned roster, policy, randomness).
        service: the mode's service stub on ``transport``.
    """

    first_stage: ClassVar[str]
    """The stage a round must still be in for a silo to take part (a silo never joins a round late)."""

    def __init__(
        self, transport: Transport, member: Member, service: FederationCalls[JoinT, InfoT]
    ) -> None:
        self.transport = transport
        self.member = member
        self.service = service

    def check_join(self, answer: JoinT) -> None:
        """Refuse a Join answer that contradicts the mode's pinned material (default: nothing to pin).

        Raises:
            Unauthorized: the coordinator serves something other than what this silo pinned.
        """
        return None

    @abstractmethod
    def accept(self, info: InfoT) -> RoundStages[ConfigT, Any]:
        """The round ``info`` announces, checked against this silo's pins and policy.

        Raises:
            Unauthorized, InvalidInput: the round is weaker than this silo accepts; it takes no part.
        """

    def close(self) -> None:
        """Release what the mode keeps open (default: nothing)."""
        return None


# ----------------------------------------------------------------------------------------------------------------
# The loop


class SiloClient(Generic[JoinT, InfoT, ConfigT]):
    """One silo's connection to a federation, whatever its aggregation mode.

    Args:
        connection: the shared arguments (:class:`SiloConnection`).
        tls: the consortium CA, this silo's certificate and key (PEM); ``None`` only with
            ``insecure_debug_no_tls``.
        witness_path: the SQLite file of the silo's checkpoint witness and local ledger.
        mode: builds the mode on the silo's transport.
        insecure_debug_no_tls: plaintext channel for local debugging.

    Raises:
        secagg.errors.InvalidSignature: the pinned roster is not signed by the pinned consortium key.
        Unauthorized: the pinned roster is for another federation.
        ValueError: no TLS material and no explicit ``insecure_debug_no_tls``.
    """

    def __init__(
        self,
        connection: SiloConnection,
        *,
        tls: TlsFiles | None,
        witness_path: Path | None,
        mode: Callable[[Transport, Member], RoundMode[JoinT, InfoT, ConfigT]],
        insecure_debug_no_tls: bool = False,
    ) -> None:
        roster, federation = connection["roster"], connection["federation"]
        roster.verify(connection["consortium_key"])
        if roster.federation != federation:
            raise Unauthorized(f"the pinned roster is for {roster.federation}, not {federation}")
        self.silo = connection["silo"]
        self.federation = federation
        self._roster = roster
        self._pin = connection.get("roster_pin")
        if self._pin is not None and self._pin.pinned().roster != roster:
            raise Unauthorized(
                "the pinned roster is not the roster of the pinned roster version: install the version again"
            )
        self._held = connection.get("revocations")
        self._peer_certificates: dict[str, bytes] = {}
        member = Member(
            federation=federation,
            silo=self.silo,
            signing_key=connection["signing_key"],
            roster=roster,
            policy=connection.get("policy") or SiloPolicy(),
            rng=connection.get("rng", os.urandom),
            peer_problem=self._peer_problem,
        )
        self._key = member.signing_key
        self._next_key = connection.get("next_signing_key")
        self._superseded: dict[str, bytes] = {}
        """Peers' roster keys the newest accepted version rotated away (their statements in flight are skipped)."""
        self._rotation = connection.get("rotation")
        self._latest: tuple[int, bytes, npt.NDArray[np.float32]] | None = None
        """(round, hash, model) of the newest global model this silo has seen a round produce."""
        self._transport = Transport(
            address=connection["address"],
            federation=federation,
            silo=self.silo,
            tls=tls,
            max_message_bytes=connection.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            retry=connection.get("retry"),
            audit_public_key=connection.get("audit_public_key"),
            witness_path=witness_path,
            insecure_debug_no_tls=insecure_debug_no_tls,
        )
        try:
            self._mode = mode(self._transport, member)
        except BaseException:
            self._transport.close()
            raise

    @property
    def address(self) -> str:
        """The coordinator replica this silo talks to now (one of :attr:`addresses`)."""
        return self._transport.address

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every coordinator replica this silo was given, in the order it tries them."""
        return self._transport.addresses

    def __repr__(self) -> str:
        return f"{type(self).__name__}(silo={self.silo!r}, federation={self.federation!r})"

    def close(self) -> None:
        """Close the channel, the witness and whatever the mode keeps open."""
        try:
            self._transport.close()
        finally:
            self._mode.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # public API ----------------------------------------------------------------------------------------
    def join(self) -> JoinT:
        """Check membership, and that the coordinator serves the roster (and mode material) this silo pinned.

        Raises:
            Unauthorized: not a member, or the coordinator serves something other than what is pinned.
        """
        service = self._mode.service
        request = pb.JoinRequest(federation=self.federation, silo=self.silo)
        try:
            answer = self._transport.call(service.Join, request)
        except Unavailable as exc:
            raise Unavailable(_unreachable(" or ".join(self.addresses), str(exc))) from exc
        except Unauthorized as exc:
            raise Unauthorized(
                f"the coordinator at {self.address} refused silo {self.silo!r} of federation "
                f"{self.federation!r}: {exc}"
            ) from exc
        self._transport.check_history()
        if answer.roster_fingerprint != self._roster.fingerprint():
            self.update_roster()
        if answer.roster_fingerprint != self._roster.fingerprint():
            raise Unauthorized("the coordinator serves a different roster than the pinned one")
        self._mode.check_join(answer)
        self._transport.negotiate(answer.max_message_bytes)
        return answer

    @property
    def roster(self) -> Roster:
        """The roster this silo runs its next round on (the pinned one, or the newest it accepted)."""
        return self._roster

    def update_roster(self) -> bool:
        """Fetch the roster versions the coordinator serves after the pinned one; accept and pin them if they verify.

        Each version must carry K valid signatures of this silo's pinned governors and extend the one before it,
        from the pinned version (:meth:`coordinator.pki.governance.RosterVersionPin.accept`); the newest is then
        written to the pinned files and the next round runs on its roster. Without ``roster_pin`` nothing is
        fetched.

        Returns:
            Whether a new version was pinned.

        Raises:
            Unauthorized: a version is refused (one signature only, a non-governor's, not extending the pinned
                one) or removes this silo; the pinned version stays as it was.
        """
        pin = self._pin
        if pin is None:
            return False
        try:
            pinned = pin.pinned()
            chain = [
                RosterVersion.loads(t) for t in self._transport.roster_versions(pinned.version)
            ]
            held = [self._key] + ([self._next_key] if self._next_key is not None else [])
            newest = pin.accept(
                chain, member=self.silo, keys=[k.public_key().public_bytes_raw() for k in held]
            )
        except PKIError as exc:
            raise Unauthorized(
                f"silo {self.silo!r} refused the roster versions the coordinator serves: {exc}"
            ) from exc
        if newest.digest() == pinned.digest():
            return False
        self._superseded = {
            silo: key
            for silo, key in self._roster.members.items()
            if newest.roster.members.get(silo, key) != key
        }
        self._roster = newest.roster
        self._mode.member = dataclasses.replace(self._mode.member, roster=newest.roster)
        next_key = self._next_key
        if (
            next_key is not None
            and newest.roster.members[self.silo] == next_key.public_key().public_bytes_raw()
        ):
            self._switch_key(next_key, newest.version)
        log.info(
            "silo %s pinned roster version %d (%d silos)",
            self.silo,
            newest.version,
            len(newest.roster.members),
        )
        return True

    def _switch_key(self, key: Ed25519PrivateKey, version: int) -> None:
        """Sign with the rotated roster ``key`` from now on: roster ``version`` (just pinned) lists it.

        The coordinator adopted that version at the open of the round this silo is about to take part in, and
        verifies that round's signatures under the same version, so both sides switch at one round boundary.

        Raises:
            Unauthorized: the new key could not be made the live one on disk (the roster already lists it).
        """
        self._key, self._next_key = key, None
        self._mode.member = dataclasses.replace(self._mode.member, signing_key=key)
        rotation, self._rotation = self._rotation, None
        if rotation is not None:
            try:
                rotation.complete()
            except PKIError as exc:
                raise Unauthorized(f"silo {self.silo!r}: {exc}") from exc
        log.info(
            "silo %s signs with its rotated roster key from roster version %d", self.silo, version
        )

    def check_revocations(self) -> None:
        """Fetch the coordinator's revocation list and the members' certificates; refuse a revoked coordinator.

        The list is kept only if the pinned CA signed it and it is not older than the held one; a refused list is
        logged and the held one stays in force. While the held list revokes anything, the coordinator's own
        certificate is read (TLS 1.3 handshake under the pinned CA) and checked against it.

        Raises:
            Unauthorized: the coordinator's certificate is revoked, or cannot be read while a list is in force.
        """
        held = self._held
        if held is None:
            return
        crl, certificates = self._transport.revocation_list()
        try:
            if held.offer(crl):
                log.info(
                    "silo %s holds revocation list number %d (%d revoked)",
                    self.silo,
                    held.number,
                    len(held.serials),
                )
        except PKIError as exc:
            log.error("silo %s: %s", self.silo, exc)
        self._peer_certificates = certificates
        if not held.serials:
            return
        try:
            cert = server_certificate(self.address, held.ca_pem)
        except PKIError as exc:
            raise Unauthorized(f"{exc}; a revocation list is in force, so this silo stops") from exc
        if held.revokes(cert):
            raise Unauthorized(
                f"the certificate of the coordinator at {self.address} (serial {cert.serial_number:x}) is revoked "
                f"by CRL number {held.number}; this silo stops: ask the consortium for the new coordinator address"
            )

    def _peer_problem(self, silo: str) -> str | None:
        held = self._held
        if held is None or silo == self.silo:
            return None
        return held.peer_problem(self.federation, silo, self._peer_certificates.get(silo))

    def witness_checkpoint(self) -> None:
        """Accept the coordinator's latest checkpoint only if it extends the last one this silo accepted.

        Raises:
            AuditFailure: the checkpoint's signature does not verify, or it is not consistent with what this
                silo accepted before (the coordinator rewrote history), or an attestation this silo sent is
                missing from it, or a peer's signed statement shows a fork.
        """
        self._transport.witness_checkpoint()
        try:
            self._transport.exchange_statements(self._key, self._roster.members, self._superseded)
        except InvalidInput:
            # the coordinator adopted the version rotating this silo's key since the round ended: it
            # verifies statements under the key in force, so take the version up and sign with the new key
            if self._next_key is None or not self.update_roster() or self._next_key is not None:
                raise
            self._transport.exchange_statements(self._key, self._roster.members, self._superseded)

    def final_model(self) -> npt.NDArray[np.float32]:
        """The latest global model: the one the last completed round produced (hash-checked).

        After :meth:`run` it is the model this silo saw last (no download); otherwise it is asked for: the
        newest completed round's result, then its model, checked against the hash the result names.

        Raises:
            NotFound: no round of the federation has completed yet.
        """
        if self._latest is not None:
            return self._latest[2].copy()
        joined = self.join()
        service = self._mode.service
        for round_ in range(int(joined.current_round) - 1, -1, -1):
            request = pb.StageRequest(federation=self.federation, round=round_, silo=self.silo)
            result = self._transport.call(service.GetResult, request)
            if result.state == pb.ROUND_STATE_COMPLETED:
                model = self.download_model(round_ + 1, bytes(result.new_model_hash))
                self._latest = (round_, bytes(result.new_model_hash), model)
                return model.copy()
        raise NotFound(f"no round of federation {self.federation} has completed yet")

    def _start_model(self, round_: int, expected_hash: bytes) -> npt.NDArray[np.float32]:
        """The model ``round_`` starts from: the last round's new model when it is that one, else downloaded."""
        if self._latest is not None and self._latest[1] == expected_hash:
            return self._latest[2].copy()
        return self.download_model(round_, expected_hash)

    def download_model(self, round_: int, expected_hash: bytes) -> npt.NDArray[np.float32]:
        """Stream the global model of a round and check its hash.

        Raises:
            InvalidInput: the model does not match ``expected_hash``.
        """
        service = self._mode.service
        return self._transport.download_model(service.DownloadModel, round_, expected_hash)

    def run(
        self, train: TrainFn[ConfigT], *, max_rounds: int | None = None
    ) -> Iterator[RoundReport]:
        """Take part in every round until the federation finishes; yields one report per round joined.

        Raises:
            Unauthorized, InvalidInput: the coordinator serves a round or model this silo refuses outright.
            PrivacyRefused: (an ``Unauthorized``) the round would go beyond a limit of the silo's own budget;
                it takes no part (masking mode: its silo-level ceiling or release cap).
            AuditFailure: the coordinator's audit log failed this silo's check.
            Unavailable: the coordinator stayed unreachable.
        """
        self.join()
        joined_at = self._transport.reconnections
        next_round, done = 0, 0
        while max_rounds is None or done < max_rounds:
            if self._transport.reconnections != joined_at:
                # a restarted or newly leading coordinator counts the silos that joined since it started
                # (round 0 opens on them): say so again, and check its log still extends what was witnessed
                log.info("silo %s reconnected to %s; joining again", self.silo, self.address)
                self.join()
                joined_at = self._transport.reconnections
            info = self._next_round(next_round)
            if info.state == pb.ROUND_STATE_FINISHED:
                return
            next_round = info.round + 1
            announced = getattr(info, "roster_fingerprint", "")
            if announced and announced != self._roster.fingerprint():
                # a governed federation adopted a new roster version at this round's open
                self.update_roster()
                if announced != self._roster.fingerprint():
                    raise Unauthorized(
                        f"round {info.round} runs on a roster this silo has no valid version of"
                    )
            if info.stage != self._mode.first_stage:
                log.info(
                    "round %d is past its %s stage; waiting for the next one",
                    info.round,
                    self._mode.first_stage,
                )
                continue
            self.check_revocations()
            stages = self._mode.accept(info)
            weights = self._start_model(info.round, bytes(info.model_hash))
            stages.prepare()
            began = time.perf_counter()
            report, private = self._take_part(info, stages, weights, train)
            _log_round(report, private, time.perf_counter() - began)
            self.witness_checkpoint()
            yield report
            done += 1

    # the loop's steps ------------------------------------------------------------------------------------
    def _next_round(self, after: int) -> InfoT:
        service = self._mode.service

        def fetch(wait: float) -> InfoT:
            request = pb.GetRoundRequest(federation=self.federation, after=after, wait_seconds=wait)
            return self._transport.call(service.GetRound, request)

        # the previous round may still be open after this silo's part in it ended early (a refusal, or a
        # cohort it was not admitted to): NOT_FOUND then means the next round has not opened yet
        return self._transport.poll(fetch, pending=NotFound)

    def _take_part(
        self,
        info: InfoT,
        stages: RoundStages[ConfigT, Any],
        weights: npt.NDArray[np.float32],
        train: TrainFn[ConfigT],
    ) -> tuple[RoundReport, PrivateUpdate | None]:
        """This silo's part in round ``info.round``; returns its report and the private update it trained, if any."""
        r = info.round
        trained: list[PrivateUpdate | None] = []  # filled by the one call of train_once

        def train_once() -> Any:
            if trained:
                raise RuntimeError(f"round {r}: a mode trains once per round")
            result = train(RoundContext(r, weights, stages.config))
            private = result if isinstance(result, PrivateUpdate) else None
            trained.append(private)
            update = np.asarray(private.update if private is not None else result, np.float64)
            return stages.encode(update)

        def attest(session_id: str) -> Attestation:
            private = trained[0] if trained else None
            if private is None:
                return Attestation()
            facts = private.attestation(
                federation=self.federation, round=r, session_id=session_id, silo=self.silo
            )
            payload = json.dumps(facts.to_dict(), sort_keys=True).encode("utf-8")
            return Attestation(payload, self._key.sign(facts.signing_payload()))

        try:
            refusal = stages.run(train_once, attest)
        except (Aborted, RoundAborted, StageError) as exc:
            return RoundReport(r, RoundStatus.ABORTED, reason=str(exc)), None
        except SecAggError as exc:
            refusal = str(exc)
        private = trained[0] if trained else None
        if refusal is not None:
            # a protocol check failed: the reason names it
            log.error("round %d refused: %s", r, refusal)
            return RoundReport(r, RoundStatus.ABORTED, reason=f"refused: {refusal}"), private
        result = self._transport.poll_stage(
            self._mode.service.GetResult, r, deadline=float(info.stage_deadline_unix)
        )
        completed = result.state == pb.ROUND_STATE_COMPLETED
        new_model = None
        if completed:
            # the new global model, hash-checked; the next round starts from it, so it is downloaded once
            new_model = self.download_model(r + 1, bytes(result.new_model_hash))
            self._latest = (r, bytes(result.new_model_hash), new_model)
        report = RoundReport(
            r,
            RoundStatus.COMPLETED if completed else RoundStatus.ABORTED,
            tuple(result.survivors),
            tuple(result.dropped),
            bytes(result.new_model_hash),
            result.reason,
            new_model,
        )
        return report, private


def _log_round(report: RoundReport, private: PrivateUpdate | None, seconds: float) -> None:
    """One event per round on every silo, hand-written or ``secagg silo``: counts and the silo's own epsilon.

    Never weights or updates: the event carries the outcome, the duration, how many silos survived or dropped, the
    reason of an abort and, when the update reports it (``dp.training``'s does), the epsilon spent so far.
    """
    epsilon = getattr(private, "epsilon_spent", None)
    log.info(
        "round %d %s",
        report.round,
        report.status.value,
        extra={
            "round": report.round,
            "outcome": report.status.value,
            "epsilon_spent": epsilon if isinstance(epsilon, float | int) else None,
            "duration_s": round(seconds, 3),
            "survivors": len(report.survivors),
            "dropped": len(report.dropped),
            "reason": report.reason or None,
        },
    )


_HANDSHAKE_WORDS = ("handshake", "certificate", "ssl", "tls")


def _unreachable(address: str, detail: str) -> str:
    """What a silo says when its Join got no answer: a failed TLS handshake, or nobody listening."""
    first = detail.split(";")[0].strip()
    if any(word in detail.lower() for word in _HANDSHAKE_WORDS):
        return (
            f"the TLS handshake with the coordinator at {address} failed ({first}): check [tls] in silo.toml "
            "(ca must be the consortium's CA, cert and key this silo's pair) and that the coordinator's "
            "certificate names this host"
        )
    return (
        f"cannot reach the coordinator at {address} ({first}): check that `secagg serve` is running there "
        "and that `coordinator` in silo.toml is its host:port"
    )
