"""The built-in breast-cancer task: deterministic non-IID split and a useful private model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dp.training.example import (
    DEMO_BUDGET,
    evaluate,
    load_breast_cancer_silos,
    simulate_federation,
    train_central_baseline,
)


def test_split_is_deterministic_disjoint_and_label_skewed() -> None:
    a = load_breast_cancer_silos(n_silos=3, seed=7)
    b = load_breast_cancer_silos(n_silos=3, seed=7)
    for (xa, ya), (xb, yb) in zip(a.silos, b.silos, strict=True):
        assert np.array_equal(xa, xb)
        assert np.array_equal(ya, yb)
    sizes = [len(y) for _, y in a.silos]
    assert sum(sizes) + len(a.test_labels) == 569
    rows = {tuple(row) for x, _ in a.silos for row in x.tolist()}
    assert len(rows) == sum(sizes)  # no record in two silos
    benign_share = [float(np.mean(y)) for _, y in a.silos]
    assert benign_share[0] > 0.75
    assert benign_share[-1] < 0.45
    assert a.n_features == 30


def test_private_federation_is_within_five_points_of_the_baseline(
    seeded_bytes: Callable[[int], bytes],
) -> None:
    split = load_breast_cancer_silos()
    baseline = evaluate(
        train_central_baseline(*split.pooled()), split.test_features, split.test_labels
    )
    outcome = simulate_federation(split, random_bytes=seeded_bytes)
    private = evaluate(outcome.weights, split.test_features, split.test_labels)
    spent = [results[-1].epsilon_spent for results in zip(*outcome.rounds, strict=True)]
    print(f"baseline {baseline:.3f}, private {private:.3f}, epsilon spent {spent}")
    assert baseline > 0.95
    assert private >= baseline - 0.05
    assert all(eps <= DEMO_BUDGET.epsilon for eps in spent)
