"""DP-SGD overhead: Opacus DP-SGD vs non-private SGD on the demo model, time per epoch.

Demo task (breast cancer, logistic regression), one silo's data, batch 32 (expected batch
for DP-SGD: Poisson sampling at q = 32 / records), single-threaded torch for both.

Run: .venv/bin/python bench/bench_dpsgd.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from opacus import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader

from dp.training import cryptographic_generator, run_dp_sgd, set_flat_params
from dp.training.example import initial_weights, load_breast_cancer_silos, make_model, silo_dataset

BATCH = 32


def non_private(dataset: torch.utils.data.Dataset[tuple[torch.Tensor, ...]], epochs: int) -> float:
    model = make_model(30)
    set_flat_params(model, initial_weights(30))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    return (time.perf_counter() - start) / epochs


def private(dataset: torch.utils.data.Dataset[tuple[torch.Tensor, ...]], epochs: int) -> float:
    model = make_model(30)
    set_flat_params(model, initial_weights(30))
    module = GradSampleModule(model, loss_reduction="mean")
    records = len(dataset)  # type: ignore[arg-type]
    start = time.perf_counter()
    run_dp_sgd(
        module=module,
        dataset=dataset,
        sample_rate=BATCH / records,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        lr=0.5,
        epochs=epochs,
        loss_fn=nn.CrossEntropyLoss(),
        noise_generator=cryptographic_generator(),
        sampling_generator=cryptographic_generator(),
    )
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs only")
    args = parser.parse_args()
    epochs = 5 if args.quick else 200
    torch.set_num_threads(1)
    split = load_breast_cancer_silos()
    cases = {
        "one silo": silo_dataset(*split.silos[0]),
        "pooled (central)": silo_dataset(*split.pooled()),
    }
    print(f"DP-SGD vs non-private SGD, demo logistic model, batch {BATCH}, {epochs} epochs")
    print(
        f"{'data':<18} {'records':>8} {'non-private ms/epoch':>21} {'DP-SGD ms/epoch':>16} "
        f"{'ratio':>7}"
    )
    for name, dataset in cases.items():
        non_private(dataset, 1)  # warm-up
        private(dataset, 1)
        base = non_private(dataset, epochs)
        dp = private(dataset, epochs)
        print(
            f"{name:<18} {len(dataset):>8} {base * 1e3:>21.2f} {dp * 1e3:>16.2f} {dp / base:>6.2f}x"
        )


if __name__ == "__main__":
    main()
