"""Real coordinators and real silos for end-to-end tests: mTLS gRPC on 127.0.0.1, nothing mocked.

- :class:`Consortium` wraps a development consortium written by :func:`coordinator.pki.create_consortium`.
- :func:`running_coordinator` starts an in-process :class:`MaskingRounds` and gRPC server on port 0.
- :class:`ManualSilo` drives one silo through a round by hand, one stage per method, with the generated stub and
  the real :class:`secagg.SecAggClient`; stopping between two calls is how a test makes a silo vanish at a stage.
- Exact quantization: with ``clip = EXACT_CLIP`` and ``bits = EXACT_BITS`` the quantizer's scale is exactly
  ``SCALE = 1024``, so an update made of multiples of ``1/SCALE`` encodes with no rounding at all and the
  coordinator's aggregate can be checked for bit-exact equality.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits import CheckpointSigner
from coordinator.common import RoundStatus, TlsFiles, ledger_origin
from coordinator.config import Deadlines, LimitsConfig, MaskingDeadlines, PaillierDeadlines
from coordinator.pki import ConsortiumPaths, create_consortium, load_ed25519_private, tls_key_pem
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.audit import AuditTrail
from coordinator.rounds.driver import FederationSettings
from coordinator.rounds.masking import MaskingRounds
from coordinator.sdk.masking import RetryPolicy, Silo, SiloPolicy
from coordinator.server.aio import AioServer
from coordinator.server.masking import create_server
from coordinator.store import RoundRecord, SQLiteStore
from coordinator.wire.masking import (
    advertisement_from_pb,
    advertisement_to_pb,
    config_from_pb,
    share_from_pb,
    share_to_pb,
    unmask_request_from_pb,
    unmask_response_to_pb,
)
from secagg import Roster, RoundConfig, SecAggClient, Stage

T = TypeVar("T")
FloatVector = npt.NDArray[np.float32]
IntVector = npt.NDArray[np.int64]

FEDERATION = "fed"
EXACT_BITS = 16
EXACT_CLIP = 32767 / 1024  # levels / clip == 1024.0 exactly in IEEE arithmetic
SCALE = 1024
WAIT = 10.0  # seconds a long poll may block in a test; stages close much sooner

# A stage deadline that a test waits out (a silo has vanished) and one that is never reached because every
# expected silo answers first. Thread silos answer within milliseconds, so SHORT has a wide margin.
SHORT = 2.5
LONG = 60.0


# -- consortium -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Consortium:
    """A development consortium on disk plus the parsed, verified roster."""

    paths: ConsortiumPaths

    @classmethod
    def create(
        cls, directory: Path, *, silos: Sequence[str], federation: str = FEDERATION
    ) -> Consortium:
        return cls(create_consortium(directory, federation=federation, silos=silos))

    @property
    def federation(self) -> str:
        return self.paths.federation

    @property
    def silos(self) -> list[str]:
        return list(self.paths.silos)

    @property
    def consortium_key(self) -> bytes:
        return bytes.fromhex(self.paths.consortium_public_key.read_text().strip())

    @property
    def roster(self) -> Roster:
        roster = Roster.loads(self.paths.roster.read_text())
        roster.verify(self.consortium_key)
        return roster

    def silo_tls(self, silo: str) -> TlsFiles:
        p = self.paths.silos[silo]
        return TlsFiles(p.ca_cert.read_bytes(), p.cert.read_bytes(), tls_key_pem(p.key))

    def coordinator_tls(self) -> TlsFiles:
        p = self.paths
        return TlsFiles(
            p.ca_cert.read_bytes(), p.coordinator_cert.read_bytes(), tls_key_pem(p.coordinator_key)
        )

    def signing_key(self, silo: str) -> Ed25519PrivateKey:
        return load_ed25519_private(self.paths.silos[silo].signing_key)

    def sdk(self, silo: str, address: str, **kwargs: object) -> Silo:
        """The real SDK client of ``silo`` (policy min_cohort 2, fast retries for tests)."""
        kwargs.setdefault("retry", RetryPolicy(attempts=4, initial=0.1, maximum=0.5))
        kwargs.setdefault("policy", SiloPolicy(min_cohort=2))
        return Silo(
            address=address,
            federation=self.federation,
            silo=silo,
            signing_key=self.signing_key(silo),
            roster=self.roster,
            consortium_key=self.consortium_key,
            tls=self.silo_tls(silo),
            **kwargs,  # type: ignore[arg-type]
        )


def secure_channel(address: str, tls: TlsFiles | None, **options: int) -> grpc.Channel:
    """An mTLS channel presenting ``tls`` (``tls.key``/``tls.cert`` may be empty: no client certificate)."""
    if tls is None:
        raise ValueError("tls is required")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key or None, certificate_chain=tls.cert or None
    )
    return grpc.secure_channel(address, credentials, options=list(options.items()))


# -- coordinator ------------------------------------------------------------------------------------------------
def settings(
    *,
    n: int,
    rounds: int = 1,
    length: int = 1000,
    threshold: int | None = None,
    min_cohort: int = 3,
    clip: float = EXACT_CLIP,
    bits: int = EXACT_BITS,
    deadlines: Deadlines | None = None,
) -> FederationSettings:
    """Federation settings for tests; by default every deadline is LONG (stages close when all answered)."""
    return FederationSettings(
        federation=FEDERATION,
        rounds=rounds,
        vector_length=length,
        clip=clip,
        bits=bits,
        threshold=threshold if threshold is not None else n // 2 + 1,
        collusion=0,
        min_cohort=min_cohort,
        deadlines=deadlines or deadlines_with(),
    )


def deadlines_with(**short: float) -> Deadlines:
    """LONG deadlines except the named stages: masking stages, or Paillier's.

    A Paillier stage not named lasts as long as the masking stages it stands for (``collect`` = ``advertise`` +
    ``masked_input``, ``challenge`` = ``consistency``, ``fold`` = ``unmask``, ``decrypt`` = ``consistency`` +
    ``unmask``), so shortening those shortens it too.
    """
    masking = {stage: short.pop(stage, LONG) for stage in MaskingDeadlines.model_fields}
    paillier = {
        "collect": masking["advertise"] + masking["masked_input"],
        "challenge": masking["consistency"],
        "fold": masking["unmask"],
        "decrypt": masking["consistency"] + masking["unmask"],
        **short,
    }
    return Deadlines(masking=MaskingDeadlines(**masking), paillier=PaillierDeadlines(**paillier))


@dataclass
class Coordinator:
    """An in-process coordinator: round service, started gRPC server and its SQLite store."""

    service: MaskingRounds
    server: AioServer
    port: int
    store: SQLiteStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rounds(self) -> list[RoundRecord]:
        return self.store.rounds(FEDERATION)

    def model(self, round_: int) -> FloatVector:
        return self.store.model(FEDERATION, round_)[0]


@contextmanager
def running_coordinator(
    consortium: Consortium,
    db: Path,
    federation_settings: FederationSettings,
    *,
    initial_model: FloatVector | None = None,
    revoked: Iterable[str] = (),
    max_message_bytes: int = 4 << 20,
    joined: Sequence[str] | None = None,
    limits: LimitsConfig | None = None,
) -> Iterator[Coordinator]:
    """Start a coordinator on 127.0.0.1 port 0; stop it on exit.

    ``joined``: the silos recorded as joined before it starts (default: every member, so round 0 opens at
    once, for tests whose silos skip ``Join``); with fewer than ``min_cohort`` the test's silos must join.
    """
    store = SQLiteStore(db)
    roster = consortium.roster
    if initial_model is None:
        initial_model = np.zeros(federation_settings.vector_length, np.float32)
    service = MaskingRounds(
        settings=federation_settings,
        roster=roster,
        store=store,
        initial_model=initial_model,
        audit=audit_trail(consortium, db),
    )
    server, port = create_server(
        service,
        "127.0.0.1:0",
        tls=consortium.coordinator_tls(),
        revoked=revoked,
        max_message_bytes=max_message_bytes,
        limits=limits,
    )
    server.start()
    for silo in roster.members if joined is None else joined:
        service.join(silo)  # as each silo's Join call does: round 0 waits for min_cohort of them
    service.start()
    try:
        if len(roster.members if joined is None else joined) >= federation_settings.min_cohort:
            # round 0 opens now; wait for it so that a test's "store unchanged" baseline is not taken mid-opening
            service.view(after=0, wait=WAIT)
        yield Coordinator(service, server, port, store)
    finally:
        service.stop()
        server.stop(0).wait()
        store.close()
        service.audit.close()


def audit_trail(consortium: Consortium, db: Path) -> AuditTrail:
    """The federation's audit trail in the coordinator's database, signed with the consortium's audit key."""
    origin = ledger_origin(consortium.federation)
    signer = CheckpointSigner(load_ed25519_private(consortium.paths.audit_key), key_name=origin)
    return AuditTrail.open(db, federation=consortium.federation, signer=signer)


def received_words(coordinator: Coordinator, silo: str) -> int:
    """How many masked coordinates of ``silo``'s upload the open round has added so far.

    Knowing that a chunk has *arrived* (not merely been sent) before a test breaks the stream is what makes
    the rollback check meaningful.
    """
    service = coordinator.service
    assert isinstance(service, MaskingRounds)
    return service.received(silo)


def snapshot(coord: Coordinator) -> tuple[object, ...]:
    """Every round record and the bytes of every stored model."""
    records = coord.rounds()
    finished = sum(r.status is not RoundStatus.OPEN for r in records)
    return (tuple(records), *(coord.model(r).tobytes() for r in range(finished + 1)))


def refused(coord: Coordinator, code: grpc.StatusCode, call: Callable[[], object]) -> str:
    """``call`` fails with ``code`` and the store is unchanged; returns the public error message."""
    before = snapshot(coord)
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, error.details()
    assert snapshot(coord) == before
    return error.details() or ""


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail loudly after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


# -- updates ----------------------------------------------------------------------------------------------------
def integer_update(seed: int, length: int, bound: int = 100) -> IntVector:
    """A deterministic update in quantization units (multiply by 1/SCALE to get the float update)."""
    return np.random.default_rng(seed).integers(-bound, bound + 1, length, dtype=np.int64)


def exact(units: IntVector) -> npt.NDArray[np.float64]:
    """The float update that the exact quantizer encodes to ``units`` with no rounding."""
    return units.astype(np.float64) / SCALE


def expected_model(start: FloatVector, units: Sequence[IntVector]) -> FloatVector:
    """FedAvg of exactly representable updates: start + mean(decoded sum), in the coordinator's arithmetic."""
    total = np.sum(np.stack(units), axis=0)
    mean = (total.astype(np.float64) / SCALE) / len(units)
    model: FloatVector = (start.astype(np.float64) + mean).astype(np.float32)
    return model


# -- a silo driven by hand ---------------------------------------------------------------------------------------
class ManualSilo:
    """One silo, one stage per method, over the generated stub with the real ``SecAggClient``.

    Each method first fetches the previous stage's result (a long poll) and then submits this stage's message,
    so "the silo vanished at stage X" is simply "the test never called method X" (and closed the channel).
    """

    def __init__(
        self,
        consortium: Consortium,
        silo: str,
        address: str,
        *,
        tls: TlsFiles | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.silo = silo
        self.federation = consortium.federation
        self._roster = consortium.roster
        self._key = consortium.signing_key(silo)
        self._rng = rng
        self.channel = secure_channel(address, tls or consortium.silo_tls(silo))
        self.stub = pb_grpc.FederationStub(self.channel)
        self.client: SecAggClient | None = None
        self.config: RoundConfig | None = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ManualSilo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def round(self) -> int:
        assert self.config is not None
        return self.config.round

    def stage_request(self, wait: float = WAIT) -> pb.StageRequest:
        return pb.StageRequest(
            federation=self.federation, round=self.round, silo=self.silo, wait_seconds=wait
        )

    # stages -----------------------------------------------------------------------------------------------------
    def open_round(self, after: int = 0) -> RoundConfig:
        """Fetch the first round >= ``after`` and make a fresh protocol client for it."""
        info = self.stub.GetRound(
            pb.GetRoundRequest(federation=self.federation, after=after, wait_seconds=WAIT)
        )
        self.config = config_from_pb(info)
        self.client = SecAggClient(
            silo=self.silo,
            signing_key=self._key,
            roster=self._roster,
            config=self.config,
            rng=self._rng,
        )
        return self.config

    def advertise(self, after: int = 0) -> None:
        if self.client is None:
            self.open_round(after)
        assert self.client is not None
        ad = self.client.advertise()
        self.stub.AdvertiseKeys(
            pb.AdvertiseKeysRequest(
                federation=self.federation, round=self.round, advertisement=advertisement_to_pb(ad)
            )
        )

    def share_keys(self) -> None:
        assert self.client is not None
        ads = self.stub.GetAdvertisements(self.stage_request())
        shares = self.client.share_keys([advertisement_from_pb(a) for a in ads.advertisements])
        self.stub.ShareKeys(
            pb.ShareKeysRequest(
                federation=self.federation,
                round=self.round,
                sender=self.silo,
                shares=[share_to_pb(s) for s in shares.shares],
            )
        )

    def mask(self, update: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        """Fetch the inbox and compute the masked vector y (does not upload it)."""
        assert self.client is not None and self.config is not None
        inbox = self.stub.GetInbox(self.stage_request())
        encoded = self.config.quantizer.encode(update, self._rng)
        return self.client.masked_input([share_from_pb(s) for s in inbox.shares], encoded)

    def chunks(self, masked: npt.NDArray[np.uint32], chunk_words: int) -> Iterator[pb.MaskedChunk]:
        data = masked.astype("<u4")
        for start in range(0, data.shape[0], chunk_words):
            end = min(start + chunk_words, data.shape[0])
            yield pb.MaskedChunk(
                federation=self.federation,
                round=self.round,
                silo=self.silo,
                offset=start,
                values=data[start:end].tobytes(),
                last=end == data.shape[0],
            )

    def masked_input(self, update: npt.ArrayLike, *, chunk_words: int = 256) -> None:
        """Stage 3 in full: mask and stream the vector in chunks of ``chunk_words`` coordinates."""
        masked = self.mask(update)
        self.stub.UploadMaskedInput(self.chunks(masked, chunk_words))

    def broken_upload(
        self,
        update: npt.ArrayLike,
        *,
        chunk_words: int,
        send: int,
        arrived: Callable[[], None],
    ) -> grpc.StatusCode:
        """Stream only the first ``send`` chunks, wait for ``arrived()`` to return, then break the stream."""
        masked = self.mask(update)
        release = threading.Event()

        def first_chunks() -> Iterator[pb.MaskedChunk]:
            for i, chunk in enumerate(self.chunks(masked, chunk_words)):
                if i == send:
                    release.wait(60.0)  # hold the stream open, half sent, until it is cancelled
                    return
                yield chunk

        future = self.stub.UploadMaskedInput.future(first_chunks())
        try:
            arrived()
        finally:
            cancelled = future.cancel()  # type: ignore[no-untyped-call]
            release.set()
        if cancelled:
            return grpc.StatusCode.CANCELLED
        error = future.exception()  # the call had already ended: the server refused the stream
        return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.OK

    def sign_survivors(self) -> list[str]:
        assert self.client is not None
        survivors = list(self.stub.GetSurvivors(self.stage_request()).survivors)
        signature = self.client.sign_survivors(survivors)
        self.stub.SignSurvivors(
            pb.SignSurvivorsRequest(
                federation=self.federation,
                round=self.round,
                silo=self.silo,
                signature=signature.signature,
            )
        )
        return survivors

    def unmask(self) -> None:
        assert self.client is not None
        request = self.stub.GetUnmaskRequest(self.stage_request())
        response = self.client.unmask(unmask_request_from_pb(request))
        self.stub.Unmask(unmask_response_to_pb(self.federation, self.round, response))

    def result(self, wait: float = WAIT) -> pb.RoundResult:
        return self.stub.GetResult(self.stage_request(wait))

    def run(
        self, update: npt.ArrayLike, *, stop_before: Stage | None = None, after: int = 0
    ) -> pb.RoundResult | None:
        """Take part in one round honestly; vanish just before ``stop_before`` if given."""
        steps: list[tuple[Stage, Callable[[], object]]] = [
            (Stage.ADVERTISE_KEYS, lambda: self.advertise(after)),
            (Stage.SHARE_KEYS, self.share_keys),
            (Stage.MASKED_INPUT, lambda: self.masked_input(update)),
            (Stage.CONSISTENCY_CHECK, self.sign_survivors),
            (Stage.UNMASK, self.unmask),
        ]
        for stage, step in steps:
            if stage == stop_before:
                self.close()
                return None
            step()
        return self.result()


def in_threads(*jobs: Callable[[], T], timeout: float = 60.0) -> list[T]:
    """Run ``jobs`` concurrently; return their results in order, re-raising the first failure."""
    results: list[T | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int, job: Callable[[], T]) -> None:
        try:
            results[i] = job()
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, j), daemon=True) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if any(t.is_alive() for t in threads):
        raise AssertionError("a silo thread did not finish")
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot was filled by its job
