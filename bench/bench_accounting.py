"""Live privacy accounting: 1,000 rounds at sample rate 0.1, ours vs Opacus' per-round get_epsilon.

Each round is one local epoch (10 noisy steps at q = 0.1, sigma = 1.0). Per round a silo
checks the projected spend, records the round and reads epsilon. Opacus' RDPAccountant
recomputes the RDP curve on every ``get_epsilon``; its cost per call does not depend on the
round (identical rounds merge into one history entry), so we time a sample of rounds and
extrapolate to 1,000.

Run: .venv/bin/python bench/bench_accounting.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings

from opacus.accountants import RDPAccountant

from dp.accounting import BudgetLedger, MechanismStep, PrivacyBudget, RdpAccountant
from dp.accounting._rdp import _per_step_rdp_cached

SIGMA, RATE, STEPS_PER_ROUND, DELTA = 1.0, 0.1, 10, 1e-5


def ours(rounds: int) -> tuple[float, float, float]:
    """Total seconds (cold cache), seconds of the first round alone, final epsilon."""
    _per_step_rdp_cached.cache_clear()  # cold: the first round computes the curve
    step = MechanismStep(noise_multiplier=SIGMA, sample_rate=RATE, steps=STEPS_PER_ROUND)
    start = time.perf_counter()
    ledger = BudgetLedger(
        budget=PrivacyBudget(epsilon=1e9, delta=DELTA), records=10_000, accountant=RdpAccountant()
    )
    epsilon = ledger.record(step)  # check (projected epsilon) + record
    first = time.perf_counter() - start
    for _ in range(rounds - 1):
        epsilon = ledger.record(step)
    return time.perf_counter() - start, first, epsilon


def opacus(rounds: int, sample: int) -> tuple[float, float]:
    accountant = RDPAccountant()
    timed = 0.0
    epsilon = 0.0
    every = max(rounds // sample, 1)
    measured = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(rounds):
            for _ in range(STEPS_PER_ROUND):
                accountant.step(noise_multiplier=SIGMA, sample_rate=RATE)
            if r % every == 0 or r == rounds - 1:
                start = time.perf_counter()
                epsilon = accountant.get_epsilon(delta=DELTA)
                timed += time.perf_counter() - start
                measured += 1
    return timed / measured * rounds, float(epsilon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 rounds, 5 Opacus samples")
    args = parser.parse_args()
    rounds, sample = (100, 5) if args.quick else (1000, 40)
    ours_s, first_s, ours_eps = ours(rounds)
    opacus_s, opacus_eps = opacus(rounds, sample)
    print(f"Live accounting, {rounds} rounds x {STEPS_PER_ROUND} steps, q={RATE}, sigma={SIGMA}")
    print(f"{'accountant':<44} {'total s':>10} {'per round ms':>13} {'ratio':>8}")
    print(
        f"{'opacus RDPAccountant.get_epsilon (extrap.)':<44} {opacus_s:>10.3f} "
        f"{opacus_s / rounds * 1e3:>13.3f} {1.0:>8.1f}"
    )
    print(
        f"{'ours: cached RDP vector (check+record+eps)':<44} {ours_s:>10.4f} "
        f"{ours_s / rounds * 1e3:>13.4f} {opacus_s / ours_s:>7.0f}x"
    )
    print(f"{'  of which round 1 (computes the curve)':<44} {first_s:>10.4f}")
    print(
        f"{'  of which rounds 2..N (cached vector)':<44} {ours_s - first_s:>10.4f} "
        f"{(ours_s - first_s) / max(rounds - 1, 1) * 1e3:>13.4f}"
    )
    print(
        f"final epsilon at delta={DELTA:g}: ours {ours_eps:.9f}, opacus {opacus_eps:.9f}, "
        f"|diff| {abs(ours_eps - opacus_eps):.2e}"
    )
    print(f"target < 0.1 s total: {'met' if ours_s < 0.1 else 'NOT met'}")


if __name__ == "__main__":
    main()
