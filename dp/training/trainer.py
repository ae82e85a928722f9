"""The silo's private trainer: calibrated Opacus DP-SGD rounds with a persistent privacy ledger.

Notes:
    DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): every step
    draws a Poisson sample (each record independently with probability q), clips each
    per-sample gradient to L2 norm ``max_grad_norm`` (C), adds Gaussian noise of std
    ``noise_multiplier * C`` to the sum and divides by the expected batch size q*N. Opacus
    does all three (DPDataLoader, GradSampleModule, DPOptimizer); we use its components
    directly instead of ``PrivacyEngine`` because the engine's secure mode needs the
    unmaintained torchcsprng (see ``RANDOMNESS_STATEMENT``) and its accountant forgets
    earlier rounds whenever a new engine is built, the classic federated mistake. Here one
    ``BudgetLedger`` composes every round of the federation and is written to disk
    atomically (temp file, fsync, rename, fsync of the directory) *before* the update is
    returned: an update that left the silo is always on record, so a restarted silo
    forgets no spend. A round that fails before that point released nothing and records
    nothing.

    The noise multiplier is calibrated once per process, with the RDP accountant, for the
    spent history plus every remaining planned round (``calibrate_noise_multiplier``): RDP
    upper-bounds the tight accountant, and the live check uses the very same summation, so
    every planned round passes the check and a round beyond the plan is refused.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dp.accounting import (
    DP_SGD_MECHANISM,
    BudgetLedger,
    MechanismStep,
    PrivacyAttestation,
    PrivacyBudget,
    RdpAccountant,
    calibrate_noise_multiplier,
)
from dp.accounting._versions import accountant_id, library_versions
from dp.errors import AccountingError, BudgetExceeded, InvalidPrivacyParameters
from dp.training.params import get_flat_params, set_flat_params
from dp.training.rng import cryptographic_generator
from dp.training.task import check_model

__all__ = ["LossFn", "PrivateTrainer", "RoundResult", "run_dp_sgd", "training_library_versions"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def training_library_versions() -> dict[str, str]:
    """Versions of every library a DP-SGD round depends on (for attestations)."""
    return library_versions("torch", "opacus")


@dataclass(frozen=True, kw_only=True, eq=False)
class RoundResult:
    """What one private round produced.

    Attributes:
        update: new weights minus the given global weights, float32, flat. Never logged
            (hidden from ``repr``): an individual update must only leave the silo masked.
        params: the round's mechanism parameters (sigma, q, steps).
        epsilon_spent: RDP epsilon spent so far, this round included, at ``delta``.
        delta: the silo's delta.
        max_grad_norm: per-sample clipping norm C.
        round_index: 0-based count of this silo's rounds (this one included: index).
        records: number of records in the silo's dataset.
        mechanism: the mechanism name recorded in attestations.
        accountant: the accountant (name and version) that computed ``epsilon_spent``.
        library_versions: versions of the libraries the round ran on.
    """

    update: np.ndarray = field(repr=False)
    params: MechanismStep
    epsilon_spent: float
    delta: float
    max_grad_norm: float
    round_index: int
    records: int
    mechanism: str = DP_SGD_MECHANISM
    accountant: str = ""
    library_versions: Mapping[str, str] = field(default_factory=dict)

    def attestation(
        self, *, federation: str, round: int, session_id: str, silo: str
    ) -> PrivacyAttestation:
        """This round's facts as an attestation bound to a federation round and session (unsigned).

        The silo SDK calls this once the round's session id is known and signs the result with the silo's
        roster key; the coordinator recomputes ``epsilon`` from the parameters and refuses under-reporting.
        """
        return PrivacyAttestation(
            federation=federation,
            round=round,
            session_id=session_id,
            silo=silo,
            mechanism=self.mechanism,
            noise_multiplier=self.params.noise_multiplier,
            sample_rate=self.params.sample_rate,
            steps=self.params.steps,
            max_grad_norm=self.max_grad_norm,
            accountant=self.accountant,
            epsilon=self.epsilon_spent,
            delta=self.delta,
            library_versions=self.library_versions,
        )


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # The rename itself must survive a power cut: fsync the directory entry too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def run_dp_sgd(
    *,
    module: GradSampleModule,
    dataset: Dataset[Any],
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    lr: float,
    epochs: int,
    loss_fn: LossFn,
    noise_generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> int:
    """Run ``epochs`` epochs of Opacus DP-SGD (plain SGD steps) on ``module``; return steps taken.

    The privacy accounting is the caller's job (``PrivateTrainer`` does it); this function
    only trains. ``noise_multiplier=0`` is accepted here so tests can isolate clipping.

    Args:
        module: the model wrapped in ``GradSampleModule(loss_reduction="mean")``.
        dataset: map-style dataset of ``(features, label)`` pairs.
        sample_rate: Poisson sampling probability q; an epoch is ``int(1/q)`` steps.
        noise_multiplier: sigma; noise std is ``sigma * max_grad_norm`` on the clipped sum.
        max_grad_norm: per-sample L2 clipping norm C.
        lr: SGD learning rate.
        epochs: local epochs.
        loss_fn: a mean-reduced loss.
        noise_generator: generator for the Gaussian noise.
        sampling_generator: generator for Poisson sampling.
    """
    records = len(cast(Any, dataset))
    expected_batch_size = int(records * sample_rate)
    if expected_batch_size < 1:
        raise InvalidPrivacyParameters("sample_rate * records must be >= 1")
    optimizer = DPOptimizer(
        torch.optim.SGD(module.parameters(), lr=lr),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=noise_generator,
        secure_mode=True,
    )
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampling_generator)
    module.train()
    steps = 0
    with warnings.catch_warnings():
        # Opacus' per-sample hooks fire on module outputs when inputs need no gradient (the
        # normal case for data); torch warns about it on every step. Known and harmless.
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        for _ in range(epochs):
            for features, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(module(features), labels)
                torch.autograd.backward(loss)
                optimizer.step()
                steps += 1
    optimizer.zero_grad(set_to_none=True)
    return steps


class PrivateTrainer:
    """DP-SGD rounds for one silo, within a privacy budget for the whole federation.

    Args:
        model: the torch model (its parameters are overwritten by each round's global
            weights). Must be Opacus-compatible (no BatchNorm: :func:`~dp.training.task.check_model`).
        data: a map-style ``Dataset`` of ``(features, label)`` or a ``DataLoader`` over one
            (only its dataset and batch size are used: sampling is always Poisson).
        budget: the silo's (epsilon, delta) for the whole federation.
        planned_rounds: rounds the federation will run; the noise is calibrated for them.
        local_epochs: local epochs per round.
        max_grad_norm: per-sample clipping norm C.
        lr: SGD learning rate.
        batch_size: expected batch size (sets q = batch_size / records); or
        sample_rate: Poisson sampling probability q directly (exactly one of the two,
            unless ``data`` is a DataLoader whose batch size is used).
        state_path: JSON file holding the accountant state across restarts.
        loss_fn: mean-reduced loss; cross-entropy by default.
        random_bytes: randomness for the noise and sampling generators (``os.urandom``).

    Raises:
        InvalidPrivacyParameters: bad parameter, or delta not below 1/records.
        BudgetExceeded: the budget cannot pay for the planned rounds.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        data: Dataset[Any] | DataLoader[Any],
        budget: PrivacyBudget,
        planned_rounds: int,
        local_epochs: int,
        max_grad_norm: float,
        lr: float,
        batch_size: int | None = None,
        sample_rate: float | None = None,
        state_path: str | os.PathLike[str] | None = None,
        loss_fn: LossFn | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        dataset: Dataset[Any] = data.dataset if isinstance(data, DataLoader) else data
        if isinstance(data, DataLoader) and batch_size is None and sample_rate is None:
            batch_size = data.batch_size
        records = len(cast(Any, dataset))
        for name, value in (("planned_rounds", planned_rounds), ("local_epochs", local_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidPrivacyParameters(f"{name} must be an int >= 1, got {value!r}")
        if batch_size is not None and sample_rate is not None:
            raise InvalidPrivacyParameters("give exactly one of batch_size and sample_rate")
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise InvalidPrivacyParameters("batch_size must be an int >= 1")
            if batch_size > records:
                raise InvalidPrivacyParameters(
                    f"the dataset has {records} records, fewer than the batch size {batch_size}: lower "
                    f"batch_size to at most {records} (a fraction of the records, e.g. "
                    f"{max(1, records // 10)}), or train on more data"
                )
            q = batch_size / records
        elif sample_rate is not None:
            q = float(sample_rate)
        else:
            raise InvalidPrivacyParameters("give exactly one of batch_size and sample_rate")
        if not 0.0 < q <= 1.0 or int(records * q) < 1:
            raise InvalidPrivacyParameters(
                f"sample_rate must be in (0, 1] with sample_rate * records >= 1, got {q!r}"
            )
        if not (np.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise InvalidPrivacyParameters("max_grad_norm must be finite and > 0")
        if not (np.isfinite(lr) and lr > 0):
            raise InvalidPrivacyParameters("lr must be finite and > 0")
        check_model(model)

        self._state_path = None if state_path is None else Path(state_path)
        accountant = RdpAccountant()
        if self._state_path is not None and self._state_path.exists():
            accountant = RdpAccountant.from_json(self._state_path.read_text(encoding="utf-8"))
        self._ledger = BudgetLedger(budget=budget, records=records, accountant=accountant)
        self._model = model
        self._module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        self._dataset = dataset
        self._records = records
        self._planned_rounds = planned_rounds
        self._local_epochs = local_epochs
        self._sample_rate = q
        self._max_grad_norm = float(max_grad_norm)
        self._lr = float(lr)
        self._loss_fn: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self._random_bytes = random_bytes
        # Opacus' DPDataLoader yields int(1/q) Poisson batches per epoch.
        self._steps_per_round = local_epochs * int(1.0 / self._sample_rate)
        remaining = planned_rounds - len(accountant.history)
        self._noise_multiplier: float | None = None
        if remaining > 0:
            self._noise_multiplier = calibrate_noise_multiplier(
                target_epsilon=budget.epsilon,
                delta=budget.delta,
                sample_rate=self._sample_rate,
                steps_per_round=self._steps_per_round,
                rounds=remaining,
                history=accountant.history,
            )

    def __repr__(self) -> str:
        return (
            f"PrivateTrainer(records={self._records}, rounds_done={self.rounds_done}/"
            f"{self._planned_rounds}, epsilon_spent={self.epsilon_spent:.4f}, "
            f"budget={self._ledger.budget!r})"
        )

    @property
    def noise_multiplier(self) -> float | None:
        """Calibrated sigma, or None when every planned round is spent."""
        return self._noise_multiplier

    @property
    def sample_rate(self) -> float:
        """Poisson sampling probability q."""
        return self._sample_rate

    @property
    def expected_batch_size(self) -> int:
        """int(q * records): the divisor of the noisy gradient sum, as in Opacus."""
        return int(self._records * self._sample_rate)

    @property
    def steps_per_round(self) -> int:
        """Noisy optimizer steps per round."""
        return self._steps_per_round

    @property
    def max_grad_norm(self) -> float:
        """Per-sample clipping norm C."""
        return self._max_grad_norm

    @property
    def budget(self) -> PrivacyBudget:
        """The silo's budget."""
        return self._ledger.budget

    @property
    def rounds_done(self) -> int:
        """Rounds on record (including those before a restart)."""
        return len(self._ledger.accountant.history)

    @property
    def history(self) -> tuple[MechanismStep, ...]:
        """Every round on record."""
        return self._ledger.accountant.history

    @property
    def epsilon_spent(self) -> float:
        """RDP epsilon spent so far at the budget's delta."""
        return self._ledger.spent()

    def next_step(self) -> MechanismStep:
        """The mechanism parameters the next round will use.

        Raises:
            BudgetExceeded: every planned round is spent.
        """
        if self._noise_multiplier is None or self.rounds_done >= self._planned_rounds:
            where = "" if self._state_path is None else f", on record in {self._state_path}"
            raise BudgetExceeded(
                f"round refused: all {self._planned_rounds} planned rounds are spent "
                f"(epsilon={self.epsilon_spent:.4f} of {self._ledger.budget.epsilon:.4f}{where}); this silo "
                "can train no more in this federation: a new study needs a new federation id and a fresh "
                "state directory"
            )
        return MechanismStep(
            noise_multiplier=self._noise_multiplier,
            sample_rate=self._sample_rate,
            steps=self._steps_per_round,
        )

    def describe(self) -> dict[str, Any]:
        """Public facts for an attestation: mechanism, accountant, clip norm, versions."""
        return {
            "mechanism": DP_SGD_MECHANISM,
            "accountant": accountant_id(RdpAccountant.NAME),
            "max_grad_norm": self._max_grad_norm,
            "library_versions": training_library_versions(),
        }

    def train_round(self, global_weights: np.ndarray) -> RoundResult:
        """Train one private round from ``global_weights`` and return the update.

        The budget is checked before any data is touched; the spend is persisted before the
        update is returned.

        Raises:
            BudgetExceeded: this round would exceed the budget (nothing was trained).
            ValueError: ``global_weights`` has the wrong length or is not finite.
        """
        step = self.next_step()
        self._ledger.check(step)
        start = np.asarray(global_weights, dtype=np.float32)
        set_flat_params(self._model, start)
        start = get_flat_params(self._model)
        steps = run_dp_sgd(
            module=self._module,
            dataset=self._dataset,
            sample_rate=self._sample_rate,
            noise_multiplier=step.noise_multiplier,
            max_grad_norm=self._max_grad_norm,
            lr=self._lr,
            epochs=self._local_epochs,
            loss_fn=self._loss_fn,
            noise_generator=cryptographic_generator(self._random_bytes),
            sampling_generator=cryptographic_generator(self._random_bytes),
        )
        if steps != step.steps:
            raise AccountingError(f"trained {steps} steps but accounted for {step.steps}")
        epsilon = self._ledger.record(step)
        if self._state_path is not None:
            _atomic_write(self._state_path, self._ledger.accountant.to_json())
        update = (get_flat_params(self._model) - start).astype(np.float32)
        return RoundResult(
            update=update,
            params=step,
            epsilon_spent=epsilon,
            delta=self._ledger.budget.delta,
            max_grad_norm=self._max_grad_norm,
            round_index=self.rounds_done - 1,
            records=self._records,
            accountant=accountant_id(RdpAccountant.NAME),
            library_versions=training_library_versions(),
        )
