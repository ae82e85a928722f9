"""What the ``serve``, ``silo`` and ``demo`` commands run: build a coordinator or a silo from its configuration.

Kept apart from the command-line parsing so tests and the demo can start the same things in-process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from coordinator._malloc import tune_allocator
from coordinator.audit import open_audit_trail
from coordinator.client import PrivateUpdate, RoundContext, Silo
from coordinator.config import ServeConfig, SiloConfig, TLSPaths
from coordinator.rounds import FederationSettings, RoundService
from coordinator.service import TlsFiles, create_server
from coordinator.store import SQLiteStore

__all__ = [
    "Coordinator",
    "ExampleClient",
    "run_example_silo",
    "run_example_task",
    "start_coordinator",
]

log = logging.getLogger(__name__)

EVENT_PREFIX = "SECAGG-EVENT "
"""Silo processes started with ``--events`` print one JSON object per line behind this prefix."""


def _tls(paths: TLSPaths | None) -> TlsFiles | None:
    if paths is None:
        return None
    return TlsFiles(paths.ca.read_bytes(), paths.cert.read_bytes(), paths.key.read_bytes())


@dataclass
class Coordinator:
    """A running coordinator: the round service, the gRPC server, its port and its store."""

    service: RoundService
    server: grpc.Server
    port: int
    store: SQLiteStore

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and close the store and the ledger."""
        self.service.stop()
        self.server.stop(grace).wait()
        self.store.close()
        self.service.audit.close()


def start_coordinator(config: ServeConfig) -> Coordinator:
    """Build and start the coordinator described by ``config`` (rounds begin at once)."""
    tune_allocator()  # before the gRPC server's threads exist (see coordinator._malloc)
    roster = config.load_roster()
    r = config.rounds
    settings = FederationSettings(
        federation=config.federation,
        rounds=r.count,
        vector_length=config.model.size,
        clip=r.clip,
        bits=r.bits,
        threshold=r.threshold,
        collusion=r.collusion,
        min_cohort=r.min_cohort,
        deadlines=config.deadlines,
        privacy=config.privacy,
        silo_dp=config.silo_dp,
    )
    if config.model.initial is not None:
        initial = np.load(config.model.initial, allow_pickle=False).astype(np.float32)
    else:
        initial = np.zeros(config.model.size, dtype=np.float32)
    store = SQLiteStore(config.storage)
    audit = open_audit_trail(config)
    service = RoundService(
        settings=settings, roster=roster, store=store, initial_model=initial, audit=audit
    )
    server, port = create_server(
        service,
        config.listen,
        tls=_tls(config.tls),
        revoked=config.revoked_certificates,
        max_message_bytes=config.max_message_bytes,
        insecure_debug_no_tls=config.insecure_debug_no_tls,
    )
    server.start()
    service.start()
    return Coordinator(service, server, port, store)


def _emit(enabled: bool, **event: Any) -> None:
    if enabled:
        sys.stdout.write(EVENT_PREFIX + json.dumps(event, sort_keys=True) + "\n")
        sys.stdout.flush()


def run_example_silo(config: SiloConfig, *, events: bool = False) -> list[dict[str, Any]]:
    """Run one silo of the built-in example task (DP-SGD on its breast-cancer shard) until the federation ends.

    Returns one summary per round; with ``events`` also prints them as machine-readable lines for the demo.
    """
    with Silo.from_config(config) as silo:
        return run_example_task(config, silo, events=events)


class ExampleClient(Protocol):
    """What the example task needs from a connected silo SDK (masking or Paillier mode)."""

    def join(self) -> Any:
        """Join; the answer's ``rounds`` is the planned number of rounds."""
        ...

    def run(self, train: Any) -> Iterator[Any]:
        """Take part in every round; yields one report per round."""
        ...


def run_example_task(
    config: SiloConfig, silo: ExampleClient, *, events: bool = False
) -> list[dict[str, Any]]:
    """The example task over an already connected SDK client, whatever its aggregation mode."""
    # torch is imported only here: the coordinator and the CLI's other commands never load it
    from dp.accounting import PrivacyBudget
    from dp.training import PrivateTrainer
    from dp.training.example import (
        DEMO_MAX_GRAD_NORM,
        load_breast_cancer_silos,
        make_model,
        silo_dataset,
    )

    task = config.task
    split = load_breast_cancer_silos(n_silos=task.num_shards, seed=task.seed)
    features, labels = split.silos[task.shard]
    config.state_dir.mkdir(parents=True, exist_ok=True)
    joined = silo.join()
    trainer = PrivateTrainer(
        model=make_model(split.n_features),
        data=silo_dataset(features, labels),
        budget=PrivacyBudget(epsilon=task.epsilon, delta=task.delta),
        planned_rounds=joined.rounds,
        local_epochs=task.local_epochs,
        max_grad_norm=DEMO_MAX_GRAD_NORM,
        lr=task.lr,
        batch_size=task.batch_size,
        state_path=config.state_dir / "accountant.json",
    )
    _emit(events, kind="joined", silo=config.silo, records=len(labels), rounds=joined.rounds)

    def train(ctx: RoundContext) -> PrivateUpdate:
        _emit(events, kind="training", silo=config.silo, round=ctx.round)
        started = time.perf_counter()
        result = trainer.train_round(ctx.weights)
        _emit(
            events,
            kind="trained",
            silo=config.silo,
            round=ctx.round,
            seconds=round(time.perf_counter() - started, 3),
            epsilon=result.epsilon_spent,
        )
        return result

    summaries: list[dict[str, Any]] = []
    for report in silo.run(train):
        summary = {
            "kind": "round",
            "silo": config.silo,
            "round": report.round,
            "status": report.status.value,
            "survivors": list(report.survivors),
            "dropped": list(report.dropped),
            "reason": report.reason,
            "epsilon": trainer.epsilon_spent,
            "delta": task.delta,
            "budget": task.epsilon,
            "mode": config.mode,
        }
        summaries.append(summary)
        _emit(events, **summary)
    _emit(events, kind="done", silo=config.silo, epsilon=trainer.epsilon_spent)
    return summaries


def write_json(path: Path, data: Any) -> None:
    """Write JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
