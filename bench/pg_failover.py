"""PostgreSQL helpers of ``bench_coordinator.py``: a throwaway server, fresh databases, and failover trials.

A failover trial: two ``secagg serve`` replicas (real OS processes, the real CLI) on one fresh PostgreSQL
database, on two fixed loopback ports; the leader serves, the standby waits for the advisory lock without binding
its port. Three silos join over mTLS (round 0 opens), the leader is SIGKILLed with round 0 open, and the time is
taken from the kill to the moment the standby answers a silo's long poll for round 1 (the next round open on the
standby): lock takeover, start-up, recording the interrupted round as aborted, binding, and a silo's reconnect.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import tomli_w

from coordinator.config import Deadlines, MaskingDeadlines, PaillierDeadlines, write_demo_configs
from coordinator.pki import ConsortiumPaths, create_consortium, tls_key_pem
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.proto.v1 import coordinator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
LONG = 3600.0
TRIAL_TIMEOUT = 120.0


def local_server() -> tuple[str, object]:
    """Start a throwaway PostgreSQL cluster as the test suite does (``tests/postgres.py``, fsync on).

    Returns its URL and the server (``.stop()`` it).
    """
    sys.path.insert(0, str(REPO))
    from tests.postgres import PostgresServer, postgres_server

    server = postgres_server(fsync=True)
    if not isinstance(server, PostgresServer):
        raise SystemExit(f"cannot start a local PostgreSQL: {server}")
    return server.url(), server


def new_database(url: str) -> str:
    """Create an empty database on the server of ``url`` and return its URL."""
    import psycopg

    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Lines:
    """A process's merged output, read by a thread so that it never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if re.search(pattern, line):
                        return
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemExit(f"no {pattern!r} within {timeout} s: {self.lines[-5:]}")
                self.cond.wait(remaining)


def _channel(paths: ConsortiumPaths, silo: str, address: str) -> grpc.Channel:
    files = paths.silos[silo]
    credentials = grpc.ssl_channel_credentials(
        paths.ca_cert.read_bytes(), tls_key_pem(files.key), files.cert.read_bytes()
    )
    return grpc.secure_channel(
        address,
        credentials,
        options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)],
    )


def failover_trial(paths: ConsortiumPaths, url: str, work: Path) -> float:
    """One trial on a fresh database at ``url``: seconds from the leader's SIGKILL to round 1 open on the standby."""
    addresses = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    commands = []
    for name, address in zip(("leader", "standby"), addresses, strict=True):
        serve_toml, _ = write_demo_configs(
            paths,
            work / name,
            rounds=3,
            threshold=2,
            min_cohort=3,
            model_size=1000,
            listen=address,
            coordinator=address,
            deadlines=Deadlines(
                masking=MaskingDeadlines(
                    advertise=LONG,
                    share_keys=LONG,
                    masked_input=LONG,
                    consistency=LONG,
                    unmask=LONG,
                ),
                paillier=PaillierDeadlines(collect=LONG, decrypt=LONG),
            ),
            storage=url,
        )
        doc = tomllib.loads(serve_toml.read_text())
        doc["storage"]["standby"] = True
        serve_toml.write_text(tomli_w.dumps(doc))
        commands.append(
            [str(Path(sys.executable).parent / "secagg"), "serve", "--config", str(serve_toml)]
        )
    procs: list[subprocess.Popen[str]] = []
    channels: list[grpc.Channel] = []
    try:
        for command, pattern in zip(commands, (r"listening on port", r"standing by"), strict=True):
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=dict(os.environ),
            )
            procs.append(proc)
            _Lines(proc).wait_for(pattern, TRIAL_TIMEOUT)
        leader = procs[0]
        silos = sorted(paths.silos)
        for silo in silos:  # round 0 opens once min_cohort silos have joined
            channel = _channel(paths, silo, addresses[0])
            channels.append(channel)
            stub = pb_grpc.FederationStub(channel)
            stub.Join(pb.JoinRequest(federation=paths.federation, silo=silo), timeout=30)
        first = pb_grpc.FederationStub(channels[0])
        first.GetRound(
            pb.GetRoundRequest(federation=paths.federation, after=0, wait_seconds=30), timeout=35
        )  # round 0 is open
        standby = pb_grpc.FederationStub(_channel(paths, silos[0], addresses[1]))
        killed = time.perf_counter()
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        request = pb.GetRoundRequest(federation=paths.federation, after=1, wait_seconds=30)
        while True:
            try:
                standby.GetRound(request, timeout=35)
                return time.perf_counter() - killed
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise
                if time.perf_counter() - killed > TRIAL_TIMEOUT:
                    raise SystemExit("the standby never opened round 1") from exc
                time.sleep(0.02)
    finally:
        for channel in channels:
            channel.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def failover_trials(url: str, trials: int, work: Path) -> list[tuple[float, str]]:
    """``trials`` failover trials, each on its own database; (seconds, load average) per trial."""
    paths = create_consortium(work / "pki", federation="bench-failover", silos=["a", "b", "c"])
    out = []
    for i in range(trials):
        seconds = failover_trial(paths, new_database(url), work / f"trial-{i}")
        out.append((seconds, f"{os.getloadavg()[0]:.1f}"))
    return out
