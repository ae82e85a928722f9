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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias, Unpack

import numpy as np
import numpy.typing as npt

from coordinator.common import TlsFiles
from coordinator.config import SiloConfig, SiloPolicy
from coordinator.errors import InvalidInput
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
from coordinator.wire.silo_dp import plan_from_pb
from dp.distributed import DistributedDPPlan
from secagg import RoundConfig, SecAggClient, Stage

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
        insecure_debug_no_tls: plaintext channel for local debugging (anyone can claim any silo).

    The arguments shared with Paillier mode are declared once, in :class:`~coordinator.sdk.loop.SiloConnection`.
    """

    def __init__(
        self,
        *,
        tls: TlsFiles | None,
        witness_path: Path | None = None,
        insecure_debug_no_tls: bool = False,
        **connection: Unpack[SiloConnection],
    ) -> None:
        super().__init__(
            connection,
            tls=tls,
            witness_path=witness_path,
            insecure_debug_no_tls=insecure_debug_no_tls,
            mode=_MaskingMode,
        )

    @classmethod
    def from_config(cls, config: SiloConfig, **overrides: Any) -> Silo:
        """Connect as described by a silo's TOML configuration (``secagg silo --config``)."""
        arguments: dict[str, Any] = {
            **connection_from_config(config),
            "tls": tls_from_config(config),
            "witness_path": config.state_dir / "witness.sqlite",
            "insecure_debug_no_tls": config.insecure_debug_no_tls,
        }
        return cls(**(arguments | overrides))


class _MaskingMode(RoundMode[pb.JoinResponse, pb.RoundInfo, RoundConfig]):
    """Masking mode in the shared loop: rounds checked against the silo policy, then the five stages."""

    first_stage = Stage.ADVERTISE_KEYS.value

    def __init__(self, transport: Transport, member: Member) -> None:
        self.stub = transport.stub(pb_grpc.FederationStub)
        super().__init__(transport, member, self.stub)

    def accept(self, info: pb.RoundInfo) -> _MaskingRound:
        config = config_from_pb(info)
        silo_dp = plan_from_pb(info.silo_dp) if info.HasField("silo_dp") else None
        policy = self.member.policy
        policy.check_round(config, self.member.roster)
        policy.check_silo_dp(silo_dp.noise_multiplier if silo_dp else None)
        if silo_dp is not None and silo_dp.padded_dimension != config.vector_length:
            raise InvalidInput("the announced silo-level DP plan does not fit the round's vector")
        return _MaskingRound(config, silo_dp, self, deadline=float(info.stage_deadline_unix))


class _MaskingRound(RoundStages[RoundConfig, MaskedVector]):
    """One masking round: encode (quantizer or silo-level DP plan), then the five protocol stages."""

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
        self._transport = mode.transport
        self._stub = mode.stub
        self._member = mode.member
        self._deadline = deadline

    def encode(self, update: npt.NDArray[np.float64]) -> MaskedVector:
        if self._silo_dp is not None:
            return encode_update(update, self._silo_dp, self.config)
        return self.config.quantizer.encode(update, self._member.rng)

    def run(self, encoded: MaskedVector, attest: Callable[[str], Attestation]) -> None:
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
        shares = client.share_keys([advertisement_from_pb(a) for a in ads.advertisements])
        t.submit(
            stub.ShareKeys,
            pb.ShareKeysRequest(
                federation=t.federation,
                round=r,
                sender=t.silo,
                shares=[share_to_pb(s) for s in shares.shares],
            ),
        )
        inbox = t.poll_stage(stub.GetInbox, r, deadline=deadline)
        masked = client.masked_input([share_from_pb(s) for s in inbox.shares], encoded)
        session_id = client.session_id.hex()
        attestation = attest(session_id)
        t.upload(stub.UploadMaskedInput, lambda: self._chunks(masked, attestation))
        self._record_sent(session_id, masked, attestation)
        survivors = t.poll_stage(stub.GetSurvivors, r, deadline=deadline)
        signature = client.sign_survivors(list(survivors.survivors)).signature
        t.submit(
            stub.SignSurvivors,
            pb.SignSurvivorsRequest(
                federation=t.federation, round=r, silo=t.silo, signature=signature
            ),
        )
        request = t.poll_stage(stub.GetUnmaskRequest, r, deadline=deadline)
        response = client.unmask(unmask_request_from_pb(request))
        t.submit(stub.Unmask, unmask_response_to_pb(t.federation, r, response))

    def _record_sent(self, session_id: str, masked: MaskedVector, attestation: Attestation) -> None:
        """Keep this silo's own record of what it sent (and the privacy it claimed) in its local ledger."""
        sent: dict[str, Any] = {
            "round": self.config.round,
            "session_id": session_id,
            "model_hash": self.config.model_hash.hex(),
            "coordinates": int(masked.shape[0]),
        }
        if attestation.payload:
            sent["attestation"] = json.loads(attestation.payload)
            sent["attestation_signature"] = attestation.signature.hex()
        self._transport.record("sent", sent)

    def _chunks(self, masked: MaskedVector, attestation: Attestation) -> Iterator[pb.MaskedChunk]:
        t = self._transport
        data = masked.astype("<u4")
        step = t.chunk_words
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
