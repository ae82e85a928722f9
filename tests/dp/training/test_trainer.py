"""DP-SGD really is private: clipping, calibrated noise, refusals, persisted spend."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.accounting import MechanismStep, PrivacyBudget, RdpAccountant, recompute_epsilon
from dp.errors import BudgetExceeded, InvalidPrivacyParameters
from dp.training import (
    PrivateTrainer,
    cryptographic_generator,
    get_flat_params,
    run_dp_sgd,
    set_flat_params,
)


def mean_output(output: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    """Loss whose per-sample gradient w.r.t. a bias-free linear layer is the input itself."""
    return output.mean()


def linear(dim: int) -> nn.Module:
    return nn.Linear(dim, 1, bias=False)


def test_per_sample_gradients_are_clipped() -> None:
    dim, records, clip, lr = 4, 8, 0.5, 1.0
    features = torch.zeros(records, dim)
    features[0, 0] = 1e6  # this record alone would dominate a non-private update
    features[1:, 1] = 0.1  # the others have gradient norm 0.1 < clip: untouched
    dataset = TensorDataset(features, torch.zeros(records))
    model = linear(dim)
    set_flat_params(model, np.zeros(dim, dtype=np.float32))
    steps = run_dp_sgd(
        module=GradSampleModule(model, loss_reduction="mean"),
        dataset=dataset,
        sample_rate=1.0,  # everyone in the one batch: a deterministic check
        noise_multiplier=0.0,
        max_grad_norm=clip,
        lr=lr,
        epochs=1,
        loss_fn=mean_output,
        noise_generator=cryptographic_generator(),
        sampling_generator=cryptographic_generator(),
    )
    assert steps == 1
    update = get_flat_params(model)
    # SGD on the mean loss: update = -lr * (clip(g_0) + sum of others) / expected batch size.
    assert update[0] == pytest.approx(-lr * clip / records, rel=1e-5)
    assert update[1] == pytest.approx(-lr * 0.1 * (records - 1) / records, rel=1e-5)
    assert update[2] == update[3] == 0.0
    # Without clipping the dominant record would have moved the weight by 1e6 / 8.
    assert abs(update[0]) <= lr * clip / records * (1 + 1e-5)


def test_noise_has_the_configured_scale(seeded_bytes: Callable[[int], bytes]) -> None:
    dim, records, lr, clip = 4000, 200, 0.5, 0.7
    # All-zero inputs: every per-sample gradient is 0, so the update is exactly the noise.
    dataset = TensorDataset(torch.zeros(records, dim), torch.zeros(records))
    trainer = PrivateTrainer(
        model=linear(dim),
        data=dataset,
        budget=PrivacyBudget(epsilon=3.0, delta=1e-3),
        planned_rounds=1,
        local_epochs=1,
        sample_rate=0.1,
        max_grad_norm=clip,
        lr=lr,
        loss_fn=mean_output,
        random_bytes=seeded_bytes,
    )
    result = trainer.train_round(np.zeros(dim, dtype=np.float32))
    sigma = trainer.noise_multiplier
    assert sigma is not None
    assert result.params.noise_multiplier == sigma
    batch = trainer.expected_batch_size
    assert batch == 20
    assert result.params.steps == 10
    expected_var = result.params.steps * (sigma * clip / batch * lr) ** 2
    empirical_var = float(np.var(result.update.astype(np.float64)))
    print(f"noise variance: empirical {empirical_var:.4g}, expected {expected_var:.4g}")
    # The sample variance of 4000 Gaussians has relative std sqrt(2/4000) = 2.2%;
    # 10% is more than 4 standard deviations.
    assert empirical_var == pytest.approx(expected_var, rel=0.10)
    assert abs(float(np.mean(result.update))) < 5 * np.sqrt(expected_var / dim)


def test_a_tiny_budget_is_refused_before_training() -> None:
    dataset = TensorDataset(torch.randn(50, 3), torch.zeros(50, dtype=torch.long))
    with pytest.raises(BudgetExceeded):
        PrivateTrainer(
            model=nn.Linear(3, 2),
            data=dataset,
            budget=PrivacyBudget(epsilon=1e-4, delta=1e-3),
            planned_rounds=3,
            local_epochs=1,
            batch_size=10,
            max_grad_norm=1.0,
            lr=0.1,
        )


def make_trainer(state: Path | None, rounds: int = 2, **kwargs: object) -> PrivateTrainer:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(
        torch.randn(60, 3, generator=generator), torch.randint(0, 2, (60,), generator=generator)
    )
    return PrivateTrainer(
        model=nn.Linear(3, 2),
        data=DataLoader(dataset, batch_size=12),
        budget=PrivacyBudget(epsilon=2.0, delta=1e-3),
        planned_rounds=rounds,
        local_epochs=1,
        max_grad_norm=1.0,
        lr=0.1,
        state_path=state,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_round_beyond_the_plan_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "silo.json"
    trainer = make_trainer(state, rounds=1)
    weights = np.zeros(8, dtype=np.float32)
    trainer.train_round(weights)
    before = state.read_bytes()
    with pytest.raises(BudgetExceeded, match="planned rounds"):
        trainer.train_round(weights)
    assert state.read_bytes() == before
    assert trainer.rounds_done == 1


def test_restart_keeps_the_spend(tmp_path: Path) -> None:
    state = tmp_path / "silo" / "accountant.json"
    first = make_trainer(state, rounds=3)
    weights = np.zeros(8, dtype=np.float32)
    result = first.train_round(weights)
    assert result.round_index == 0
    assert result.epsilon_spent == recompute_epsilon([result.params], 1e-3)
    del first

    # A new process would build a new trainer on the same file: no spend is forgotten.
    second = make_trainer(state, rounds=3)
    assert second.rounds_done == 1
    assert second.history == (result.params,)
    assert second.epsilon_spent == result.epsilon_spent
    again = second.train_round(weights)
    assert again.round_index == 1
    assert again.epsilon_spent > result.epsilon_spent
    third = make_trainer(state, rounds=3)
    assert third.epsilon_spent == again.epsilon_spent
    assert third.train_round(weights).epsilon_spent <= 2.0
    with pytest.raises(BudgetExceeded):
        make_trainer(state, rounds=3).train_round(weights)
    # The file is the accountant's own JSON, written atomically: no temp files left over.
    assert RdpAccountant.from_json(state.read_text()).epsilon(1e-3) <= 2.0
    assert sorted(p.name for p in state.parent.iterdir()) == ["accountant.json"]
    assert json.loads(state.read_text())["format"] == "secagg.dp.rdp-accountant/v1"


def test_round_result_hides_the_update_and_has_the_parameters(tmp_path: Path) -> None:
    trainer = make_trainer(None)
    result = trainer.train_round(np.zeros(8, dtype=np.float32))
    assert result.update.dtype == np.float32
    assert result.update.shape == (8,)
    assert "update" not in repr(result)
    assert isinstance(result.params, MechanismStep)
    assert (
        result.params
        == trainer.next_step()
        == MechanismStep(noise_multiplier=result.params.noise_multiplier, sample_rate=0.2, steps=5)
    )
    assert trainer.describe()["mechanism"] == "dp-sgd/poisson-subsampled-gaussian"
    assert {"torch", "opacus", "dp-accounting"} <= set(trainer.describe()["library_versions"])


def test_delta_must_be_below_one_over_records() -> None:
    dataset = TensorDataset(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    with pytest.raises(InvalidPrivacyParameters, match="1/records"):
        PrivateTrainer(
            model=nn.Linear(3, 2),
            data=dataset,
            budget=PrivacyBudget(epsilon=1.0, delta=0.1),
            planned_rounds=1,
            local_epochs=1,
            batch_size=5,
            max_grad_norm=1.0,
            lr=0.1,
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 5, "sample_rate": 0.1},
        {"sample_rate": 0.001},  # q * records < 1
        {"batch_size": 5, "planned_rounds": 0},
        {"batch_size": 5, "lr": float("nan")},
    ],
)
def test_trainer_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    dataset = TensorDataset(torch.randn(100, 3), torch.zeros(100, dtype=torch.long))
    config: dict[str, object] = {
        "planned_rounds": 1,
        "local_epochs": 1,
        "max_grad_norm": 1.0,
        "lr": 0.1,
        **kwargs,
    }
    with pytest.raises(InvalidPrivacyParameters):
        PrivateTrainer(
            model=nn.Linear(3, 2),
            data=dataset,
            budget=PrivacyBudget(epsilon=1.0, delta=1e-3),
            **config,  # type: ignore[arg-type]
        )


def test_flat_params_round_trip_and_validation() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    vector = np.arange(26, dtype=np.float32)
    set_flat_params(model, vector)
    assert np.array_equal(get_flat_params(model), vector)
    with pytest.raises(ValueError, match="26"):
        set_flat_params(model, np.zeros(25, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        set_flat_params(model, np.full(26, np.nan, dtype=np.float32))


def test_generator_state_comes_entirely_from_random_bytes() -> None:
    fixed = bytes(range(256)) * 10

    def source(n: int) -> bytes:
        return fixed[:n]

    a = torch.rand(5, generator=cryptographic_generator(source))
    b = torch.rand(5, generator=cryptographic_generator(source))
    assert torch.equal(a, b)  # same bytes, same stream: the state is the bytes
    fresh = [torch.rand(5, generator=cryptographic_generator()) for _ in range(2)]
    assert not torch.equal(fresh[0], fresh[1])
    # Unlike manual_seed, which keeps only 32 bits, the last state word matters too.
    changed = bytearray(fixed[: 4 * 624])
    changed[-1] ^= 1
    c = torch.rand(700, generator=cryptographic_generator(lambda n: bytes(changed[:n])))
    d = torch.rand(700, generator=cryptographic_generator(source))
    assert not torch.equal(c, d)


def test_os_urandom_is_the_default_source() -> None:
    defaults = PrivateTrainer.__init__.__kwdefaults__
    assert defaults is not None
    assert defaults["random_bytes"] is os.urandom


def test_a_spent_budget_says_what_to_do(tmp_path: Path) -> None:
    from tests.coordinator.sdk.tasks import make_cnn_task

    task = make_cnn_task()
    state = tmp_path / "accountant.json"

    def trainer() -> PrivateTrainer:
        task = make_cnn_task()  # a fresh model each time, as a restarted silo builds
        return PrivateTrainer(
            model=task.model,
            data=task.dataset,
            budget=PrivacyBudget(epsilon=task.epsilon, delta=task.delta),
            planned_rounds=1,
            local_epochs=1,
            max_grad_norm=1.0,
            lr=0.1,
            batch_size=task.batch_size,
            state_path=state,
        )

    first = trainer()
    first.train_round(get_flat_params(task.model))
    again = trainer()  # a restarted silo, or a new study on the old state directory
    with pytest.raises(BudgetExceeded) as refused:
        again.train_round(get_flat_params(task.model))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("round refused: all 1 planned rounds are spent (epsilon=")
    assert message.endswith(
        f", on record in {state}); this silo can train no more in this federation: a new study needs a new "
        "federation id and a fresh state directory"
    )
