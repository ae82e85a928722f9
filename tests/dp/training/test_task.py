"""``dp.training.Task`` and ``check_model``: a model DP-SGD cannot train is refused in one line naming the layer
and the fix, and Opacus' automatic fix is never applied."""

from __future__ import annotations

import pytest
from torch import nn
from torch.utils.data import TensorDataset

from dp.accounting import PrivacyBudget
from dp.errors import IncompatibleModel, InvalidPrivacyParameters
from dp.training import PrivateTrainer, Task, check_model
from tests.coordinator.sdk.tasks import (
    make_batchnorm_task,
    make_cnn,
    make_cnn_task,
    make_tiny_dataset_task,
)


def test_a_batchnorm_layer_is_named_with_the_groupnorm_fix() -> None:
    with pytest.raises(IncompatibleModel) as refused:
        make_batchnorm_task()
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        "layer 1 (BatchNorm2d) uses BatchNorm, which DP-SGD cannot train (it mixes the records of a batch): "
        "replace it with nn.GroupNorm(num_groups, 4), e.g. num_groups = 1; the automatic fix is not applied "
        "because it can be degenerate"
    )


def test_a_nested_batchnorm_is_named_by_its_path_and_the_model_is_left_as_it_was() -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Linear(4, 64), nn.BatchNorm1d(64)))
    with pytest.raises(
        IncompatibleModel,
        match=r"^layer features.1 \(BatchNorm1d\) .*GroupNorm\(num_groups, 64\), e.g. num_groups = 8",
    ):
        check_model(model)
    assert isinstance(model.features[1], nn.BatchNorm1d)  # not "fixed" behind the user's back


def test_the_trainer_refuses_batchnorm_too() -> None:
    task = make_cnn_task()
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(IncompatibleModel, match="layer 1 \\(BatchNorm1d\\)"):
        PrivateTrainer(
            model=model,
            data=task.dataset,
            budget=PrivacyBudget(epsilon=1.0, delta=1e-5),
            planned_rounds=1,
            local_epochs=1,
            max_grad_norm=1.0,
            lr=0.1,
            batch_size=10,
        )


def test_a_dataset_smaller_than_the_batch_says_so() -> None:
    task = make_tiny_dataset_task()
    with pytest.raises(InvalidPrivacyParameters) as refused:
        PrivateTrainer(
            model=task.model,
            data=task.dataset,
            budget=PrivacyBudget(epsilon=task.epsilon, delta=task.delta),
            planned_rounds=1,
            local_epochs=1,
            max_grad_norm=1.0,
            lr=0.1,
            batch_size=task.batch_size,
        )
    assert str(refused.value) == (
        "the dataset has 20 records, fewer than the batch size 32: lower batch_size to at most 20 (a fraction "
        "of the records, e.g. 2), or train on more data"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epsilon": 0.0}, "Task.epsilon must be a finite number > 0"),
        ({"delta": 1.0}, r"Task.delta must be in \(0, 1\)"),
        ({"batch_size": 0}, "Task.batch_size must be an int >= 1"),
        ({"model": "cnn"}, "Task.model must be a torch nn.Module, got str"),
    ],
)
def test_task_settings_are_checked(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {
        "model": make_cnn(),
        "dataset": TensorDataset(),
        "epsilon": 1.0,
        "delta": 1e-5,
        "batch_size": 4,
    } | changes
    with pytest.raises(InvalidPrivacyParameters, match=message):
        Task(**settings)  # type: ignore[arg-type]
