"""Silo-side cost of distributed DP (rotation + rounding + noise) against the real masking client.

    .venv/bin/python bench/bench_distributed_dp.py            # 1,000,000 parameters, 9 peers (~1 min)
    .venv/bin/python bench/bench_distributed_dp.py --quick    # 65,536 parameters (seconds)

Baseline ("masking alone"), in the same process: :meth:`secagg.SecAggClient.masked_input` of a silo in a
federation of ``peers + 1`` silos advanced through stage 2 (inbox decryption, X25519 agreements, HKDF and
``peers + 1`` AES-128-CTR masks over the update), as ``bench/bench_secagg.py`` times it, on the same number
of parameters. ``encode`` is :func:`dp.distributed.encode` (clip, rotate, scale, round, add the noise share)
with the plan a federation of ``peers + 1`` silos would use. Both run on one core (the process is pinned and
OpenBLAS limited to one thread before numpy loads), best of ``--repeat``, with the 1-minute load average next
to each figure. Noise is timed with the default samplers (tables within 2^-100, see
:mod:`dp.distributed.samplers`) and with the exact rejection samplers (``exact=True``), the "before" path;
the table's one-time build (cached per share parameter) is shown separately.
"""

from __future__ import annotations

import os

# Before numpy loads: one BLAS thread, so the figures are per core like the masking baseline.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_secagg import federation, pin_one_core

from dp.distributed import (
    BitSource,
    DistributedDPConfig,
    encode,
    plan,
    sample_discrete_gaussian,
    sample_skellam,
    sampling_distance,
)
from dp.distributed._tables import (
    gaussian_table,
    poisson_table,
    skellam_table,
    skellam_table_fits,
)
from dp.distributed.codec import _conditional_round
from dp.distributed.rotation import rotate_scaled


def _best(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall time in seconds of ``repeats`` runs, and the load average after them."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best, os.getloadavg()[0]


class _Masking:
    """The real client's masked_input, one fresh silo per run (each silo may mask once per round)."""

    def __init__(self, d: int, peers: int, runs: int) -> None:
        self.setups = [federation(peers + 1, d) for _ in range(-(-runs // (peers + 1)))]
        self.silos = iter([(s, silo) for s in self.setups for silo in s.clients])
        self.x = np.zeros(d, dtype=np.uint32)

    def run(self) -> None:
        setup, silo = next(self.silos)
        setup.clients[silo].masked_input(setup.inbox[silo], self.x)


def _noise(mechanism: str, parameter: float, d: int, source: BitSource, exact: bool) -> object:
    if mechanism == "skellam":
        return sample_skellam(parameter, d, rng=source, exact=exact)
    return sample_discrete_gaussian(parameter, d, rng=source, exact=exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="65,536 parameters")
    parser.add_argument("--dimension", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=9, help="other silos (n = peers + 1)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bits", type=int, default=20)
    args = parser.parse_args()
    pinned = pin_one_core()
    d = 65_536 if args.quick else args.dimension
    repeats = args.repeat
    n = args.peers + 1
    update = np.random.default_rng(0).normal(size=d).astype(np.float32)
    update *= np.float32(0.9 / np.linalg.norm(update))  # inside the clip norm C = 1
    seed = os.urandom(32)

    masking = _Masking(d, args.peers, 3 * repeats)
    mask_time, mask_load = _best(masking.run, repeats)
    rows = []
    source = BitSource()
    for mechanism in ("skellam", "ddg"):
        config = DistributedDPConfig(
            mechanism=mechanism,
            l2_norm_clip=1.0,
            noise_multiplier=1.0,
            rounds=100,
            n_silos=n,
            bits=args.bits,
        )
        p = plan(config, d)
        dim, mu = p.padded_dimension, p.share_parameter
        start = time.perf_counter()
        if mechanism == "ddg":
            gaussian_table(mu)
        elif skellam_table_fits(mu):
            skellam_table(mu)
        else:
            poisson_table(mu)
        t_build = time.perf_counter() - start
        encode(update, p, rotation_seed=seed)  # warm-up: page in buffers, first BLAS call
        values = update.astype(np.float64)
        t_rot, _ = _best(
            lambda values=values, p=p: rotate_scaled(values, p.padded_dimension, seed, p.scale),
            repeats,
        )
        rotated = rotate_scaled(values, dim, seed, p.scale)
        t_round, _ = _best(
            lambda rotated=rotated, p=p: _conditional_round(rotated, p.norm_bound, True, source),
            repeats,
        )
        t_noise, _ = _best(
            lambda m=mechanism, mu=mu, dim=dim: _noise(m, mu, dim, source, False), repeats
        )
        t_exact, _ = _best(lambda m=mechanism, mu=mu, dim=dim: _noise(m, mu, dim, source, True), 1)
        # Encode and masking interleaved, so a change of load on the shared machine hits both.
        t_total = t_mask = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            encode(update, p, rotation_seed=seed)
            t_total = min(t_total, time.perf_counter() - start)
            start = time.perf_counter()
            masking.run()
            t_mask = min(t_mask, time.perf_counter() - start)
        load = os.getloadavg()[0]
        mask_time = min(mask_time, t_mask)
        eps = p.silo_level_epsilon(rounds=config.rounds)
        rows.append((mechanism, p, t_build, t_rot, t_round, t_noise, t_exact, t_total, load, eps))

    print(
        f"distributed DP, silo side: d={d:,} (padded {rows[0][1].padded_dimension:,}), n={n} silos, "
        f"{args.bits} bits, z=1, best of {repeats}, {pinned}"
    )
    print(
        f"baseline: SecAggClient.masked_input, {args.peers} peers, {d:,} parameters: "
        f"{mask_time * 1e3:.1f} ms (load {mask_load:.2f})"
    )
    print()
    header = (
        f"{'mechanism':<9} {'share param':>11} {'table build ms':>14} {'rotation ms':>11} "
        f"{'rounding ms':>11} {'noise ms':>9} {'exact noise ms':>14} {'encode ms':>9} "
        f"{'encode/mask':>11} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for mechanism, p, t_build, t_rot, t_round, t_noise, t_exact, t_total, load, _ in rows:
        print(
            f"{mechanism:<9} {p.share_parameter:11.4g} {t_build * 1e3:14.1f} {t_rot * 1e3:11.1f} "
            f"{t_round * 1e3:11.1f} {t_noise * 1e3:9.1f} {t_exact * 1e3:14.1f} {t_total * 1e3:9.1f} "
            f"{t_total / mask_time:10.2f}x {load:5.2f}"
        )
    print()
    for mechanism, p, *_, eps in rows:
        per_draw = sampling_distance(mechanism, p.share_parameter)
        one = p.silo_level_epsilon(rounds=1)
        print(
            f"{mechanism}: sampling distance per draw {per_draw:.3g}, per round (all silos) "
            f"{p.sampling_distance_per_round:.3g}; delta with it (target {p.config.target_delta!r}): "
            f"{one.delta!r} after 1 round (eps {one.epsilon:.2f}), {eps.delta!r} after "
            f"{eps.rounds} (eps {eps.epsilon:.2f}: (1 + e^eps) times the distance)"
        )
    ratio = {mechanism: t_total / mask_time for mechanism, *_, t_total, _l, _e in rows}
    print(f"encode/masking: skellam {ratio['skellam']:.1f}, ddg {ratio['ddg']:.1f}")


if __name__ == "__main__":
    main()
