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
    submission the server already holds (ALREADY_EXISTS after a retry) counts as delivered
    (:class:`~coordinator.sdk.transport.Transport`).

    When the training function returns a private update (anything with ``update`` and ``attestation(...)``,
    such as ``dp.training.RoundResult``), the SDK binds its privacy attestation to the round's session id, signs
    it with the silo's roster key and sends it with the first chunk of the masked upload. With a pinned audit
    key the silo also witnesses the coordinator's ledger: after every round it accepts the new signed checkpoint
    only with a valid RFC 9162 consistency proof from the last one it accepted, and keeps a local record of what
    it sent and spent (``audits.witness.CheckpointWitness``), so a coordinator that rewrites history is caught.
    The round loop itself is :class:`coordinator.sdk.loop.SiloClient`; this module adds the five stages.

    The silo trains only once it is admitted (DESIGN 4.4): after advertising its keys and sharing them, when the
    share-keys stage's inbox lists at least ``max(t, min_cohort)`` silos of U1 including itself (and, with
    silo-level DP, its plan's minimum contributors). A coordinator that excludes it earlier, or aborts the
    round, costs it no record-level budget; the masked-input stage's deadline covers the training.

    With silo-level DP the silo derives its own plan, binds its digest into the session, refuses a survivor set
    below the plan's minimum contributors before revealing any unmask share, and counts every release in its
    own tally in ``state_dir`` before the masked input leaves (:mod:`coordinator.sdk.silo_dp`, whose Notes give
    the reasons). A round its budget refuses raises :class:`~coordinator.errors.PrivacyRefused` from
    :meth:`Silo.run` before anything is trained or sent, like the other policy refusals of
    :meth:`~coordinator.config.SiloPolicy.check_round`; a check that fails mid-round is reported as a refused
    round (``RoundReport.reason`` starts with ``refused:``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias, Unpack

import numpy as np
import numpy.typing as npt

from coordinator.common import TlsFiles, chunk_words
from coordinator.config import SiloConfig, SiloPolicy
from coordinator.errors import InvalidInput, NotFound
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.sdk import loop
from coordinator.sdk.example import run_example_task
from coordinator.sdk.loop import (
    Attestation,
    Member,
    PrivateUpdate,
    RoundMode,
    RoundReport,
    RoundStages,
    SiloClient,
    SiloConnection,
    connection_from_config,
    tls_from_config,
)
from coordinator.sdk.silo_dp import SiloLevelRelease, SiloLevelTally, derive_plan
from coordinator.sdk.transport import RetryPolicy, Transport
from coordinator.silo_dp import encode_update
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    config_from_pb,
    share_from_pb,
    share_to_pb,
    unmask_request_from_pb,
    unmask_response_to_pb,
)
from coordinator.wire.silo_dp import plan_config_from_pb, plan_from_pb
from dp.distributed import DistributedDPPlan
from dp.errors import PrivacyError
from secagg import RoundAborted, RoundConfig, SecAggClient, Stage

__all__ = [
    "PrivateUpdate",
    "RetryPolicy",
    "RoundContext",
    "RoundReport",
    "Silo",
    "SiloPolicy",
    "run_example_silo",
]

RoundContext: TypeAlias = loop.RoundContext[RoundConfig]
"""What the training function receives in masking mode: the round, its global model and its parameters."""

MaskedVector = npt.NDArray[np.uint32]


class Silo(SiloClient[pb.JoinResponse, pb.RoundInfo, RoundConfig]):
    """One silo's connection to a masking-mode federation.

    Args:
        address: the coordinator's ``host:port``, or a list of the replicas' (failed over in turn).
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
        tally_path: the JSON file of the silo's own tally of silo-level releases
            (:class:`~coordinator.sdk.silo_dp.SiloLevelTally`); ``None`` keeps it in memory, which a policy
            with ``max_silo_level_epsilon`` or ``max_silo_level_releases`` does not allow.
        insecure_debug_no_tls: plaintext channel for local debugging (anyone can claim any silo).
        insecure_test_trust_announced_plan: tests only, to show what the silo-level DP guards stop: take the
            coordinator's silo-level DP plan as announced (checking only the policy's noise floor and the vector
            length, as the SDK did before it derived its own), and skip the plan's round limit and survivor
            minimum. The plan's digest is still bound into the session, and the policy's ceiling and cap
            still apply. Never in production.

    The arguments shared with Paillier mode are declared once, in :class:`~coordinator.sdk.loop.SiloConnection`.

    Raises:
        ValueError: a silo-level ceiling or cap in the policy without a ``tally_path``; see also
            :class:`~coordinator.sdk.loop.SiloClient`.
        StoreError: the tally file is unreadable or belongs to another federation or silo.
    """

    def __init__(
        self,
        *,
        tls: TlsFiles | None,
        witness_path: Path | None = None,
        tally_path: Path | None = None,
        insecure_debug_no_tls: bool = False,
        insecure_test_trust_announced_plan: bool = False,
        **connection: Unpack[SiloConnection],
    ) -> None:
        policy = connection.get("policy") or SiloPolicy()
        limited = (
            policy.max_silo_level_epsilon is not None or policy.max_silo_level_releases is not None
        )
        if limited and tally_path is None:
            raise ValueError("a silo-level epsilon ceiling or release cap needs a tally_path")
        tally = SiloLevelTally(
            tally_path, federation=connection["federation"], silo=connection["silo"]
        )
        super().__init__(
            connection,
            tls=tls,
            witness_path=witness_path,
            insecure_debug_no_tls=insecure_debug_no_tls,
            mode=functools.partial(
                _MaskingMode, tally=tally, trust_announced_plan=insecure_test_trust_announced_plan
            ),
        )
        self._tally = tally

    @property
    def silo_level_tally(self) -> SiloLevelTally:
        """This silo's own tally of the masked inputs it let out in the federation."""
        return self._tally

    @classmethod
    def from_config(cls, config: SiloConfig, **overrides: Any) -> Silo:
        """Connect as described by a silo's TOML configuration (``secagg silo --config``)."""
        arguments: dict[str, Any] = {
            **connection_from_config(config),
            "tls": tls_from_config(config),
            "witness_path": config.state_dir / "witness.sqlite",
            "tally_path": config.state_dir / "silo-level-tally.json",
            "insecure_debug_no_tls": config.insecure_debug_no_tls,
        }
        return cls(**(arguments | overrides))


class _MaskingMode(RoundMode[pb.JoinResponse, pb.RoundInfo, RoundConfig]):
    """Masking mode in the shared loop: rounds checked against the silo policy, then the five stages."""

    first_stage = Stage.ADVERTISE_KEYS.value

    def __init__(
        self,
        transport: Transport,
        member: Member,
        *,
        tally: SiloLevelTally,
        trust_announced_plan: bool,
    ) -> None:
        self.stub = transport.stub(pb_grpc.FederationStub)
        super().__init__(transport, member, self.stub)
        self.tally = tally
        self.trust_announced_plan = trust_announced_plan

    def accept(self, info: pb.RoundInfo) -> _MaskingRound:
        config = config_from_pb(info)
        policy = self.member.policy
        policy.check_round(config, self.member.roster)
        silo_dp = self._silo_dp_plan(info, config) if info.HasField("silo_dp") else None
        if silo_dp is None:
            policy.check_silo_dp(None)
        else:
            config = dataclasses.replace(config, silo_dp_hash=silo_dp.digest())
        self.tally.check(silo_dp, policy, plan_rounds=not self.trust_announced_plan)
        return _MaskingRound(config, silo_dp, self, deadline=float(info.stage_deadline_unix))

    def _silo_dp_plan(self, info: pb.RoundInfo, config: RoundConfig) -> DistributedDPPlan:
        """The plan this silo encodes with: its own derivation (or, in the test-only mode, the announced one)."""
        try:
            if self.trust_announced_plan:
                announced = plan_from_pb(info.silo_dp)
                self.member.policy.check_silo_dp(announced.noise_multiplier)
                if announced.padded_dimension != config.vector_length:
                    raise InvalidInput(
                        "the announced silo-level DP plan does not fit the round's vector"
                    )
                return announced
            return derive_plan(
                plan_config_from_pb(info.silo_dp),
                int(info.silo_dp.model_length),
                round_config=config,
                roster=self.member.roster,
                policy=self.member.policy,
                planned_rounds=int(info.rounds),
            )
        except (PrivacyError, ValueError) as exc:
            raise InvalidInput(f"the announced silo-level DP plan is invalid: {exc}") from exc


class _MaskingRound(RoundStages[RoundConfig, MaskedVector]):
    """One masking round: the first two stages, then training once admitted, then the last three."""

    def __init__(
        self,
        config: RoundConfig,
        silo_dp: DistributedDPPlan | None,
        mode: _MaskingMode,
        *,
        deadline: float,
    ) -> None:
        super().__init__(config)
        self._silo_dp = silo_dp
        self._mode = mode
        self._transport = mode.transport
        self._stub = mode.stub
        self._member = mode.member
        self._deadline = deadline

    def encode(self, update: npt.NDArray[np.float64]) -> MaskedVector:
        if self._silo_dp is not None:
            return encode_update(update, self._silo_dp, self.config)
        return self.config.quantizer.encode(update, self._member.rng)

    def _admitted(self, u2: Sequence[str]) -> None:
        """Raise ``RoundAborted`` unless U2 is a cohort this silo may train for.

        U2 is this silo and the U1 members whose shares decrypted for it (``SecAggClient.open_inbox``); the
        round needs ``max(t, min_cohort)`` of them (on a SecAgg+ graph, where U2 is this silo's neighbourhood,
        t), and with silo-level DP the plan's minimum contributors (the coordinator would otherwise have to
        abort after this silo spent its budget, or release a sum with too little noise).
        """
        needed = self.config.local_required  # on a SecAgg+ graph U2 is this silo's neighbourhood
        if self._silo_dp is not None and not self._mode.trust_announced_plan:
            needed = max(needed, self._silo_dp.config.min_contributors)
        if len(u2) < needed:
            raise RoundAborted(
                f"the share-keys stage admitted {len(u2)} silos; this silo trains only for at least {needed}"
            )

    def _masked_input_deadline(self) -> float:
        """When the masked-input stage closes at the latest, as the coordinator now announces it.

        The silo trains within that stage, so the later stages' long polls wait from its deadline, not from the
        first stage's (a lie here only changes how long this silo waits, never what it reveals).
        """
        t, r = self._transport, self.config.round
        request = pb.GetRoundRequest(federation=t.federation, after=r, wait_seconds=0.0)
        try:
            info = t.call(self._stub.GetRound, request)
        except NotFound:  # the round closed meanwhile: the stages that follow will say so
            return self._deadline
        if info.round != r or info.state != pb.ROUND_STATE_OPEN:
            return self._deadline
        return max(self._deadline, float(info.stage_deadline_unix))

    def _survivor_refusal(self, survivors: Sequence[str]) -> str | None:
        """The reason to reveal nothing for an unmask request with too few survivors for the plan's noise."""
        p = self._silo_dp
        if p is None or self._mode.trust_announced_plan:
            return None
        if len(survivors) < p.config.min_contributors:
            return (
                f"only {len(survivors)} survivors; the silo-level DP plan's noise needs at least "
                f"{p.config.min_contributors} contributions"
            )
        return None

    def run(
        self, train: Callable[[], MaskedVector], attest: Callable[[str], Attestation]
    ) -> str | None:
        t, stub, member = self._transport, self._stub, self._member
        r, deadline = self.config.round, self._deadline
        client = SecAggClient(
            silo=member.silo,
            signing_key=member.signing_key,
            roster=member.roster,
            config=self.config,
            rng=member.rng,
        )
        advertisement = advertisement_to_pb(client.advertise())
        t.submit(
            stub.AdvertiseKeys,
            pb.AdvertiseKeysRequest(federation=t.federation, round=r, advertisement=advertisement),
        )
        ads = t.poll_stage(stub.GetAdvertisements, r, deadline=deadline)
        u1 = [advertisement_from_pb(a) for a in ads.advertisements]
        for ad in (
            u1
        ):  # a revoked peer is not on this silo's roster for the round: it masks with nobody then
            problem = member.peer_problem(ad.silo)
            if problem is not None:
                raise RoundAborted(problem)
        shares = client.share_keys(u1)
        t.submit(
            stub.ShareKeys,
            pb.ShareKeysRequest(
                federation=t.federation,
                round=r,
                sender=t.silo,
                shares=[share_to_pb(s) for s in shares.shares],
            ),
        )
        inbox = [share_from_pb(s) for s in t.poll_stage(stub.GetInbox, r, deadline=deadline).shares]
        # only shares that decrypt under this session count towards the cohort this silo trains for
        self._admitted(client.open_inbox(inbox))
        deadline = self._masked_input_deadline()
        encoded = train()  # only now: the cohort is fixed and holds this silo
        masked = client.masked_input(inbox, encoded)
        session_id = client.session_id.hex()
        attestation = attest(session_id)
        # counted (and fsynced) before the masked input leaves, whatever the round's outcome will be said to be
        release = self._mode.tally.record(
            round_=r,
            session_id=session_id,
            p=self._silo_dp,
            policy=member.policy,
            plan_rounds=not self._mode.trust_announced_plan,
        )
        t.upload(stub.UploadMaskedInput, lambda: self._chunks(masked, attestation))
        self._record_sent(session_id, masked, attestation, release)
        survivors = t.poll_stage(stub.GetSurvivors, r, deadline=deadline)
        signature = client.sign_survivors(list(survivors.survivors)).signature
        t.submit(
            stub.SignSurvivors,
            pb.SignSurvivorsRequest(
                federation=t.federation, round=r, silo=t.silo, signature=signature
            ),
        )
        request = unmask_request_from_pb(t.poll_stage(stub.GetUnmaskRequest, r, deadline=deadline))
        refusal = self._survivor_refusal(request.survivors)
        if refusal is not None:
            return refusal
        response = client.unmask(request)
        t.submit(stub.Unmask, unmask_response_to_pb(t.federation, r, response))
        return None

    def _record_sent(
        self,
        session_id: str,
        masked: MaskedVector,
        attestation: Attestation,
        release: SiloLevelRelease,
    ) -> None:
        """Keep this silo's own record of what it sent (and the privacy it claimed) in its local ledger."""
        sent = attestation.sent(
            round=self.config.round,
            session_id=session_id,
            model_hash=self.config.model_hash.hex(),
            coordinates=int(masked.shape[0]),
        )
        if release.plan:
            sent["silo_level"] = {
                "plan": release.plan,
                "epsilon": release.epsilon,
                "delta": release.delta,
                "releases": len(self._mode.tally.releases),
            }
        self._transport.record("sent", sent)

    def _chunks(self, masked: MaskedVector, attestation: Attestation) -> Iterator[pb.MaskedChunk]:
        """The masked vector as upload messages, sized by :func:`coordinator.common.chunk_words` for this
        round's vector and cohort; each chunk's bytes are the one copy protobuf needs, taken from a view."""
        t = self._transport
        data = np.asarray(masked, dtype="<u4")  # a view when it is already little-endian uint32
        step = chunk_words(t.max_message_bytes, vector_words=data.shape[0], streams=self.config.n)
        for start in range(0, data.shape[0], step):
            end = min(start + step, data.shape[0])
            chunk = pb.MaskedChunk(
                federation=t.federation,
                round=self.config.round,
                silo=t.silo,
                offset=start,
                values=data[start:end].tobytes(),
                last=end == data.shape[0],
            )
            if start == 0:
                chunk.attestation = attestation.payload
                chunk.attestation_signature = attestation.signature
            yield chunk


def run_example_silo(config: SiloConfig, *, events: bool = False) -> list[dict[str, Any]]:
    """Run one silo of the built-in example task (DP-SGD on its breast-cancer shard) until the federation ends.

    Returns one summary per round; with ``events`` also prints them as machine-readable lines for the demo.
    """
    with Silo.from_config(config) as silo:
        return run_example_task(config, silo, events=events)
