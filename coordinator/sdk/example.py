"""A silo's task (its own, from ``[task] entry``, or the built-in breast-cancer example) over either mode's SDK."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from coordinator.config import SiloConfig
from coordinator.errors import ConfigError
from coordinator.modes import call_entry_point
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
    """The silo's task over an already connected SDK client, whatever its aggregation mode.

    The task is the one ``[task] entry`` names (a ``dp.training.Task``), or the built-in example (DP-SGD on a
    breast-cancer shard). It is built before the silo joins, so a model DP-SGD cannot train (BatchNorm) is
    refused at once, naming the layer and the fix, without a coordinator.

    Raises:
        ConfigError: the entry point cannot be called or returns no ``Task``; the coordinator's model does not
            have the task model's parameter count.
        InvalidPrivacyParameters: the model or a setting DP-SGD cannot work with (one line saying which).
    """
    # torch is imported only here: the coordinator and the CLI's other commands never load it
    from dp.accounting import PrivacyBudget
    from dp.training import PrivateTrainer, Task

    if config.task.entry is not None:
        task = call_entry_point(config.task.entry, "[task] entry")
        if not isinstance(task, Task):
            raise ConfigError(
                f"[task] entry {config.task.entry} must return a dp.training.Task, got {type(task).__name__}"
            )
    else:
        task = _example_task(config)
    records = len(task.dataset)
    parameters = sum(p.numel() for p in task.model.parameters())
    config.state_dir.mkdir(parents=True, exist_ok=True)
    joined = silo.join()
    trainer = PrivateTrainer(
        model=task.model,
        data=task.dataset,
        budget=PrivacyBudget(epsilon=task.epsilon, delta=task.delta),
        planned_rounds=joined.rounds,
        local_epochs=task.local_epochs,
        max_grad_norm=task.max_grad_norm,
        lr=task.lr,
        batch_size=task.batch_size,
        state_path=config.state_dir / "accountant.json",
        loss_fn=task.loss_fn,
    )
    _emit(events, kind="joined", silo=config.silo, records=records, rounds=joined.rounds)

    def train(ctx: RoundContext[Any]) -> PrivateUpdate:
        if ctx.weights.size != parameters:
            raise ConfigError(
                f"the coordinator's model has {ctx.weights.size} parameters and this silo's task model "
                f"{parameters}: the [model] of serve.toml must build the same architecture"
            )
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


def _example_task(config: SiloConfig) -> Any:
    """The built-in example as a ``dp.training.Task``: logistic regression on this silo's breast-cancer shard."""
    from dp.training import Task
    from dp.training.example import (
        DEMO_MAX_GRAD_NORM,
        load_breast_cancer_silos,
        make_model,
        silo_dataset,
    )

    task = config.task
    split = load_breast_cancer_silos(n_silos=task.num_shards, seed=task.seed)
    features, labels = split.silos[task.shard]
    return Task(
        model=make_model(split.n_features),
        dataset=silo_dataset(features, labels),
        epsilon=task.epsilon,
        delta=task.delta,
        batch_size=task.batch_size,
        lr=task.lr,
        local_epochs=task.local_epochs,
        max_grad_norm=DEMO_MAX_GRAD_NORM,
    )
