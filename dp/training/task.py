"""A user's training task (model, dataset and training settings) and the check that DP-SGD can train its model.

A silo names a function returning a :class:`Task` in ``silo.toml`` (``[task] entry = "pkg.module:make_task"``) and
``secagg silo`` trains it with DP-SGD, with no Python loop to write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import Dataset

from dp.errors import IncompatibleModel, InvalidPrivacyParameters

__all__ = ["Task", "check_model"]


def check_model(model: nn.Module) -> None:
    """Refuse a model DP-SGD cannot train, naming the first offending layer and the fix, in one line.

    Notes:
        BatchNorm normalises each sample with its batch's statistics, so one record's gradient depends on the
        others in its batch and per-sample clipping no longer bounds its influence (Opacus' validator; Abadi et
        al. 2016). GroupNorm (Wu and He, ECCV 2018) normalises each sample on its own. Opacus'
        ``ModuleValidator.fix`` swaps BatchNorm for GroupNorm automatically, but on a layer with few channels or
        at the end of a network the result can be degenerate (a normalisation output that is constant, seen on
        a user's model, without a warning), so it is not applied: the user chooses the groups.

    Raises:
        IncompatibleModel: the model has a layer Opacus cannot compute per-sample gradients for.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            layer = f"{name or 'the model'} ({type(module).__name__})"
            raise IncompatibleModel(
                f"layer {layer} uses BatchNorm, which DP-SGD cannot train (it mixes the records of a batch): "
                f"replace it with nn.GroupNorm(num_groups, {module.num_features}), e.g. num_groups = "
                f"{_groups(module.num_features)}; the automatic fix is not applied because it can be degenerate"
            )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        first = str(errors[0]).splitlines()[0]
        raise IncompatibleModel(f"DP-SGD (Opacus) cannot train this model: {first[:300]}")


def _groups(channels: int) -> int:
    """A GroupNorm group count that divides ``channels`` (about 8 channels a group, as Wu and He suggest)."""
    for groups in (32, 16, 8, 4, 2, 1):
        if channels % groups == 0 and channels // groups >= min(8, channels):
            return groups
    return 1


@dataclass(frozen=True, kw_only=True)
class Task:
    """What a silo's task entry point returns: the model, the local dataset and the training settings.

    Attributes:
        model: the torch module the federation trains; the coordinator's ``[model]`` must build the same
            architecture (its parameters, flattened in ``parameters()`` order, are the global model).
        dataset: this silo's records, a map-style dataset of ``(features, label)`` pairs.
        epsilon: this silo's total record-level privacy budget over all rounds.
        delta: the budget's delta (the trainer insists on delta < 1 / records).
        batch_size: expected batch size (Poisson sampling rate = batch_size / records).
        lr: learning rate.
        local_epochs: local passes over the dataset per round.
        max_grad_norm: per-sample gradient clipping norm C.
        loss_fn: the loss (cross-entropy when ``None``).

    Raises:
        IncompatibleModel: see :func:`check_model`.
        InvalidPrivacyParameters: a setting out of range.
    """

    model: nn.Module = field(repr=False)
    dataset: Dataset[Any] = field(repr=False)
    epsilon: float
    delta: float
    batch_size: int
    lr: float = 0.1
    local_epochs: int = 1
    max_grad_norm: float = 1.0
    loss_fn: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise InvalidPrivacyParameters(
                f"Task.model must be a torch nn.Module, got {type(self.model).__name__}"
            )
        for name in ("epsilon", "lr", "max_grad_norm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidPrivacyParameters(
                    f"Task.{name} must be a finite number > 0, got {value!r}"
                )
        if not (isinstance(self.delta, int | float) and 0 < self.delta < 1):
            raise InvalidPrivacyParameters(f"Task.delta must be in (0, 1), got {self.delta!r}")
        for name in ("batch_size", "local_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidPrivacyParameters(f"Task.{name} must be an int >= 1, got {value!r}")
        check_model(self.model)
