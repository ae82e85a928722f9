"""Worker process for the tight accountant: reads a job as JSON on stdin, prints epsilon.

Run as ``python -m dp.accounting._pld_worker`` by ``dp.accounting.tight``; it lives in its
own interpreter so the parent can kill it when the time limit passes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def pld_epsilon(
    history: Sequence[tuple[float, float, int]], delta: float, value_discretization_interval: float
) -> float:
    """Epsilon of the composed Poisson-subsampled Gaussian rounds with dp-accounting's PLD.

    Rounds with equal (sigma, q) are merged first (composition is commutative), so a long
    federation at one noise level costs one self-composition.
    """
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        for (sigma, q), steps in sorted(merged.items())
    ]
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=value_discretization_interval,
    )
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def main() -> int:
    """Read ``{"history", "delta", "value_discretization_interval"}``; print ``{"epsilon"}``."""
    job: dict[str, Any] = json.loads(sys.stdin.read())
    history = [(float(s), float(q), int(n)) for s, q, n in job["history"]]
    epsilon = pld_epsilon(history, float(job["delta"]), float(job["value_discretization_interval"]))
    # allow_nan: the parent validates and records a non-finite result as a fallback reason.
    sys.stdout.write(json.dumps({"epsilon": epsilon}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
