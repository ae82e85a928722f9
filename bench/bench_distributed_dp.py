"""Silo-side cost of distributed DP (rotation + rounding + noise) against masking alone.

Usage: .venv/bin/python bench/bench_distributed_dp.py [--quick] [--dimension N] [--peers P]

Baseline ("masking alone"), in the same process: for each of P peers, an AES-128-CTR
keystream from ``cryptography`` (4 bytes per coordinate: 4 MB for 1M parameters) is viewed
as uint32 and added into the masked vector (numpy uint32 wraps = mod 2^32), plus one
self-mask: the PRG work of the masking protocol (DESIGN 4.1), without key agreement.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dp.distributed import (
    DistributedDPConfig,
    encode,
    plan,
    randomized_hadamard,
    sample_discrete_gaussian,
    sample_skellam,
)
from dp.distributed._bits import BitSource
from dp.distributed.codec import _conditional_round


def _mask(vector: np.ndarray, peers: int) -> np.ndarray:
    out = vector.astype(np.uint32, copy=True)
    zeros = bytes(4 * out.size)
    for _ in range(peers + 1):  # pairwise masks + the self-mask
        cipher = Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor()
        out += np.frombuffer(cipher.update(zeros), dtype=np.uint32)
    return out


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64k parameters, one repeat")
    parser.add_argument("--dimension", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=9, help="other silos (n = peers + 1)")
    args = parser.parse_args()
    d = 65_536 if args.quick else args.dimension
    repeats = 1 if args.quick else 3
    n = args.peers + 1
    update = np.random.default_rng(0).normal(size=d).astype(np.float32)
    update *= np.float32(0.9 / np.linalg.norm(update))  # inside the clip norm C = 1
    seed = os.urandom(32)

    mask_time = _best(lambda: _mask(np.zeros(d, dtype=np.int64), args.peers), repeats)
    rows = []
    source = BitSource()
    for mechanism in ("skellam", "ddg"):
        config = DistributedDPConfig(
            mechanism=mechanism,
            l2_norm_clip=1.0,
            noise_multiplier=1.0,
            rounds=100,
            n_silos=n,
            bits=20,
        )
        p = plan(config, d)
        padded = np.zeros(p.padded_dimension)
        padded[:d] = update
        t_rot = _best(lambda padded=padded: randomized_hadamard(padded, seed), repeats)
        rotated = randomized_hadamard(padded, seed) * p.scale
        t_round = _best(
            lambda rotated=rotated, p=p: _conditional_round(rotated, p.norm_bound, True, source),
            repeats,
        )
        if mechanism == "skellam":
            t_noise = _best(
                lambda p=p: sample_skellam(p.share_parameter, p.padded_dimension, rng=source),
                repeats,
            )
        else:
            t_noise = _best(
                lambda p=p: sample_discrete_gaussian(
                    p.share_parameter, p.padded_dimension, rng=source
                ),
                repeats,
            )
        t_total = _best(lambda p=p: encode(update, p, rotation_seed=seed), repeats)
        rows.append((mechanism, p, t_rot, t_round, t_noise, t_total))

    print(
        f"distributed DP, silo side: d={d:,} (padded {rows[0][1].padded_dimension:,}), "
        f"n={n} silos, 20 bits, z=1, best of {repeats}"
    )
    print(
        f"baseline: masking alone with {args.peers} peers + self-mask "
        f"({(args.peers + 1) * 4 * d / 1e6:.0f} MB of AES-128-CTR): {mask_time * 1e3:8.1f} ms"
    )
    print()
    header = (
        f"{'mechanism':<9} {'rotation ms':>12} {'rounding ms':>12} {'noise ms':>10} "
        f"{'encode ms':>10} {'encode/mask':>12} {'share param':>12}"
    )
    print(header)
    print("-" * len(header))
    for mechanism, p, t_rot, t_round, t_noise, t_total in rows:
        print(
            f"{mechanism:<9} {t_rot * 1e3:12.1f} {t_round * 1e3:12.1f} {t_noise * 1e3:10.1f} "
            f"{t_total * 1e3:10.1f} {t_total / mask_time:11.2f}x {p.share_parameter:12.4g}"
        )


if __name__ == "__main__":
    main()
