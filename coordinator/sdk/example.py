"""The built-in example task (DP-SGD on a breast-cancer shard) over either mode's silo SDK."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from coordinator.config import SiloConfig
from coordinator.sdk.loop import PrivateUpdate, RoundContext, SiloClient

EVENT_PREFIX = "SECAGG-EVENT "
"""Silo processes started with ``--events`` print one JSON object per line behind this prefix."""


def _emit(enabled: bool, **event: Any) -> None:
    if enabled:
        sys.stdout.write(EVENT_PREFIX + json.dumps(event, sort_keys=True) + "\n")
        sys.stdout.flush()


def run_example_task(
    config: SiloConfig, silo: SiloClient[Any, Any, Any], *, events: bool = False
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

    def train(ctx: RoundContext[Any]) -> PrivateUpdate:
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
