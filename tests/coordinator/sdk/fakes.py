"""The transport's environment in SDK unit tests: a tiny real gRPC server whose answers a test scripts.

:class:`Federation` and :class:`Audit` implement the generated services; each call is recorded, and a test makes
the next calls of an rpc fail (:meth:`Federation.fail`) with a bare status or with an exception passed through
the server's half of the one error table (:func:`coordinator.wire.errors.to_status`). :class:`Clock` is the
injected time and sleep. :func:`connect` is a masking :class:`~coordinator.sdk.Silo` of a test consortium on the
server, and :func:`announced` a round the server can script.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np

from audits.checkpoint import CheckpointSigner
from audits.merkle import MerkleTree, leaf_hash
from coordinator.common import ledger_origin, model_hash
from coordinator.config import SiloPolicy
from coordinator.errors import DuplicateSubmission
from coordinator.pki import ConsortiumPaths, load_ed25519_private
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.sdk import RetryPolicy, Silo
from coordinator.wire.errors import ERROR_KIND_KEY, to_status
from secagg import Roster

FEDERATION = "fed"
SILO = "silo-a"
MODEL = (np.arange(23) / 7).astype(np.float32)


@dataclass(frozen=True)
class Status:
    """A failure the server answers with: a status code, optionally naming the exception kind."""

    code: grpc.StatusCode
    kind: str | None = None
    message: str = "scripted failure"


Failure = Status | Exception


@dataclass
class Federation(pb_grpc.FederationServicer):
    """A ``Federation`` service whose answers a test scripts; every call is recorded."""

    failures: dict[str, list[Failure]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    metadata: list[dict[str, str]] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    uploads: list[list[int]] = field(default_factory=list)
    model: bytes = MODEL.astype("<f4").tobytes()
    break_download_once: bool = False
    # a download stream that leaves out this chunk (a gap in the model)
    skip_download_chunk: int | None = None
    roster_fingerprint: str = "pinned"
    rounds: list[pb.RoundInfo] = field(default_factory=list)
    asked_after: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    advertised: list[pb.Advertisement] = field(default_factory=list)
    peers: Callable[[list[pb.Advertisement]], pb.AdvertisementSet] | None = None
    inbox: Callable[[pb.StageRequest], pb.Inbox] | None = None

    def fail(self, rpc: str, *failures: Failure) -> None:
        """Answer the next calls of ``rpc`` with ``failures``, in order, then normally."""
        self.failures[rpc].extend(failures)

    def answer(self, rpc: str, context: grpc.ServicerContext) -> None:
        """Record the call; answer it with the next scripted failure if there is one."""
        self.calls[rpc] += 1
        self.log.append(rpc)
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if self.failures[rpc]:
            abort(context, self.failures[rpc].pop(0))

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        self.answer("Join", context)
        return pb.JoinResponse(
            federation=request.federation, roster_fingerprint=self.roster_fingerprint, rounds=2
        )

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        """The first scripted round numbered ``after`` or later; the federation is finished after them."""
        self.waits.append(request.wait_seconds)
        self.asked_after.append(request.after)
        self.answer("GetRound", context)
        for info in self.rounds:
            if info.round >= request.after:
                return info
        return pb.RoundInfo(
            federation=request.federation, round=request.after, state=pb.ROUND_STATE_FINISHED
        )

    def GetInbox(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.Inbox:
        """The shares ``inbox`` scripts (by default one empty share from ``b``)."""
        self.waits.append(request.wait_seconds)
        self.answer("GetInbox", context)
        if self.inbox is not None:
            return self.inbox(request)
        return pb.Inbox(shares=[pb.EncryptedShare(sender="b", recipient=request.silo)])

    def GetAdvertisements(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.AdvertisementSet:
        """U1 as ``peers`` makes it from the advertisements received (by default just those)."""
        self.answer("GetAdvertisements", context)
        if self.peers is not None:
            return self.peers(list(self.advertised))
        return pb.AdvertisementSet(advertisements=self.advertised)

    def ShareKeys(self, request: pb.ShareKeysRequest, context: grpc.ServicerContext) -> pb.Ack:
        self.answer("ShareKeys", context)
        return pb.Ack()

    def GetSurvivors(
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> pb.SurvivorSet:
        self.answer("GetSurvivors", context)
        return pb.SurvivorSet()

    def AdvertiseKeys(
        self, request: pb.AdvertiseKeysRequest, context: grpc.ServicerContext
    ) -> pb.Ack:
        # a submission that reached the server is kept even when its answer is then lost
        if request.advertisement.silo in self.delivered:
            self.calls["AdvertiseKeys"] += 1
            abort(context, DuplicateSubmission("already advertised"))
        self.delivered.append(request.advertisement.silo)
        self.answer("AdvertiseKeys", context)
        self.advertised.append(request.advertisement)
        return pb.Ack()

    def UploadMaskedInput(
        self, request_iterator: Iterator[pb.MaskedChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        self.uploads.append([int(chunk.offset) for chunk in request_iterator])
        self.answer("UploadMaskedInput", context)
        return pb.Ack()

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        self.answer("DownloadModel", context)
        step = 7 * 4  # several chunks for a 23-float model
        for start in range(0, len(self.model), step):
            if start > 0 and self.break_download_once:
                self.break_download_once = False
                abort(context, Status(grpc.StatusCode.UNAVAILABLE))
            if start // step == self.skip_download_chunk:
                continue
            yield pb.ModelChunk(
                offset=start // 4,
                values=self.model[start : start + step],
                total=len(self.model) // 4,
            )


@dataclass
class Audit(pb_grpc.AuditServicer):
    """An ``Audit`` service over a Merkle tree of leaves, signing checkpoints with its own audit key."""

    signer: CheckpointSigner = field(
        default_factory=lambda: CheckpointSigner.generate(key_name="test-audit")
    )
    entries: list[bytes] = field(default_factory=list)
    proofs_asked: list[tuple[int, int]] = field(default_factory=list)

    def tree(self) -> MerkleTree:
        return MerkleTree(leaf_hash(e) for e in self.entries)

    def GetCheckpoint(
        self, request: pb.CheckpointRequest, context: grpc.ServicerContext
    ) -> pb.Checkpoint:
        tree = self.tree()
        signed = self.signer.sign(
            origin=ledger_origin(request.federation), size=tree.size, root=tree.root()
        )
        return pb.Checkpoint(note=signed.text, size=tree.size)

    def GetConsistencyProof(
        self, request: pb.ConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.Proof:
        self.proofs_asked.append((request.old_size, request.new_size))
        return pb.Proof(hashes=self.tree().consistency_proof(request.old_size, request.new_size))


def abort(context: grpc.ServicerContext, failure: Failure) -> None:
    """End the call with ``failure``, as the coordinator's servicers do."""
    if isinstance(failure, Exception):
        status = to_status(failure)
        assert status is not None, f"{failure!r} is not in the error table"
        code, message, trailer = status
        context.set_trailing_metadata(trailer)
        context.abort(code, message)
    if failure.kind is not None:
        context.set_trailing_metadata(((ERROR_KIND_KEY, failure.kind),))
    context.abort(failure.code, failure.message)


@dataclass
class Server:
    federation: Federation
    audit: Audit
    address: str


@contextmanager
def serving() -> Iterator[Server]:
    """A started server of both services on 127.0.0.1, on a free port."""
    # the generated stubs mark every rpc abstract; gRPC answers the ones not written here with UNIMPLEMENTED
    federation, audit = Federation(), Audit()  # type: ignore[abstract]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_FederationServicer_to_server(federation, grpc_server)
    pb_grpc.add_AuditServicer_to_server(audit, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield Server(federation, audit, f"127.0.0.1:{port}")
    finally:
        grpc_server.stop(0).wait()


@dataclass
class Clock:
    """Injected time: a fixed unix time a test moves by hand, and the sleeps the transport asked for."""

    now: float = 1_000_000.0
    slept: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def connect(consortium: ConsortiumPaths, server: Server, **overrides: object) -> Silo:
    """The masking SDK of ``silo-a`` of ``consortium`` on ``server`` (insecure debug mode, no retries)."""
    roster = Roster.loads(consortium.roster.read_text())
    server.federation.roster_fingerprint = roster.fingerprint()
    arguments: dict[str, object] = {
        "address": server.address,
        "federation": consortium.federation,
        "silo": SILO,
        "signing_key": load_ed25519_private(consortium.silos[SILO].signing_key),
        "roster": roster,
        "consortium_key": bytes.fromhex(consortium.consortium_public_key.read_text().strip()),
        "tls": None,
        "insecure_debug_no_tls": True,
        "policy": SiloPolicy(min_cohort=3),
        "retry": RetryPolicy(attempts=1, initial=0.0, maximum=0.0),
    }
    return Silo(**(arguments | overrides))  # type: ignore[arg-type]


def announced(consortium: ConsortiumPaths, **fields: object) -> pb.RoundInfo:
    """A well-formed round 0 of three silos, open at its first stage, unless ``fields`` say otherwise."""
    arguments: dict[str, object] = {
        "federation": consortium.federation,
        "round": 0,
        "state": pb.ROUND_STATE_OPEN,
        "stage": "advertise_keys",
        "model_hash": model_hash(MODEL),
        "vector_length": MODEL.shape[0],
        "quantization": pb.Quantization(clip=1.0, bits=16, max_silos=3),
        "n": 3,
        "threshold": 3,
        "collusion": 1,
        "min_cohort": 3,
        "rounds": 1,
        "stage_deadline_unix": 2e9,
    }
    return pb.RoundInfo(**(arguments | fields))  # type: ignore[arg-type]
