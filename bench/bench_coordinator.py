"""Benchmark of whole coordinator rounds over loopback gRPC with mTLS: secure aggregation against plain streaming.

    .venv/bin/python bench/bench_coordinator.py                # 10 x 1M, 50 x 100k, 50 x 1M memory (~3-4 min)
    .venv/bin/python bench/bench_coordinator.py --quick        # 5 silos x 50,000 + Paillier smoke (CI smoke)
    .venv/bin/python bench/bench_coordinator.py --only 10x1M   # one scenario (repeatable)
    .venv/bin/python bench/bench_coordinator.py --only 10x1M --only 50x100k --store local --failover-trials 5
                                      # also on PostgreSQL (ratios to SQLite) and 5 leader-kill failovers
    .venv/bin/python bench/bench_coordinator.py --profile      # also cProfile the coordinator and silo-00
    .venv/bin/python bench/bench_coordinator.py --only paillier10x100k   # Paillier mode, memory (~5 min)
    .venv/bin/python bench/bench_coordinator.py --only paillier10x300k   # the same at 300,000 (~15 min)
    .venv/bin/python bench/bench_coordinator.py --silos 100 --params 100000 --round-timeout 90
                                      # one scenario of N silos x P parameters: a sweep row, then as its
                                      # last line "100 silos x 100000 params: secure X s, plain Y s"

The sweep of issue 18, one scenario a command (each line its own run, so one that times out loses nothing
else): ``--silos N --params 100000`` for N = 10, 50, 100, 200 (``--rounds 2 --round-timeout 90`` for 100 and
200 on a server that holds a thread per long poll) and ``--silos 10 --params 4000000``. Each silo is its own
OS process unless that many processes would take more than 60% of the available memory (an estimate from
:data:`SILO_PROCESS_BYTES` and the vector); then silos share a small pool of processes, each silo in a thread
of its own with its own SDK ``Silo``: its own gRPC channel, TLS identity and signing key (no connection is
shared: the row's ``conns`` column counts the coordinator's TCP connections). ``--silos-per-process K``
forces a pool. The row says which, with the largest silo process's RSS, the CPU seconds per round and the
load average at the release of the silos and at the end.

The Paillier scenarios are long (partial decryption costs minutes a round on this machine), so they run only
when named with ``--only``: neither the default run nor ``make bench`` includes them. ``--quick`` runs a small
Paillier smoke run (5 silos x 2,000, insecure 1024-bit test key) after the masking one.

What runs. The script mints a throwaway consortium (CA, certificates, roster, keys) with
:func:`coordinator.pki.create_consortium` in a temporary directory that is deleted at the end. For each
scenario it starts the coordinator as its own OS process (a sub-mode of this script that builds a
:class:`~coordinator.config.ServeConfig` and calls :func:`coordinator.server.app.start_coordinator`, i.e. exactly
what ``secagg serve`` runs: round service, SQLite store, audit ledger, mTLS gRPC server on 127.0.0.1 port 0)
and one OS process per silo (another sub-mode: the real SDK :class:`coordinator.sdk.masking.Silo`, whose training
function returns a fixed random update; torch is never imported). The coordinator opens round 0 as soon as it
serves; every silo process starts, joins and then waits at a barrier, and all are released together. Stage
deadlines are an hour, so a stage closes only when every silo has answered and no timing contains a deadline
wait. Child processes get ``OMP_NUM_THREADS=1`` (and the BLAS equivalents) so numpy does not oversubscribe
the machine's cores.

What is timed. Round time is measured inside the coordinator process, from the moment round r opens to the
moment its outcome is completed (new global model stored), with blocking calls of the round service's
public API (``view``, ``advertisements``, ``inbox``, ``survivors``, ``unmask_request``, ``result``) in a monitor
thread: they wake on the service's own condition variable, so the stamps need no polling, and they also give
the time of each stage. That window holds everything one round costs: the silos' long-poll wake-up, the
4-byte-per-parameter model download, "training" (returning the fixed update), quantization, the five
protocol stages with their round trips, unmasking, decoding, FedAvg, the SQLite commit of the new model and
the audit-ledger events and checkpoint of the round. Round 0 is a warm-up (it also contains the silo processes'
start-up, first requests on fresh channels and cold caches) and is excluded; the figure is the median of
rounds 1..R-1. CPU seconds per round are ``time.process_time`` deltas of the coordinator process and of every
silo process (summed), so "CPU / number of cores" is a lower bound on the round time.

The baseline ("same transport carrying unmasked vectors") is built here only, on a second mTLS port of the
coordinator process, with the same generated ``coordinator.proto.v1`` service and the same message limits;
it runs after the secure rounds with the same silo processes (for the memory scenario, in processes of its
own so that its memory is measured alone). Its silos use the SDK's channel (``Silo._transport``),
``Silo.download_model`` and the masking round's chunker (``_MaskingRound._chunks``, the SDK's chunk size,
:func:`coordinator.config.chunk_words`); its server has the same gRPC
options (:func:`coordinator.server.app.server_options`) and its process the same allocator settings
(:func:`coordinator._malloc.tune_allocator`). A plain round: the silo long-polls ``GetRound``, downloads the
model (loaded once per round from a SQLite store and shared by every download, as the secure coordinator does),
quantizes the same update with the same ``Quantizer``, streams the *unmasked* uint32 vector through
``UploadMaskedInput`` (the server checks the caller's certificate identity and the offsets, adds each chunk
into one running sum as it arrives and spools it to a temporary file, like the secure coordinator's rollback
spool) and long-polls ``GetResult``; when all N vectors have arrived the server decodes the sum, applies FedAvg
(:func:`coordinator.rounds.fedavg`) and commits the new model to SQLite. It therefore *includes* transport, TLS, model download, quantization,
streaming summation, decoding and persistence, and *excludes* key advertisement and agreement (X25519),
signatures (Ed25519), Shamir sharing and AES-GCM share routing, the pairwise and self masks, the consistency
check, unmasking, the four extra round trips those stages need, and the audit ledger. The ratio secure /
baseline is the price of secure aggregation (and of its audit trail) on this transport.

Memory. The coordinator's idle RSS is read from ``/proc/self/status`` once it serves and round 0 is open (its
global model loaded, as in any idle coordinator between rounds), before any silo has connected; its peak is
``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the secure rounds (a high-water mark over the process's whole
life, so it can only overstate). Silo memory is not counted: silos are other processes. A sampling thread
(every 10 ms) also records the largest RSS seen during each stage and, at that moment, glibc's ``mallinfo2``
(bytes in use in malloc's heaps, free but still resident in them, and in separate mappings), to say where a peak
comes from; short spikes between samples are missed by the sampler but not by ``ru_maxrss``.

Paillier mode (``--only paillier10x100k``, ``paillier10x300k``): the coordinator's memory and round time with 10
silos, a 2048-bit threshold key with t = 6 (:func:`coordinator.pki.paillier.create_paillier_keys` on the same
throwaway consortium) and 2 rounds. The coordinator process runs
:func:`~coordinator.server.app.start_coordinator` with a Paillier-mode ``ServeConfig`` (``mode = "paillier"``,
the joint public key, hour-long ``[deadlines.paillier]``), exactly what ``secagg serve`` runs, and nothing
else (no baseline: there is no plain counterpart here); every silo process runs the real SDK
:class:`coordinator.sdk.paillier.PaillierSilo` with the same fixed update. Idle RSS, peak RSS and the stage
sampler are the masking scenarios' (idle once round 0 is open, before any silo connects; peak from
``ru_maxrss``); the coordinator is released at the barrier together with the silos, so round 0 is timed from
that moment rather than from its opening (it opened before the silo processes existed), and each round's
collect / decrypt split comes from the service's own blocking calls (``wait_past``, ``result``). Every round
is printed with the load average at its end; the figure of the scenario is (peak - idle) / vector, over the
whole life of the process.

``--profile`` runs cProfile with a per-thread CPU clock (``time.thread_time``) in every Python thread of the
coordinator and of silo-00 (gRPC's C-core threads, where TLS and HTTP/2 run, are invisible to it) and prints
the top functions by own time, then by cumulative time; profiling slows both down, so its round times are not
representative.

Notes:
    The issue's Flower figures (full-graph SecAgg about 27 s per round for 50 silos x 100,000 parameters,
    0.7 s without secure aggregation) come from other hardware and are printed as a reference only. Nothing
    here prints a key, a share, a mask or an update; the consortium's private keys live only in the temporary
    directory.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import ctypes.util
import functools
import gc
import io
import json
import os
import platform
import pstats
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import grpc
import numpy as np
import numpy.typing as npt
import pg_failover  # bench/pg_failover.py, beside this script

from coordinator._malloc import tune_allocator
from coordinator.common import DEFAULT_MAX_MESSAGE_BYTES, RoundStatus, TlsFiles
from coordinator.config import (
    Deadlines,
    MaskingDeadlines,
    ModelConfig,
    PaillierDeadlines,
    RoundsConfig,
    ServeConfig,
    TLSPaths,
)
from coordinator.errors import InvalidInput
from coordinator.metrics import Metrics
from coordinator.pki import (
    PASSPHRASE_ENV,
    ConsortiumPaths,
    create_consortium,
    load_ed25519_private,
    silo_identity,
    tls_key_pem,
)
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc
from coordinator.rounds.fedavg import fedavg
from coordinator.rounds.masking import MaskingRounds
from coordinator.rounds.polls import Signal, wait_for
from coordinator.sdk.loop import Attestation
from coordinator.sdk.masking import RoundContext, Silo
from coordinator.server.aio import AioBridge, AioCall, AioServer, on_loop
from coordinator.server.app import server_options, start_coordinator
from coordinator.server.base import model_chunks
from coordinator.store import SQLiteStore
from coordinator.wire.masking import config_from_pb, config_to_pb, u32_from_bytes
from secagg import Roster, RoundConfig, Stage

# Paillier mode's modules import its optional extra (phe, gmpy2): imported where used, so that the masking
# scenarios run without it
if TYPE_CHECKING:
    from coordinator.rounds.paillier import PaillierRounds
    from coordinator.sdk.paillier import PaillierRoundContext, PaillierSilo

FEDERATION = "bench"
CLIP = 1.0
BITS = 16
MIN_COHORT = 3
LONG = 3600.0  # every stage deadline: stages close when all silos have answered, never on a timer
POLL = 20.0  # seconds one long poll may block before the silo asks again
VECTOR_BYTES_PER_COORDINATE = 4  # uint32
TARGET_RATIO = 1.5
TARGET_50_SECONDS = 3.0
TARGET_RSS_VECTORS = 4.0  # issue 18: coordinator peak at 50 x 1M at most 4 vectors above idle
FLOWER_SECURE_S = 27.0
FLOWER_PLAIN_S = 0.7
SCENARIO_TIMEOUT = 1200.0  # a hung child is killed after this many seconds
PAILLIER_KEY_BITS = 2048
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
SECURE_STAGES = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)
REPO = Path(__file__).resolve().parent.parent

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U32 = npt.NDArray[np.uint32]
T = TypeVar("T")


@dataclass(frozen=True)
class Scenario:
    """One benchmark configuration: ``silos`` processes, ``length`` parameters, ``rounds`` rounds (round 0 excluded)."""

    name: str
    silos: int
    length: int
    rounds: int
    target: str  # "ratio", "seconds", "rss" or "" (not judged)
    # run the baseline in processes of its own, so that its memory is measured alone
    separate_baseline: bool = False
    paillier: bool = False  # Paillier mode (threshold key, no baseline) instead of masking
    key_bits: int = PAILLIER_KEY_BITS
    timeout: float = SCENARIO_TIMEOUT  # seconds before the watchdog kills the scenario's processes
    per_process: int = (
        1  # silos per OS process (each its own thread, gRPC channel and TLS identity)
    )
    # a timed round still open this many seconds after it opened is reported as timed out (> this figure)
    round_timeout: float | None = None


def threshold_for(n: int) -> int:
    """The smallest safe threshold without collusion, t = floor(n/2) + 1 (DESIGN 4.3)."""
    return n // 2 + 1


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``, field 2: VmRSS in pages).

    ``statm`` is one short line; the sampler reads it every 10 ms in the coordinator, where parsing
    ``/proc/self/status`` cost about 5 % of the coordinator's CPU at 100 silos.
    """
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


def peak_rss_bytes() -> int:
    """High-water RSS of this process over its whole life (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fixed_update(length: int, seed: int) -> F64:
    """A silo's constant "trained" update, L2 norm about CLIP / 2 so clipping never rescales it."""
    rng = np.random.default_rng(seed)
    update: F64 = rng.standard_normal(length) * (0.5 * CLIP / np.sqrt(length))
    return update


def load_roster(paths: ConsortiumPaths) -> tuple[Roster, bytes]:
    """The consortium's roster, verified under its pinned public key."""
    key = bytes.fromhex(paths.consortium_public_key.read_text(encoding="ascii").strip())
    roster = Roster.loads(paths.roster.read_text(encoding="utf-8"))
    roster.verify(key)
    return roster, key


# == coordinator process ===========================================================================
class _MallInfo2(ctypes.Structure):
    """``struct mallinfo2`` of glibc >= 2.33 (``mallinfo(3)``)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> Callable[[], dict[str, int]] | None:
    """A reader of glibc's allocator statistics, or ``None`` where there is no ``mallinfo2``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        call = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    call.restype = _MallInfo2

    def read() -> dict[str, int]:
        info = call()
        return {"in_use": info.uordblks + info.hblkhd, "free": info.fordblks}

    return read


class RssSampler:
    """Records the largest RSS seen while each label was current (a 10 ms sampling thread)."""

    def __init__(self) -> None:
        self.label = "idle"
        self.peaks: dict[str, int] = {}
        self.malloc: dict[str, dict[str, int]] = {}  # allocator statistics at each label's peak
        self._mallinfo = _mallinfo()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            rss, label = rss_bytes(), self.label
            if rss > self.peaks.get(label, 0):
                self.peaks[label] = rss
                if self._mallinfo is not None:
                    self.malloc[label] = self._mallinfo()


class ThreadProfiles:
    """cProfile for every thread started after :meth:`install` (gRPC handler threads) plus the main thread."""

    def __init__(self) -> None:
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        # per-thread CPU time, not wall time: threads blocked in long polls or on the GIL cost nothing
        self._main = cProfile.Profile(time.thread_time)

    def install(self) -> None:
        def start(frame: object, event: str, arg: object) -> None:
            # the first profiling event of a new thread replaces this hook with the thread's own profiler
            profile = cProfile.Profile(time.thread_time)
            with self._lock:
                self._profiles.append(profile)
            profile.enable()

        threading.setprofile(start)
        self._main.enable()

    def report(self, top: int = 30) -> str:
        """Top functions by own CPU time, then by cumulative CPU time, summed over every thread."""
        threading.setprofile(None)  # None removes the hook for threads started from now on
        self._main.disable()
        out = io.StringIO()
        stats = pstats.Stats(self._main, stream=out)
        with self._lock:
            for profile in self._profiles:
                snapshot = _Snapshot(profile)
                # pstats refuses an empty one (a thread that has not run Python yet); it duck-types on
                # create_stats/stats
                if snapshot.stats:
                    stats.add(cast(Any, snapshot))
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        return out.getvalue()


class _Snapshot:
    """Completed calls of a profiler still running in another thread.

    ``disable()`` from this thread would close that thread's pending calls (a worker blocked in its queue) with
    *this* thread's CPU clock and invent seconds; a snapshot leaves them out.
    """

    def __init__(self, profile: cProfile.Profile) -> None:
        profile.snapshot_stats()  # undocumented but stable since Python 2.5; pstats relies on it
        self.stats = profile.stats

    def create_stats(self) -> None:
        """pstats calls this; the snapshot is already taken."""


def secure_rounds(
    service: MaskingRounds,
    rounds: int,
    first_silo: str,
    sampler: RssSampler,
    round_timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Stamp the opening, every stage close and the completion of each round from the service's own events.

    With ``round_timeout``, a round still open that many seconds after it opened ends the monitoring: its
    record says ``timed_out`` (the scenario is then stopped, its figure reported as more than the timeout).
    Round 0 opens once ``min_cohort`` silos have joined, while the others are still starting, so it gets
    ``round_timeout + 600`` seconds.
    """
    records: list[dict[str, Any]] = []
    for r in range(rounds):
        view = service.view(after=r, wait=LONG)
        opened, cpu = time.perf_counter(), time.process_time()
        if view.config.round != r:
            raise RuntimeError(f"monitor missed the opening of round {r}")
        limit = LONG
        if round_timeout is not None:
            limit = round_timeout if r > 0 else round_timeout + 600.0

        def left(opened: float = opened, limit: float = limit) -> float:
            return max(0.0, opened + limit - time.perf_counter())

        sampler.label = Stage.ADVERTISE_KEYS.value
        closes = []
        waits: list[Callable[[float], object]] = [
            functools.partial(service.advertisements, r),
            functools.partial(service.inbox, first_silo, r),
            functools.partial(service.survivors, r),
            functools.partial(service.unmask_request, r),
        ]
        try:
            for following, wait in zip(SECURE_STAGES[1:], waits, strict=True):
                wait(left())
                closes.append(time.perf_counter())
                sampler.label = following.value
            outcome = service.result(r, left())
        except TimeoutError:
            records.append({"round": r, "seconds": time.perf_counter() - opened, "timed_out": True})
            return records
        done = time.perf_counter()
        closes.append(done)
        if outcome.status is not RoundStatus.COMPLETED:
            raise RuntimeError(f"round {r} did not complete: {outcome.reason}")
        if len(outcome.survivors) != len(service.roster.members):
            # a dropout changes the work done (and the baseline never drops anyone): not comparable
            raise RuntimeError(f"round {r} completed without every silo: {outcome.dropped}")
        starts = [opened, *closes[:-1]]
        records.append(
            {
                "round": r,
                "seconds": done - opened,
                "cpu": time.process_time() - cpu,
                "survivors": len(outcome.survivors),
                "stages": {
                    s.value: end - start
                    for s, start, end in zip(SECURE_STAGES, starts, closes, strict=True)
                },
            }
        )
    return records


class PlainRounds:
    """The baseline aggregator: rounds of unmasked uint32 vectors streamed into one running sum.

    Same persistence (a SQLite store), same quantizer, same FedAvg arithmetic as the round service; no
    secure-aggregation stage and no audit ledger.
    """

    def __init__(self, *, config: ServeConfig, roster: Roster, store: SQLiteStore) -> None:
        self.federation = config.federation
        self.rounds = config.rounds
        self.length = config.model.size
        self.roster = roster
        self.store = store
        self.quantizer = config.rounds.quantizer(len(roster.members))
        # a condition whose changes also wake the asyncio server's parked polls
        self.cond = Signal()
        self.limits = config.limits
        self.open: RoundConfig | None = None
        self.total: U32 = np.zeros(0, dtype=np.uint32)
        self.received: dict[str, int] = {}
        self.arrived: set[str] = set()
        self.outcomes: dict[int, bytes] = {}
        self.finished = False
        self.model_load = threading.Lock()  # single-flight, as RoundDriver.model_bytes
        self.model_cache: tuple[int, bytes, bytes] | None = None
        store.init_federation(
            self.federation,
            settings=json.dumps({"baseline": True, "length": self.length}),
            initial_model=np.zeros(self.length, dtype=np.float32),
        )

    def config(self, round_: int, model_hash: bytes) -> RoundConfig:
        r = self.rounds
        return RoundConfig(
            federation=self.federation,
            round=round_,
            model_hash=model_hash,
            vector_length=self.length,
            quantizer=self.quantizer,
            n=len(self.roster.members),
            threshold=r.threshold,
            collusion=r.collusion,
            min_cohort=r.min_cohort,
        )

    def model_bytes(self, round_: int) -> tuple[bytes, bytes]:
        """The model round ``round_`` starts from as float32 bytes: loaded once, shared by every download."""
        with self.model_load:
            if self.model_cache is None or self.model_cache[0] != round_:
                self.model_cache = None
                model, digest = self.store.model(self.federation, round_)
                self.model_cache = (round_, model.astype("<f4").tobytes(), digest)
            return self.model_cache[1], self.model_cache[2]

    def finish(self) -> None:
        """No (more) rounds: every long poll answers FINISHED."""
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def run(self, sampler: RssSampler) -> list[dict[str, Any]]:
        """Drive every round; return their timings."""
        fed, n = self.federation, len(self.roster.members)
        records = []
        sampler.label = "baseline"
        for r in range(self.rounds.count):
            opened, cpu = time.perf_counter(), time.process_time()
            start, start_hash = self.store.model(fed, r)
            self.store.open_round(fed, r, start_hash)
            with self.cond:
                self.total = np.zeros(self.length, dtype=np.uint32)
                self.received, self.arrived = {}, set()
                self.open = self.config(r, start_hash)
                self.cond.notify_all()
                self.cond.wait_for(lambda: len(self.arrived) == n)
                total, survivors = self.total, sorted(self.arrived)
            new_model = fedavg(self.quantizer, start, total, len(survivors))
            digest = self.store.complete_round(
                fed, r, survivors=survivors, dropped=(), new_model=new_model
            )
            with self.cond:
                self.open = None
                self.outcomes[r] = digest
                self.cond.notify_all()
            records.append(
                {
                    "round": r,
                    "seconds": time.perf_counter() - opened,
                    "cpu": time.process_time() - cpu,
                }
            )
        self.finish()
        return records


class PlainServicer(pb_grpc.FederationServicer):
    """The four calls a plain round needs, on the same generated service; every other call is UNIMPLEMENTED."""

    def __init__(self, rounds: PlainRounds) -> None:
        self._rounds = rounds

    def _caller(self, context: grpc.ServicerContext) -> str:
        # the same certificate-based identity check the secure servicer makes on every call
        auth = cast(Any, context.auth_context())
        silo = silo_identity(auth, federation=self._rounds.federation)
        if silo not in self._rounds.roster.members:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not on the roster")
        return silo

    @staticmethod
    def _timeout(context: grpc.ServicerContext) -> NoReturn:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "still open")

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        self._caller(context)
        rounds = self._rounds
        with rounds.cond:
            ready = wait_for(
                rounds.cond,
                lambda: (
                    rounds.finished
                    or (rounds.open is not None and rounds.open.round >= request.after)
                ),
                min(request.wait_seconds, 60.0),
            )
            if not ready:
                self._timeout(context)
            if rounds.open is None:
                return pb.RoundInfo(state=pb.ROUND_STATE_FINISHED, rounds=rounds.rounds.count)
            info = pb.RoundInfo(
                state=pb.ROUND_STATE_OPEN,
                stage=Stage.MASKED_INPUT.value,
                rounds=rounds.rounds.count,
                stage_deadline_unix=time.time() + LONG,
            )
            config_to_pb(rounds.open, info)
            return info

    def DownloadModel(
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        # exactly what the secure servicer does: one cached copy per round, streamed by the same chunker
        self._caller(context)
        data, digest = self._rounds.model_bytes(request.round)
        streams = len(self._rounds.roster.members)
        yield from model_chunks(data, digest, DEFAULT_MAX_MESSAGE_BYTES, streams=streams)

    async def aio_UploadMaskedInput(
        self, chunks: AsyncIterator[pb.MaskedChunk], call: AioCall
    ) -> pb.Ack:
        """As the secure servicer's upload on the asyncio server: each chunk folded (and spooled) in a worker."""
        silo = await call.run(self._caller)
        with tempfile.TemporaryFile(prefix="bench-plain-") as spool:
            while (chunk := await call.receive(chunks)) is not None:
                last = await call.run(functools.partial(self._fold, silo, chunk, spool))
                chunk = None  # released before the next receive
                if last:
                    return pb.Ack()
        await call.fail(InvalidInput("upload ended without its last chunk"))

    def _fold(
        self, silo: str, chunk: pb.MaskedChunk, spool: IO[bytes], context: grpc.ServicerContext
    ) -> bool:
        """Add one chunk to the running sum and spool it; True after the last one."""
        rounds = self._rounds
        length = rounds.length
        values = u32_from_bytes(chunk.values)
        with rounds.cond:
            config = rounds.open
            if config is None or chunk.round != config.round or chunk.silo != silo:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "wrong round or silo")
            received = rounds.received.get(silo, 0)
            end = chunk.offset + values.shape[0]
            if chunk.offset != received or end > length or silo in rounds.arrived:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad chunk")
            target = rounds.total[chunk.offset : end]
            np.add(target, values, out=target)
            rounds.received[silo] = end
        spool.write(values.tobytes())
        if not chunk.last:
            return False
        with rounds.cond:
            if rounds.received[silo] != length:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "short vector")
            rounds.arrived.add(silo)
            rounds.cond.notify_all()
        return True

    def GetResult(self, request: pb.StageRequest, context: grpc.ServicerContext) -> pb.RoundResult:
        self._caller(context)
        rounds = self._rounds
        with rounds.cond:
            if not wait_for(
                rounds.cond,
                lambda: request.round in rounds.outcomes,
                min(request.wait_seconds, 60.0),
            ):
                self._timeout(context)
            return pb.RoundResult(
                round=request.round,
                state=pb.ROUND_STATE_COMPLETED,
                survivors=sorted(rounds.roster.members),
                new_model_hash=rounds.outcomes[request.round],
            )


def serve_config(args: argparse.Namespace, paths: ConsortiumPaths, n: int) -> ServeConfig:
    """What ``secagg serve`` would load: mTLS on 127.0.0.1 port 0, SQLite, hour-long stage deadlines.

    With ``--paillier-key`` the configuration is Paillier mode's, with that joint public key (its t is the
    roster's smallest safe threshold, as below).
    """
    return ServeConfig(
        federation=paths.federation,
        listen="127.0.0.1:0",
        storage=args.storage or args.work / "coordinator.sqlite",
        roster=paths.roster,
        consortium_public_key=bytes.fromhex(
            paths.consortium_public_key.read_text(encoding="ascii").strip()
        ),
        tls=TLSPaths(ca=paths.ca_cert, cert=paths.coordinator_cert, key=paths.coordinator_key),
        audit_key=paths.audit_key,
        model=ModelConfig(size=args.length, init="zeros"),
        rounds=RoundsConfig(
            count=args.rounds,
            threshold=threshold_for(n),
            clip=CLIP,
            collusion=0,
            min_cohort=MIN_COHORT,
            bits=BITS,
        ),
        deadlines=Deadlines(
            masking=MaskingDeadlines(
                advertise=LONG, share_keys=LONG, masked_input=LONG, consistency=LONG, unmask=LONG
            ),
            paillier=PaillierDeadlines(collect=LONG, decrypt=LONG),
        ),
        mode="paillier" if args.paillier_key is not None else "masking",
        paillier_public_key=args.paillier_key,
    )


def plain_server(plain: PlainRounds, tls: TlsFiles) -> tuple[AioServer, int]:
    """The baseline's gRPC server: same generated service, gRPC options, mTLS requirements and asyncio server
    (:class:`~coordinator.server.aio.AioBridge`: admission, the fair worker pool, polls that hold no thread)."""
    bridge = AioBridge(
        limits=plain.limits,
        identify=lambda context: silo_identity(
            cast(Any, context.auth_context()), federation=plain.federation
        ),
        metrics=Metrics(),
        listen=plain.cond.listen,
    )
    handlers = bridge.handlers(pb_grpc.add_FederationServicer_to_server, PlainServicer(plain))

    async def build() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(
            handlers=handlers, options=server_options(DEFAULT_MAX_MESSAGE_BYTES)
        )
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
        )
        return server, server.add_secure_port("127.0.0.1:0", credentials)

    server, port = on_loop(build())
    return AioServer(server, bridge), port


def run_coordinator(args: argparse.Namespace) -> int:
    """Sub-mode ``coordinator``: serve the secure rounds, then the baseline rounds; write figures as JSON."""
    if args.paillier_key is not None:
        return run_paillier_coordinator(args)
    paths = ConsortiumPaths.load(args.pki)
    roster, _ = load_roster(paths)
    config = serve_config(args, paths, len(roster.members))
    tls = TlsFiles(
        paths.ca_cert.read_bytes(),
        paths.coordinator_cert.read_bytes(),
        tls_key_pem(paths.coordinator_key),
    )
    profiles = ThreadProfiles() if args.profile else None
    if profiles is not None:
        profiles.install()  # before any server thread exists, so every handler thread is profiled
    tune_allocator()  # what start_coordinator does, so that a baseline-only process has it too

    plain_store = SQLiteStore(args.work / "baseline.sqlite")
    plain = PlainRounds(config=config, roster=roster, store=plain_store)
    baseline, plain_port = plain_server(plain, tls)
    baseline.start()
    # exactly what `secagg serve` starts; round 0 opens once min_cohort silos have joined
    coordinator = start_coordinator(config) if args.secure else None
    if coordinator is not None:
        coordinator.service.model_bytes(0)  # round 0's model is loaded, as when it opens
    elif args.baseline:
        plain.model_bytes(0)  # the same state for the baseline
    gc.collect()
    idle = rss_bytes()  # serving, round 0's model loaded, no silo connected yet, nothing received
    sampler = RssSampler()
    sampler.start()
    print(f"PORTS {coordinator.port if coordinator else 0} {plain_port}", flush=True)

    secure: list[dict[str, Any]] = []
    if coordinator is not None:
        first = sorted(roster.members)[0]
        service = cast(MaskingRounds, coordinator.service)
        secure = secure_rounds(service, args.rounds, first, sampler, args.round_timeout)
    timed_out = any(r.get("timed_out") for r in secure)
    peak = peak_rss_bytes()
    profile = profiles.report() if profiles is not None else ""

    # after a timed-out secure round the silos are still in it: no baseline here (the orchestrator runs it
    # in processes of its own)
    plain_records = plain.run(sampler) if args.baseline and not timed_out else []
    plain.finish()
    sampler.stop()
    result = {
        "idle_rss": idle,
        "peak_rss": peak,  # at the end of the secure rounds
        "peak_rss_end": peak_rss_bytes(),  # after the baseline rounds too
        "stage_rss": sampler.peaks,
        "stage_malloc": sampler.malloc,
        "secure": secure,
        "baseline": plain_records,
        "profile": profile,
    }
    args.out.write_text(json.dumps(result), encoding="utf-8")
    # keep serving until every silo has seen both federations finish, then stop
    print("RESULT timeout" if timed_out else "RESULT", flush=True)
    if timed_out:
        return 0  # the orchestrator kills every process of the scenario
    sys.stdin.readline()
    if coordinator is not None:
        coordinator.stop()
    baseline.stop(1.0).wait()
    plain_store.close()
    return 0


def paillier_rounds(
    service: PaillierRounds, rounds: int, sampler: RssSampler
) -> list[dict[str, Any]]:
    """Stamp each Paillier round's start, the close of its collect stage and its completion.

    Called once every silo has been released: round 0, already open, is timed from that moment.
    """
    from coordinator.rounds.paillier import PaillierStage

    records = []
    for r in range(rounds):
        view = service.view(after=r, wait=LONG)
        opened, cpu = time.perf_counter(), time.process_time()
        if view.config.round_number != r:
            raise RuntimeError(f"monitor missed the opening of round {r}")
        sampler.label = PaillierStage.COLLECT.value
        service.wait_past(r, PaillierStage.COLLECT, LONG)
        collected = time.perf_counter()
        sampler.label = PaillierStage.DECRYPT.value
        outcome = service.result(r, LONG)
        done = time.perf_counter()
        if outcome.status is not RoundStatus.COMPLETED:
            raise RuntimeError(f"round {r} did not complete: {outcome.reason}")
        if len(outcome.survivors) != len(service.roster.members):
            raise RuntimeError(f"round {r} completed without every silo: {outcome.dropped}")
        records.append(
            {
                "round": r,
                "seconds": done - opened,
                "cpu": time.process_time() - cpu,
                "survivors": len(outcome.survivors),
                "stages": {"collect": collected - opened, "decrypt": done - collected},
                "load": load_averages(),
            }
        )
    return records


def run_paillier_coordinator(args: argparse.Namespace) -> int:
    """Sub-mode ``coordinator --paillier-key``: serve Paillier rounds (no baseline); write figures as JSON."""
    paths = ConsortiumPaths.load(args.pki)
    roster, _ = load_roster(paths)
    config = serve_config(args, paths, len(roster.members))
    profiles = ThreadProfiles() if args.profile else None
    if profiles is not None:
        profiles.install()
    # exactly what `secagg serve` starts in Paillier mode; round 0 opens once min_cohort silos have joined
    coordinator = start_coordinator(config)
    service = cast("PaillierRounds", coordinator.service)
    service.model_bytes(0)  # round 0's model is loaded, as when it opens
    gc.collect()
    idle = rss_bytes()  # serving, round 0's model loaded, no silo connected yet, nothing received
    sampler = RssSampler()
    sampler.label = "join"  # the silos connect and join before they are released
    sampler.start()
    print(f"PORTS {coordinator.port} 0", flush=True)
    if sys.stdin.readline().strip() != "GO":  # released together with the silos
        return 1
    secure = paillier_rounds(service, args.rounds, sampler)
    peak = peak_rss_bytes()
    profile = profiles.report() if profiles is not None else ""
    sampler.stop()
    result = {
        "idle_rss": idle,
        "peak_rss": peak,
        "peak_rss_end": peak,
        "stage_rss": sampler.peaks,
        "stage_malloc": sampler.malloc,
        "secure": secure,
        "baseline": [],
        "profile": profile,
    }
    args.out.write_text(json.dumps(result), encoding="utf-8")
    print("RESULT", flush=True)
    sys.stdin.readline()  # STOP: every silo has seen the federation finish
    coordinator.stop()
    return 0


# == silo process ==================================================================================
def long_poll(call: Callable[[], T]) -> T:
    """Repeat a long-polling call until the server answers (it says DEADLINE_EXCEEDED while still open)."""
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise


def plain_rounds(sdk: Silo, update: F64) -> list[float]:
    """Baseline rounds through the SDK's own channel, model download and chunker; returns CPU s per round."""
    # Private SDK members on purpose: the baseline's bytes must take exactly the SDK's path (same channel
    # options, same credentials, same chunk messages); only the protocol stages differ.
    transport, fed = sdk._transport, sdk.federation
    stub, metadata = transport.stub(pb_grpc.FederationStub), transport._metadata
    cpu: list[float] = []
    after = 0
    while True:
        start = time.process_time()
        request = pb.GetRoundRequest(federation=fed, after=after, wait_seconds=POLL)
        # wait_for_ready: every silo connects to the baseline server at once; a TLS handshake that times out
        # under that load is retried by the channel, as the SDK's RetryPolicy does on the secure server
        info: pb.RoundInfo = long_poll(
            functools.partial(stub.GetRound, request, metadata=metadata, wait_for_ready=True)
        )
        if info.state == pb.ROUND_STATE_FINISHED:
            return cpu
        config = config_from_pb(info)
        r, after = config.round, config.round + 1
        weights = sdk.download_model(r, config.model_hash)
        trained = np.asarray(train_fn(update)(RoundContext(r, weights, config)), dtype=np.float64)
        encoded = config.quantizer.encode(trained)
        chunks = sdk._mode.accept(info)._chunks(encoded, Attestation())  # type: ignore[attr-defined]
        stub.UploadMaskedInput(chunks, metadata=metadata)
        stage = pb.StageRequest(federation=fed, round=r, silo=sdk.silo, wait_seconds=POLL)
        result: pb.RoundResult = long_poll(
            functools.partial(stub.GetResult, stage, metadata=metadata)
        )
        if result.state != pb.ROUND_STATE_COMPLETED:
            raise RuntimeError(f"baseline round {r} did not complete")
        cpu.append(time.process_time() - start)


def train_fn(update: F64) -> Callable[[RoundContext | PaillierRoundContext], F64]:
    """The "training" of every silo: return the same update each round (no torch, no data)."""

    def train(ctx: RoundContext | PaillierRoundContext) -> F64:
        return update

    return train


def run_silo(args: argparse.Namespace) -> int:
    """Sub-mode ``silo``: join, wait for GO, run the secure rounds with the SDK, then the baseline rounds.

    ``--silo`` names one silo, or several (comma-separated) for a pool process: each then runs in a thread of
    its own with its own SDK ``Silo``, i.e. its own gRPC channel, credentials and TLS identity and its own
    signing key. gRPC core keys a subchannel by its channel arguments, credentials included, so no two silos
    share a connection; the coordinator checks every call's certificate against the silo it names, so a shared
    one would be refused, not silently counted, and the orchestrator counts the coordinator's connections.
    CPU seconds are the process's (``time.process_time``), stamped at the round ends of the pool's first silo.

    With ``--paillier`` the secure rounds are Paillier mode's, with the SDK's ``PaillierSilo``.
    """
    paths = ConsortiumPaths.load(args.pki)
    roster, consortium_key = load_roster(paths)
    names = args.silo.split(",")
    pool = len(names) > 1

    def identity(name: str) -> dict[str, Any]:
        mine = paths.silos[name]
        tls = TlsFiles(mine.ca_cert.read_bytes(), mine.cert.read_bytes(), tls_key_pem(mine.key))
        return {
            "federation": paths.federation,
            "silo": name,
            "signing_key": load_ed25519_private(mine.signing_key),
            "roster": roster,
            "consortium_key": consortium_key,
            "tls": tls,
        }

    def connect(address: str, name: str) -> Silo:
        return Silo(address=address, **identity(name))

    def connect_paillier(address: str, name: str) -> PaillierSilo:
        from coordinator.pki.paillier import PaillierFiles
        from coordinator.sdk.paillier import PaillierSilo

        files = PaillierFiles.for_silo(paths.root, name)
        public_key, share = files.load(federation=paths.federation, consortium_key=consortium_key)
        return PaillierSilo(
            address=address,
            public_key=public_key,
            share=share,
            state_dir=args.state / name,
            **identity(name),
        )

    profiles = ThreadProfiles() if args.profile else None
    if profiles is not None:
        profiles.install()  # before the SDK's channel exists, so gRPC's request-streaming threads are included
    joined = threading.Barrier(len(names) + 1)
    go = threading.Event()
    secure_cpu: list[float] = []
    baseline_cpu: list[float] = []
    failures: list[str] = []

    def silo_thread(index: int, name: str) -> None:
        update = fixed_update(args.length, args.seed + index)
        first = index == 0
        try:
            if args.secure is not None:
                sdk_cm = (
                    connect_paillier(args.secure, name)
                    if args.paillier
                    else connect(args.secure, name)
                )
                with sdk_cm as sdk:
                    sdk.join()
                    joined.wait()
                    go.wait()
                    start = time.process_time()
                    for report in sdk.run(train_fn(update)):
                        if report.status is not RoundStatus.COMPLETED:
                            raise RuntimeError(
                                f"{name}: round {report.round} ended {report.status}: {report.reason}"
                            )
                        now = time.process_time()
                        if first:
                            secure_cpu.append(now - start)
                        start = now
            else:
                joined.wait()
                go.wait()
            if args.baseline is not None:
                with connect(args.baseline, name) as sdk:
                    cpu = plain_rounds(sdk, update)
                if first:
                    baseline_cpu.extend(cpu)
        except BaseException as exc:  # reported by the process: the orchestrator shows its log
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"silo {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            joined.abort()

    threads = [
        threading.Thread(target=silo_thread, args=(i, name), name=f"silo-{name}", daemon=True)
        for i, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    try:
        joined.wait()
    except threading.BrokenBarrierError:
        return 1
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    go.set()
    for thread in threads:
        thread.join()
    if failures:
        return 1
    profile = profiles.report() if profiles is not None else ""
    done = {
        "silos": len(names),
        "pool": pool,
        "secure_cpu": secure_cpu,
        "baseline_cpu": baseline_cpu,
        "peak_rss": peak_rss_bytes(),
        "profile": profile,
    }
    print("DONE " + json.dumps(done), flush=True)
    return 0


# == orchestration =================================================================================
@dataclass
class Figures:
    """What one scenario measured."""

    scenario: Scenario
    coordinator: dict[str, Any]
    silos: list[dict[str, Any]] = field(default_factory=list)
    plain: Figures | None = None  # the baseline, when it ran in its own processes
    # load averages when the silos were released ("go") and at the end ("end")
    loads: dict[str, str] = field(default_factory=dict)
    connections: int = (
        0  # established TCP connections to the coordinator's port when the silos were released
    )
    timed_out: bool = False  # a secure round was still open after the scenario's round timeout

    def _median(self, records: Sequence[dict[str, Any]], key: str) -> float:
        measured = records[1:] or records  # round 0 is warm-up unless it is the only round
        return statistics.median(float(r[key]) for r in measured)

    def secure_s(self) -> float:
        return self._median(self.coordinator["secure"], "seconds")

    def baseline_s(self) -> float | None:
        if self.plain is not None:
            return self.plain.baseline_s()
        baseline = self.coordinator["baseline"]
        return self._median(baseline, "seconds") if baseline else None

    def secure_stage(self, stage: Stage) -> float:
        measured = self.coordinator["secure"][1:] or self.coordinator["secure"]
        return statistics.median(float(r["stages"][stage.value]) for r in measured)

    def cpu(self, mode: str) -> tuple[float, float] | None:
        """Median CPU seconds per round of (the coordinator process, all silo processes together)."""
        if mode == "baseline" and self.plain is not None:
            return self.plain.cpu(mode)
        if not self.coordinator[mode]:
            return None
        coordinator = self._median(self.coordinator[mode], "cpu")
        per_round = [
            sum(rounds) for rounds in zip(*(s[f"{mode}_cpu"] for s in self.silos), strict=True)
        ]
        silos = statistics.median(per_round[1:] or per_round)
        return coordinator, silos

    def vector_bytes(self) -> int:
        return VECTOR_BYTES_PER_COORDINATE * self.scenario.length


def tcp_connections(port: int) -> int:
    """Established TCP connections whose local end is ``port`` (the server's side; Linux ``/proc/net/tcp*``)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as rows:
            next(rows, None)
            for row in rows:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


class Children:
    """The child processes of one scenario; every one still alive at the end is killed by its own handle."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[str], Path]] = []
        env = dict(os.environ) | CHILD_ENV
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.env = env

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        log = self.logs / f"{name}.log"
        with log.open("w", encoding="utf-8") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self.env,
                text=True,
            )
        self.procs.append((name, proc, log))
        return proc

    def line(self, proc: subprocess.Popen[str], prefix: str) -> str:
        """The next stdout line of ``proc``; it must start with ``prefix``."""
        assert proc.stdout is not None
        text = proc.stdout.readline()
        if not text.startswith(prefix):
            self.fail(proc, f"expected {prefix!r}, got {text!r}")
        return text[len(prefix) :].strip()

    def fail(self, proc: subprocess.Popen[str], what: str) -> NoReturn:
        """Stop the benchmark with the tail of the failed child's log."""
        name, _, log = next(p for p in self.procs if p[1] is proc)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
        tail = log.read_text(encoding="utf-8")[-3000:]
        first, _, first_log = self.procs[
            0
        ]  # the coordinator: its log usually says why a silo failed
        if first_log != log:
            tail += f"\n--- {first} log:\n" + first_log.read_text(encoding="utf-8")[-3000:]
        raise SystemExit(f"{name} failed ({what}):\n{tail}")

    @staticmethod
    def send(proc: subprocess.Popen[str], text: str) -> None:
        stdin = cast(IO[str], proc.stdin)
        stdin.write(text + "\n")
        stdin.flush()

    def kill_all(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_scenario(
    scenario: Scenario,
    pki: ConsortiumPaths,
    work: Path,
    *,
    secure: bool,
    baseline: bool,
    profile: bool,
    paillier_key: Path | None = None,
    storage: str | None = None,
) -> Figures:
    """Start the coordinator and the silo processes of ``scenario``, run it, collect the figures.

    ``storage``: the coordinator's store URL (a fresh PostgreSQL database); absent, SQLite in ``work``.

    With ``paillier_key`` (the joint public key of ``pki``) the scenario runs in Paillier mode, without a
    baseline.
    """
    work.mkdir()
    children = Children(work)
    watchdog = threading.Timer(scenario.timeout, children.kill_all)
    watchdog.daemon = True
    watchdog.start()
    out = work / "coordinator.json"
    try:
        common = ["--pki", str(pki.root), "--length", str(scenario.length)]
        coordinator = children.start(
            "coordinator",
            [
                "coordinator",
                *common,
                *("--work", str(work), "--out", str(out), "--rounds", str(scenario.rounds)),
                *(["--baseline"] if baseline else []),
                *([] if secure else ["--no-secure"]),
                *(["--profile"] if profile else []),
                *(["--paillier-key", str(paillier_key)] if paillier_key else []),
                *(["--storage", storage] if storage else []),
                *(
                    ["--round-timeout", str(scenario.round_timeout)]
                    if scenario.round_timeout
                    else []
                ),
            ],
        )
        secure_port, plain_port = children.line(coordinator, "PORTS ").split()
        names = sorted(pki.silos)
        k = max(1, scenario.per_process)
        groups = [names[i : i + k] for i in range(0, len(names), k)]
        silos = [
            children.start(
                group[0] if k == 1 else f"pool-{g:02d}",
                [
                    "silo",
                    *common,
                    *("--silo", ",".join(group), "--seed", str(g * k)),
                    *(["--secure", f"127.0.0.1:{secure_port}"] if secure else []),
                    *(["--baseline", f"127.0.0.1:{plain_port}"] if baseline else []),
                    *(["--profile"] if profile and g == 0 else []),
                    *(["--paillier", "--state", str(work / "state")] if paillier_key else []),
                ],
            )
            for g, group in enumerate(groups)
        ]
        for proc in silos:
            children.line(proc, "READY")
        load_at_go = load_averages()
        connections = tcp_connections(int(secure_port if secure else plain_port))
        for proc in silos:
            children.send(proc, "GO")
        if paillier_key is not None:
            children.send(coordinator, "GO")  # its rounds are timed from here
        # the coordinator answers first: after a timed-out round the silos never finish
        ended = children.line(coordinator, "RESULT")
        if ended == "timeout":
            loads = {"go": load_at_go, "end": load_averages()}
            result = json.loads(out.read_text(encoding="utf-8"))
            return Figures(
                scenario, result, [], loads=loads, connections=connections, timed_out=True
            )
        reports = [json.loads(children.line(proc, "DONE ")) for proc in silos]
        loads = {"go": load_at_go, "end": load_averages()}
        children.send(coordinator, "STOP")
        if coordinator.wait(SCENARIO_TIMEOUT) != 0:
            children.fail(coordinator, f"exit status {coordinator.returncode}")
        for proc in silos:
            proc.wait(SCENARIO_TIMEOUT)
        return Figures(
            scenario,
            json.loads(out.read_text(encoding="utf-8")),
            reports,
            loads=loads,
            connections=connections,
        )
    finally:
        watchdog.cancel()
        children.kill_all()


SCENARIO_KEYS = ("10x1M", "50x100k", "50x1M")  # the default run
PAILLIER_KEYS = ("paillier10x100k", "paillier10x300k")  # long: only when named with --only


def scenarios(quick: bool, rounds: int | None, only: Sequence[str] = ()) -> list[Scenario]:
    """The scenarios to run; ``rounds`` timed rounds each (plus the warm-up round 0)."""
    if quick:
        return [
            Scenario("5 silos x 50k", 5, 50_000, (rounds or 1) + 1, ""),
            Scenario(
                "5 Paillier silos x 2k",
                5,
                2_000,
                (rounds or 1) + 1,
                "",
                paillier=True,
                key_bits=1024,
            ),
        ]
    r = (rounds or 5) + 1
    p = (rounds or 1) + 1  # Paillier: round 0 and one more (each takes minutes)
    plan = {
        "10x1M": Scenario("10 silos x 1M", 10, 1_000_000, r, "ratio"),
        "50x100k": Scenario("50 silos x 100k", 50, 100_000, r, "seconds"),
        "50x1M": Scenario("50 silos x 1M", 50, 1_000_000, (rounds or 2) + 1, "rss", True),
        "paillier10x100k": Scenario(
            "10 Paillier silos x 100k", 10, 100_000, p, "", paillier=True, timeout=1800.0
        ),
        "paillier10x300k": Scenario(
            "10 Paillier silos x 300k", 10, 300_000, p, "", paillier=True, timeout=3600.0
        ),
    }
    if not only:
        return [plan[k] for k in SCENARIO_KEYS]
    return [plan[k] for k in (*SCENARIO_KEYS, *PAILLIER_KEYS) if k in only]


SILO_PROCESS_BYTES = 120_000_000
"""RSS of one silo process before its vectors (interpreter, numpy, grpcio, cryptography, the SDK), rounded up
from the "largest silo process" lines of this benchmark at 100,000 parameters."""

SILO_VECTOR_COPIES = 10
"""Vector-sized buffers (4 bytes a parameter) a silo holds at its peak: the float64 update (2), the model, the
quantized and masked vectors, the PRG streams and the upload's chunks; rounded up."""


def silo_process_bytes(params: int) -> int:
    """Estimated peak RSS of one silo process at ``params`` parameters."""
    return SILO_PROCESS_BYTES + SILO_VECTOR_COPIES * VECTOR_BYTES_PER_COORDINATE * params


def available_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), or 0 where it cannot be read."""
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def silos_per_process(silos: int, params: int, choice: str) -> int:
    """Silos per OS process: ``choice`` if given, else 1 unless ``silos`` processes would take more than 60%
    of the available memory (the machine is shared), then the fewest per process that fit in that share."""
    if choice != "auto":
        return max(1, int(choice))
    budget = available_bytes() * 3 // 5
    each = silo_process_bytes(params)
    if budget <= 0 or silos * each <= budget:
        return 1
    processes = max(1, budget // each)
    return -(-silos // processes)


def sweep_scenario(silos: int, params: int, args: argparse.Namespace) -> Scenario:
    """The ``--silos N --params P`` scenario: secure and baseline rounds in the same processes."""
    rounds = (args.rounds or 3) + 1
    timeout = SCENARIO_TIMEOUT
    if args.round_timeout:
        # every round its timeout, round 0 start-up too (secure_rounds), and the silos' start-up
        timeout = rounds * args.round_timeout + 1200.0
    return Scenario(
        f"{silos} silos x {params}",
        silos,
        params,
        rounds,
        "",
        timeout=timeout,
        per_process=silos_per_process(silos, params, args.silos_per_process),
        round_timeout=args.round_timeout,
    )


def secure_cell(f: Figures) -> str:
    """The secure round time, or ``> T`` (a lower bound) when a round timed out."""
    if f.timed_out:
        return f"> {f.coordinator['secure'][-1]['seconds']:.1f}"
    return f"{f.secure_s():.2f}"


def sweep_report(figures: Sequence[Figures]) -> None:
    """One row per ``--silos N --params P`` scenario: median round times, ratio, processes and load."""
    header = (
        f"{'scenario':<26} {'rounds':>6} {'secure s':>9} {'plain s':>8} {'ratio':>6} "
        f"{'CPU s secure':>12} {'CPU s plain':>12} {'RSS/vec':>7} "
        f"{'processes':>9} {'per proc':>8} {'conns':>5} {'silo RSS MB':>11}  load average at GO -> at end"
    )
    print(
        "sweep: median round time over rounds 1..R (round 0 is warm-up); secure = the real `secagg serve` "
        "code path with masking, plain = the same transport carrying unmasked vectors; 'per proc' > 1: a pool "
        "of processes, each silo its own thread, gRPC channel and TLS identity; conns = TCP connections to the "
        "coordinator when the silos were released; CPU s = coordinator + all silo processes per round (medians), a "
        "lower bound of cores x round time that other jobs on the machine do not inflate; RSS/vec = coordinator "
        "peak above idle over the secure rounds, in vectors of 4 bytes a parameter"
    )
    print(header)
    print("-" * len(header))
    for f in figures:
        s = f.scenario
        baseline = f.baseline_s()
        ratio = "-" if f.timed_out or not baseline else f"{f.secure_s() / baseline:.2f}"
        measured = len(f.coordinator["secure"]) - 1
        processes = -(-s.silos // s.per_process)
        rss = max((int(r["peak_rss"]) for r in f.silos), default=0)
        loads = f"{f.loads.get('go', '?')} -> {f.loads.get('end', '?')}"
        cpu = {
            mode: f.cpu(mode) if f.silos or mode == "baseline" else None
            for mode in ("secure", "baseline")
        }
        cells = {m: f"{c[0]:.2f}+{c[1]:.2f}" if c else "-" for m, c in cpu.items()}
        vectors = (f.coordinator["peak_rss"] - f.coordinator["idle_rss"]) / f.vector_bytes()
        if f.plain is not None:
            loads += (
                f"; plain run {f.plain.loads.get('go', '?')} -> {f.plain.loads.get('end', '?')}"
            )
        print(
            f"{s.name:<26} {max(measured, 0):>6} {secure_cell(f):>9} "
            f"{(f'{baseline:.2f}' if baseline else '-'):>8} {ratio:>6} {cells['secure']:>12} "
            f"{cells['baseline']:>12} {vectors:>7.1f} {processes:>9} {s.per_process:>8} "
            f"{f.connections:>5} {(mb(rss) if rss else '-'):>11}  {loads}"
        )
        if f.timed_out:
            print(
                f"{'':<26} a secure round was still open after {s.round_timeout:.0f} s (--round-timeout): "
                "the figure is a lower bound; the baseline ran in processes of its own"
            )
    print()
    timed = [f for f in figures if not f.timed_out]
    if timed:
        stages = "  ".join(f"{st.value:>17}" for st in SECURE_STAGES)
        print(f"{'secure stage s (median)':<26} {stages}")
        for f in timed:
            print(
                f"{f.scenario.name:<26} "
                + "  ".join(f"{f.secure_stage(st):>17.3f}" for st in SECURE_STAGES)
            )
        print()


def last_line(f: Figures) -> str:
    """``N silos x P params: secure X s, plain Y s``, the line scripts read (``> X`` after a timeout)."""
    s = f.scenario
    baseline = f.baseline_s()
    plain = f"{baseline:.2f}" if baseline else "-"
    return f"{s.silos} silos x {s.length} params: secure {secure_cell(f)} s, plain {plain} s"


def load_average() -> str:
    """The 1-minute load average: on a shared machine it says how much the figures were disturbed."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def load_averages() -> str:
    """The 1-, 5- and 15-minute load averages."""
    try:
        return " ".join(f"{a:.2f}" for a in os.getloadavg())
    except OSError:
        return "unknown"


def verdict(ok: bool, judged: bool) -> str:
    if not judged:
        return "-"
    return "ok" if ok else "MISSED"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _rss_row(
    name: str, coordinator: dict[str, Any], peak_key: str, vector: int
) -> tuple[str, float]:
    idle, peak = coordinator["idle_rss"], coordinator[peak_key]
    ratio = (peak - idle) / vector
    return f"{name:<30} {mb(idle):>8} {mb(peak):>8} {mb(vector):>10} {ratio:>19.1f}", ratio


def report(figures: Sequence[Figures], *, quick: bool) -> None:
    """Print the result tables: the masking scenarios', then the Paillier scenarios'."""
    masking = [f for f in figures if not f.scenario.paillier]
    paillier = [f for f in figures if f.scenario.paillier]
    if masking:
        masking_report(masking, quick=quick)
    if masking and paillier:
        print()
    if paillier:
        paillier_report(paillier)


def paillier_report(figures: Sequence[Figures]) -> None:
    """Print the Paillier scenarios' tables and their one-line summaries."""
    header = (
        f"{'Paillier coordinator RSS':<30} {'idle MB':>8} {'peak MB':>8} {'vector MB':>10} "
        f"{'(peak-idle)/vector':>19}  {'key':>4} {'t':>2}  load average at GO -> at end"
    )
    print(header)
    print("-" * len(header))
    for f in figures:
        row, _ = _rss_row(f.scenario.name, f.coordinator, "peak_rss", f.vector_bytes())
        t = threshold_for(f.scenario.silos)
        loads = f"{f.loads.get('go', '?')} -> {f.loads.get('end', '?')}"
        print(f"{row}  {f.scenario.key_bits:>4} {t:>2}  {loads}")
    print()
    header = (
        f"{'Paillier round':<30} {'round':>5} {'wall s':>8} {'collect s':>10} {'decrypt s':>10} "
        f"{'coord CPU s':>11} {'silos CPU s':>11}  load average at round end"
    )
    print(header)
    print("-" * len(header))
    for f in figures:
        for rec in f.coordinator["secure"]:
            r = rec["round"]
            silos_cpu = sum(s["secure_cpu"][r] for s in f.silos if len(s["secure_cpu"]) > r)
            stages = rec["stages"]
            print(
                f"{f.scenario.name if r == 0 else '':<30} {r:>5} {rec['seconds']:>8.2f} "
                f"{stages['collect']:>10.2f} {stages['decrypt']:>10.2f} {rec['cpu']:>11.2f} "
                f"{silos_cpu:>11.2f}  {rec['load']}"
            )
    print(
        f"{'':<30} (round 0 is timed from the release of the silos; every stage deadline {LONG:.0f} s)"
    )
    print()
    print(
        "Paillier coordinator RSS peak by stage (sampled every 10 ms, MB; silo processes are not counted)"
    )
    print("-" * 86)
    for f in figures:
        peaks = f.coordinator["stage_rss"]
        print(f"{f.scenario.name:<30} " + ", ".join(f"{k} {mb(v)}" for k, v in peaks.items()))
        biggest = max(int(s["peak_rss"]) for s in f.silos)
        print(f"{'':<30} largest silo process: {mb(biggest)} MB")
    print()
    for f in figures:
        c = f.coordinator
        vectors = (c["peak_rss"] - c["idle_rss"]) / f.vector_bytes()
        print(
            f"paillier coordinator peak above idle: {vectors:.1f} vectors "
            f"({f.scenario.silos} silos x {f.scenario.length})"
        )


def masking_report(figures: Sequence[Figures], *, quick: bool) -> None:
    """Print the masking scenarios' tables."""
    header = f"{'scenario':<30} {'rounds':>6} {'secure s':>9} {'baseline s':>11} {'ratio':>7}  {'target':<16} met?"
    print(header)
    print("-" * len(header))
    for f in figures:
        s = f.scenario
        secure, baseline = f.secure_s(), f.baseline_s()
        ratio = secure / baseline if baseline else None
        judged = not quick and s.target in ("ratio", "seconds")
        if s.target == "ratio" and ratio is not None:
            target, ok = f"ratio <= {TARGET_RATIO}", ratio <= TARGET_RATIO
        elif s.target == "seconds":
            target, ok = f"secure < {TARGET_50_SECONDS:.0f} s", secure < TARGET_50_SECONDS
        else:
            target, ok = "(memory: below)" if s.target == "rss" else "-", True
        measured = max(len(f.coordinator["secure"]) - 1, 1)
        print(
            f"{s.name:<30} {measured:>6} {secure:>9.2f} "
            f"{(f'{baseline:.2f}' if baseline else '-'):>11} {(f'{ratio:.2f}' if ratio else '-'):>7}  "
            f"{target:<16} {verdict(ok, judged)}"
        )
    flower = FLOWER_SECURE_S / FLOWER_PLAIN_S
    print(
        f"{'Flower SecAgg, 50 x 100k':<30} {'':>6} {FLOWER_SECURE_S:>9.1f} {FLOWER_PLAIN_S:>11.2f} "
        f"{flower:>7.1f}  {'reference only':<16} (the issue's figures, other hardware)"
    )
    print()
    header = f"{'coordinator RSS':<30} {'idle MB':>8} {'peak MB':>8} {'vector MB':>10} {'(peak-idle)/vector':>19}  target <= {TARGET_RSS_VECTORS:.0f}x"
    print(header)
    print("-" * len(header))
    for f in figures:
        row, ratio = _rss_row(f.scenario.name, f.coordinator, "peak_rss", f.vector_bytes())
        judged = not quick and f.scenario.target == "rss"
        print(f"{row}  {verdict(ratio <= TARGET_RSS_VECTORS, judged) if judged else ''}")
        if f.plain is not None:
            row, _ = _rss_row(
                "  baseline (plain streaming)",
                f.plain.coordinator,
                "peak_rss_end",
                f.vector_bytes(),
            )
            print(f"{row}  (same transport, no secure aggregation)")
    print()
    stages = "  ".join(f"{s.value:>17}" for s in SECURE_STAGES)
    header = f"{'secure stage s (median)':<30} {stages}"
    print(header)
    print("-" * len(header))
    for f in figures:
        print(
            f"{f.scenario.name:<30} "
            + "  ".join(f"{f.secure_stage(s):>17.3f}" for s in SECURE_STAGES)
        )
    print()
    header = f"{'CPU s per round (median)':<30} {'coord secure':>12} {'silos secure':>12} {'coord plain':>12} {'silos plain':>12}"
    print(header)
    print("-" * len(header))
    for f in figures:
        cells = []
        for mode in ("secure", "baseline"):
            cpu = f.cpu(mode)
            cells += [f"{c:>12.2f}" for c in cpu] if cpu else [f"{'-':>12}"] * 2
        print(f"{f.scenario.name:<30} " + " ".join(cells))
    print()
    print("coordinator RSS peak by stage (sampled every 10 ms, MB; silo processes are not counted)")
    print("-" * 86)
    for f in figures:
        peaks = dict(f.coordinator["stage_rss"])
        if f.plain is not None:
            peaks["baseline"] = f.plain.coordinator["stage_rss"].get("baseline", 0)
        print(f"{f.scenario.name:<30} " + ", ".join(f"{k} {mb(v)}" for k, v in peaks.items()))
        malloc = dict(f.coordinator.get("stage_malloc", {}))
        if f.plain is not None and "baseline" in f.plain.coordinator.get("stage_malloc", {}):
            malloc["baseline"] = f.plain.coordinator["stage_malloc"]["baseline"]
        if malloc:
            print(
                f"{'  malloc in use / free MB':<30} "
                + ", ".join(f"{k} {mb(v['in_use'])} / {mb(v['free'])}" for k, v in malloc.items())
            )
        biggest = max(int(s["peak_rss"]) for s in f.silos)
        print(f"{'':<30} largest silo process: {mb(biggest)} MB")


def store_report(pairs: Sequence[tuple[Figures, Figures]]) -> None:
    """The same secure rounds on SQLite and on PostgreSQL, as ratios (load average at the end of each run)."""
    header = (
        f"{'store: PostgreSQL / SQLite':<30} {'SQLite s':>9} {'load':>5} {'PG s':>9} {'load':>5} {'ratio':>6}"
        f"  {'idle MB SQLite/PG':>18} {'ratio':>6}  {'peak MB SQLite/PG':>18} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for lite, pg in pairs:
        a, b = lite.secure_s(), pg.secure_s()
        loads = [f.loads.get("end", "?").split()[0] for f in (lite, pg)]  # the 1-minute figure
        idle = (lite.coordinator["idle_rss"], pg.coordinator["idle_rss"])
        peak = (lite.coordinator["peak_rss"], pg.coordinator["peak_rss"])
        print(
            f"{lite.scenario.name:<30} {a:>9.2f} {loads[0]:>5} {b:>9.2f} {loads[1]:>5} {b / a:>6.2f}  "
            f"{f'{mb(idle[0])}/{mb(idle[1])}':>18} {idle[1] / idle[0]:>6.2f}  "
            f"{f'{mb(peak[0])}/{mb(peak[1])}':>18} {peak[1] / peak[0]:>6.2f}"
        )


def failover_report(trials: Sequence[tuple[float, str]]) -> None:
    """Leader SIGKILLed -> next round open on the standby, over the trials."""
    seconds = [t for t, _ in trials]
    print(
        f"failover (2 replicas on PostgreSQL, leader SIGKILLed -> round open on the standby), {len(trials)} trials: "
        f"min {min(seconds):.2f} s, median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s"
    )
    print("  per trial (s @ load average): " + ", ".join(f"{t:.2f} @ {load}" for t, load in trials))


def deal_key(pki: ConsortiumPaths, scenario: Scenario) -> Path:
    """A t-of-n threshold Paillier key for the consortium (t = the smallest safe threshold); its public key."""
    from coordinator.pki.paillier import create_paillier_keys

    t, started = threshold_for(scenario.silos), time.perf_counter()
    public_key = create_paillier_keys(
        pki,
        threshold=t,
        key_bits=scenario.key_bits,
        insecure_test_key_size=scenario.key_bits < PAILLIER_KEY_BITS,
    )
    print(
        f"  Paillier key ceremony ({scenario.key_bits}-bit key, t = {t}): "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return public_key


def main(argv: Sequence[str] | None = None) -> int:
    # no abbreviations: the sub-modes' --silo would otherwise be taken for --silos
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None, allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="mode")
    child = sub.add_parser("coordinator", help="internal: the coordinator process of one scenario")
    child.add_argument("--pki", type=Path, required=True)
    child.add_argument("--work", type=Path, required=True)
    child.add_argument("--out", type=Path, required=True)
    child.add_argument("--length", type=int, required=True)
    child.add_argument("--rounds", type=int, required=True)
    child.add_argument("--baseline", action="store_true")
    child.add_argument("--no-secure", dest="secure", action="store_false")
    child.add_argument("--profile", action="store_true")
    child.add_argument("--paillier-key", type=Path, help="Paillier mode with this joint public key")
    child.add_argument("--storage", help="the store URL (default: SQLite in --work)")
    child.add_argument("--round-timeout", type=float, help="stop monitoring a round open this long")
    silo = sub.add_parser("silo", help="internal: one silo process of one scenario")
    silo.add_argument("--pki", type=Path, required=True)
    silo.add_argument(
        "--silo", required=True, help="a silo id, or several comma-separated (a pool)"
    )
    silo.add_argument("--seed", type=int, required=True)
    silo.add_argument("--length", type=int, required=True)
    silo.add_argument("--secure")
    silo.add_argument("--baseline")
    silo.add_argument("--profile", action="store_true")
    silo.add_argument("--paillier", action="store_true", help="secure rounds in Paillier mode")
    silo.add_argument("--state", type=Path, help="the Paillier silo's state directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5 silos x 50,000 and 5 Paillier silos x 2,000 (1024-bit test key), 1 timed round",
    )
    parser.add_argument(
        "--rounds", type=int, help="timed rounds per scenario (plus one warm-up round)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the coordinator's secure rounds"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=(*SCENARIO_KEYS, *PAILLIER_KEYS),
        default=[],
        help="run only this scenario (repeatable); the Paillier ones run only when named",
    )
    parser.add_argument(
        "--silos",
        type=int,
        help="one scenario of this many silos (with --params) instead of the plan",
    )
    parser.add_argument("--params", type=int, help="parameters per silo of the --silos scenario")
    parser.add_argument(
        "--silos-per-process",
        default="auto",
        help="silos per OS process, each its own thread, gRPC channel and TLS identity (default: auto, "
        "1 unless one process per silo would take more than 60%% of the available memory)",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        help="report a timed round still open after this many seconds as timed out (> the timeout) and "
        "run the baseline in processes of its own",
    )
    parser.add_argument(
        "--store",
        help="also run every masking scenario on this PostgreSQL server (postgresql://..., a fresh database "
        "per run; 'local' starts a throwaway one as the tests do) and print the ratios to SQLite",
    )
    parser.add_argument(
        "--failover-trials",
        type=int,
        default=0,
        help="with --store: SIGKILL the leader of two replicas this many times, time to next round open",
    )
    args = parser.parse_args(argv)
    if args.failover_trials and not args.store:
        parser.error("--failover-trials needs --store")
    if args.mode == "coordinator":
        return run_coordinator(args)
    if args.mode == "silo":
        return run_silo(args)
    if (args.silos is None) != (args.params is None):
        parser.error("--silos and --params go together (e.g. --silos 100 --params 100000)")
    if args.silos is not None and (args.silos < MIN_COHORT or args.params < 1):
        parser.error(f"--silos needs at least {MIN_COHORT} silos and --params at least 1")
    if args.silos is not None and (args.only or args.quick):
        parser.error("--silos/--params is one scenario of its own: drop --only and --quick")
    if args.silos_per_process != "auto" and not args.silos_per_process.isdigit():
        parser.error("--silos-per-process is a positive integer or 'auto'")

    if args.silos is not None:
        plan = [sweep_scenario(args.silos, args.params, args)]
    else:
        plan = scenarios(args.quick, args.rounds, args.only)
    print(
        "coordinator round benchmark: loopback gRPC with mTLS, coordinator and every silo in its own process, "
        f"{os.cpu_count()} CPUs, load average {load_average()} at start"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, grpcio {grpc.__version__}, "
        f"{platform.machine()}; round time = coordinator-side open -> completed, "
        "median of the rounds after warm-up round 0"
    )
    print()
    figures = []
    on_postgres: dict[str, Figures] = {}
    failovers: list[tuple[float, str]] = []
    started = time.perf_counter()
    store_url, local_pg = (None, None)
    if args.store == "local":
        store_url, local_pg = pg_failover.local_server()
    elif args.store:
        store_url = args.store
    with (
        contextlib.ExitStack() as cleanup,
        tempfile.TemporaryDirectory(prefix="bench-coordinator-") as tmp,
    ):
        if local_pg is not None:
            cleanup.callback(local_pg.stop)  # type: ignore[attr-defined]
        root = Path(tmp)
        if not os.environ.get(
            PASSPHRASE_ENV
        ):  # keys are encrypted at rest; children inherit the file
            (root / "passphrase").write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
            (root / "passphrase").chmod(0o600)
            os.environ[PASSPHRASE_ENV] = str(root / "passphrase")
        consortia: dict[int, ConsortiumPaths] = {}
        paillier_keys: dict[int, tuple[int, Path]] = {}  # silos -> (key bits, joint public key)
        for i, scenario in enumerate(plan):
            if scenario.silos not in consortia:
                consortia[scenario.silos] = create_consortium(
                    root / f"pki-{scenario.silos}",
                    federation=FEDERATION,
                    silos=[f"silo-{k:02d}" for k in range(scenario.silos)],
                )
            pki = consortia[scenario.silos]
            paillier_key = None
            if scenario.paillier:
                if scenario.silos not in paillier_keys:
                    paillier_keys[scenario.silos] = (scenario.key_bits, deal_key(pki, scenario))
                bits, paillier_key = paillier_keys[scenario.silos]
                if bits != scenario.key_bits:
                    raise SystemExit("one Paillier key per consortium: its size cannot change")
            separate = scenario.separate_baseline
            print(
                f"  {scenario.name}: {scenario.silos} silos in "
                f"{-(-scenario.silos // scenario.per_process)} processes "
                f"({scenario.per_process} per process), load average {load_average()}",
                flush=True,
            )
            figure = run_scenario(
                scenario,
                pki,
                root / f"run-{i}",
                secure=True,
                baseline=not separate and not scenario.paillier,
                profile=args.profile,
                paillier_key=paillier_key,
            )
            if separate:
                figure.plain = run_scenario(
                    scenario,
                    pki,
                    root / f"run-{i}-baseline",
                    secure=False,
                    baseline=True,
                    profile=False,
                )
            elif figure.timed_out and not scenario.paillier:
                try:  # the silos of the timed-out secure run never reached the baseline
                    figure.plain = run_scenario(
                        scenario,
                        pki,
                        root / f"run-{i}-baseline",
                        secure=False,
                        baseline=True,
                        profile=False,
                    )
                except SystemExit as exc:  # keep the secure figure; say why the baseline has none
                    print(f"  baseline of {scenario.name} failed: {str(exc).splitlines()[0]}")
            figures.append(figure)
            print(
                f"  {scenario.name}: done after {time.perf_counter() - started:.0f} s "
                f"(load average {load_average()})",
                flush=True,
            )
            if store_url is not None and not scenario.paillier:
                on_postgres[scenario.name] = run_scenario(
                    scenario,
                    pki,
                    root / f"run-{i}-postgresql",
                    secure=True,
                    baseline=False,
                    profile=False,
                    storage=pg_failover.new_database(store_url),
                )
                print(
                    f"  {scenario.name} on PostgreSQL: done after {time.perf_counter() - started:.0f} s "
                    f"(load average {load_average()})",
                    flush=True,
                )
        if store_url is not None and args.failover_trials:
            failovers = pg_failover.failover_trials(
                store_url, args.failover_trials, root / "failover"
            )
    print()
    sweep = args.silos is not None
    if sweep:
        sweep_report(figures)
    else:
        report(figures, quick=args.quick)
    if on_postgres:
        print()
        store_report(
            [(f, on_postgres[f.scenario.name]) for f in figures if f.scenario.name in on_postgres]
        )
    if failovers:
        print()
        failover_report(failovers)
    if args.quick:
        print("note: --quick is a smoke run; nothing is judged against the targets")
    if args.profile:
        print(
            "note: --profile slows the coordinator down; the timings above are not representative"
        )
        for f in figures:
            print()
            print(
                f"== coordinator profile (CPU time, every thread), secure rounds, {f.scenario.name}"
            )
            print(f.coordinator["profile"])
            print(f"== silo-00 profile (CPU time, every thread), secure rounds, {f.scenario.name}")
            print(f.silos[0]["profile"] if f.silos else "(timed out: no silo profile)")
    if sweep:
        print(last_line(figures[0]))  # the LAST line, for scripts: keep it last
    return 0


if __name__ == "__main__":
    sys.exit(main())
