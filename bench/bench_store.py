"""Store and ledger on PostgreSQL as ratios to SQLite in the same run, and coordinator failover time.

Workloads (what a coordinator writes per round, through :class:`coordinator.store.SQLStore` and
:class:`audits.Ledger`, durable commits on both):

- ``rounds``: open a round, then complete it with the next global model (1M float32 = 4 MB, and 100k), and
  read the model back as the next round does;
- ``ledger``: one round's events in one transaction (10 entries) plus a signed checkpoint;
- ``failover``: two real ``secagg serve`` replicas on one PostgreSQL database (``[storage] standby = true``);
  the leader is SIGKILLed and the time until the standby serves (its port bound, its first round opened)
  is measured, over 5 trials.

PostgreSQL is ``--store URL`` (an empty database; its tables are created) or, by default, a throwaway
cluster this script starts with ``initdb``/``pg_ctl`` (``tests/postgres.py``, with fsync on, on the same disk
as the SQLite files, so both pay a durable commit). Every figure is printed
with the 1-minute load average next to it. ``python bench/bench_store.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from audits import CheckpointSigner, Event, EventKind, Ledger  # noqa: E402
from coordinator.common import model_hash  # noqa: E402
from coordinator.config import write_demo_configs  # noqa: E402
from coordinator.pki import PASSPHRASE_ENV, create_consortium  # noqa: E402
from coordinator.store import SQLStore  # noqa: E402
from tests.postgres import PostgresServer, postgres_server  # noqa: E402


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def rounds_seconds(target: str, length: int, rounds: int) -> float:
    """Median seconds of one round's store work (open, complete with a new model, read it back)."""
    store = SQLStore(target)
    model = np.random.default_rng(0).standard_normal(length).astype(np.float32)
    store.init_federation("bench", settings="{}", initial_model=model)
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        _, digest = store.model("bench", r)
        store.open_round("bench", r, digest)
        model = model + np.float32(1e-3)
        store.complete_round("bench", r, survivors=["a", "b", "c"], dropped=[], new_model=model)
        times.append(time.perf_counter() - start)
    assert model_hash(store.model("bench", rounds)[0]) == model_hash(model)
    store.close()
    return float(np.median(times))


def ledger_seconds(target: str, rounds: int) -> float:
    """Median seconds of one round's ledger work: 10 events in one transaction and a signed checkpoint."""
    origin = "bench/ledger"
    ledger = Ledger(target, origin=origin)
    signer = CheckpointSigner.generate(key_name=origin)
    times = []
    for r in range(rounds):
        events = [
            Event(EventKind.ROUND_CLOSED, "bench", r, {"i": i}, "2026-01-01T00:00:00Z")
            for i in range(10)
        ]
        start = time.perf_counter()
        ledger.append_many(events)
        ledger.checkpoint(signer)
        times.append(time.perf_counter() - start)
    ledger.close()
    return float(np.median(times))


def failover_seconds(server: PostgresServer, work: Path, trials: int) -> list[float]:
    """Seconds from SIGKILL of the leading ``secagg serve`` to the standby serving, per trial."""
    consortium = create_consortium(work / "pki", federation="bench", silos=("a", "b", "c"))
    secagg = str(Path(sys.executable).parent / "secagg")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the replicas decrypt their keys with the consortium's passphrase
    env.setdefault(PASSPHRASE_ENV, str(consortium.passphrase_file.resolve()))
    results = []
    for trial in range(trials):
        url = server.new_database()
        commands = []
        for name in ("one", "two"):
            serve, _ = write_demo_configs(
                consortium,
                work / f"t{trial}-{name}",
                rounds=3,
                model_size=1000,
                listen="127.0.0.1:0",
                coordinator="127.0.0.1:1",
                storage=url,
            )
            doc = tomllib.loads(serve.read_text())
            doc["storage"]["standby"] = True
            serve.write_text(tomli_w.dumps(doc))
            commands.append([secagg, "serve", "--config", str(serve)])
        leader = subprocess.Popen(commands[0], stderr=subprocess.PIPE, text=True, env=env)
        wait_line(leader, r"listening on port")
        standby = subprocess.Popen(commands[1], stderr=subprocess.PIPE, text=True, env=env)
        try:
            wait_line(standby, r"standing by")
            killed = time.perf_counter()
            leader.send_signal(signal.SIGKILL)
            leader.wait()
            wait_line(standby, r"listening on port")
            results.append(time.perf_counter() - killed)
        finally:
            for proc in (leader, standby):
                proc.kill()
                proc.wait()
    return results


def wait_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 120) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if re.search(pattern, line):
            return
        if time.monotonic() > deadline:
            break
    raise SystemExit(f"no line matching {pattern!r} (exit {proc.poll()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", help="an empty PostgreSQL database URL (default: a throwaway server)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and trials (seconds)")
    args = parser.parse_args()
    server: PostgresServer | None = None
    if args.store is None:
        started = postgres_server(fsync=True)
        if isinstance(started, str):
            raise SystemExit(f"cannot start PostgreSQL: {started}")
        server = started
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    counter = iter(range(1000))

    def postgresql() -> str:
        if server is not None:
            return server.new_database()
        return str(args.store)

    def sqlite() -> str:
        return str(work / f"s{next(counter)}.sqlite")

    quick = args.quick
    rows: list[tuple[str, Callable[[str], float]]] = [
        (
            f"round store work, 1M params x {3 if quick else 10}",
            lambda t: rounds_seconds(t, 1_000_000, 3 if quick else 10),
        ),
        (
            f"round store work, 100k params x {10 if quick else 50}",
            lambda t: rounds_seconds(t, 100_000, 10 if quick else 50),
        ),
        (
            f"ledger round (10 events + checkpoint) x {20 if quick else 200}",
            lambda t: ledger_seconds(t, 20 if quick else 200),
        ),
    ]
    print(
        f"{'workload':<52} {'SQLite ms':>10} {'load':>5} {'PostgreSQL ms':>14} {'load':>5} {'PG/SQLite':>9}"
    )
    for name, run in rows:
        lite = run(sqlite())
        lite_load = load()
        if args.store is not None and name.startswith("ledger"):
            pg = float("nan")  # a given database holds one ledger; the rounds rows already used it
        else:
            pg = run(postgresql())
        print(
            f"{name:<52} {lite * 1e3:>10.2f} {lite_load:>5} {pg * 1e3:>14.2f} {load():>5} {pg / lite:>9.2f}"
        )
    if server is not None:
        trials = 2 if quick else 5
        times = failover_seconds(server, work, trials)
        print(
            f"failover (leader SIGKILLed -> standby serving), {trials} trials: "
            + ", ".join(f"{t:.2f}" for t in times)
            + f" s; median {np.median(times):.2f} s (load {load()})"
        )
        server.stop()
    else:
        print("failover: needs the throwaway server (run without --store)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
