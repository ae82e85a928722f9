"""Per-silo cost of the masking protocol on the full graph against the SecAgg+ graph (Bell et al., CCS 2020).

    .venv/bin/python bench/bench_secaggplus.py                 # n = 100 and 200, 100,000-element vectors
    .venv/bin/python bench/bench_secaggplus.py --quick         # n = 100 and 200, 10,000 elements

One in-process round per row through the real ``SecAggClient`` and ``SecAggServer`` (no I/O), with
ceil(5 % of n) silos dropping before their masked input, so the server removes pairwise masks too. The full
graph uses the smallest safe threshold t > (n + c)/2; the graph row uses :func:`secagg.secaggplus_parameters`
with the same c (5 % of n), a 5 % dropout rate and the default failure bounds (2^-40 privacy, 2^-20
unmasking). Per-silo figures are the median over the silos of each stage's time (share keys: verify U1,
Shamir-share, encrypt; masked input: decrypt the inbox, key agreements, PRG; unmask: sign U3, check the
request, reveal), the ratio is graph / full in the same run, and the load average is read next to each row.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg import (
    Quantizer,
    Roster,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    minimum_threshold,
    secaggplus_parameters,
)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run_round(n: int, length: int, *, graph: bool) -> dict[str, float | int | str]:
    keys = {f"silo-{i:03d}": Ed25519PrivateKey.generate() for i in range(n)}
    roster = Roster.create(
        federation="bench",
        members={s: k.public_key().public_bytes_raw() for s, k in keys.items()},
        consortium_key=Ed25519PrivateKey.generate(),
    )
    collusion = math.ceil(0.05 * n)
    degree, threshold = 0, minimum_threshold(n, collusion)
    if graph:
        p = secaggplus_parameters(n=n, dropout_rate=0.05, collusion=collusion)
        degree, threshold = p.degree, p.threshold
    config = RoundConfig(
        federation="bench",
        round=0,
        model_hash=hashlib.sha256(b"model").digest(),
        vector_length=length,
        quantizer=Quantizer(clip=1.0, bits=16, max_silos=n),
        n=n,
        threshold=threshold,
        collusion=collusion,
        min_cohort=3,
        graph_degree=degree,
    )
    server = SecAggServer(config=config, roster=roster)
    clients = {
        s: SecAggClient(silo=s, signing_key=k, roster=roster, config=config)
        for s, k in keys.items()
    }
    gen = np.random.default_rng(0)
    inputs = {s: gen.integers(0, 1 << 16, size=length, dtype=np.uint32) for s in clients}
    gone = set(sorted(clients)[:: max(1, n // math.ceil(0.05 * n))][: math.ceil(0.05 * n)])
    for client in clients.values():
        server.receive_advertisement(client.advertise())
    ads = server.close_advertise()
    share, mask, unmask = [], [], []
    for client in clients.values():
        start = time.perf_counter()
        message = client.share_keys(ads)
        share.append(time.perf_counter() - start)
        server.receive_shares(message)
    inbox = server.close_share_keys()
    for silo, client in clients.items():
        if silo in gone:
            continue
        start = time.perf_counter()
        y = client.masked_input(inbox[silo], inputs[silo])
        mask.append(time.perf_counter() - start)
        server.add_masked_chunk(silo, 0, y)
        server.finish_masked_input(silo)
    survivors = server.close_masked_input()
    signing: dict[str, float] = {}
    for silo in survivors:
        start = time.perf_counter()
        signature = clients[silo].sign_survivors(survivors)
        signing[silo] = time.perf_counter() - start
        server.receive_survivor_signature(signature)
    request = server.close_consistency()
    for silo in survivors:
        start = time.perf_counter()
        response = clients[silo].unmask(request)
        unmask.append(signing[silo] + time.perf_counter() - start)
        server.receive_unmask(response)
    start = time.perf_counter()
    result = server.close_unmask()
    server_unmask = time.perf_counter() - start
    expected = np.zeros(length, dtype=np.uint32)
    for silo in survivors:
        expected += inputs[silo]
    assert np.array_equal(result.total, expected), "the sum is wrong"
    per_silo = statistics.median(share) + statistics.median(mask) + statistics.median(unmask)
    return {
        "graph": f"harary k={degree}" if graph else "full",
        "t": threshold,
        "share": statistics.median(share),
        "mask": statistics.median(mask),
        "unmask": statistics.median(unmask),
        "per_silo": per_silo,
        "server": server_unmask,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000-element vectors")
    parser.add_argument("--silos", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--params", type=int, default=None, help="vector length (default 100,000)")
    args = parser.parse_args()
    length = args.params or (10_000 if args.quick else 100_000)
    print(
        f"vector length {length}; c = dropouts = ceil(5 % n); per-silo figures are medians over the silos"
    )
    header = (
        f"{'n':>4} {'graph':<14} {'t':>4} {'share ms':>9} {'mask ms':>9} {'unmask ms':>10} "
        f"{'per silo ms':>12} {'vs full':>8} {'server unmask ms':>17} {'load':>6}"
    )
    print(header)
    print("-" * len(header))
    last = ""
    for n in args.silos:
        full = run_round(n, length, graph=False)
        for row in (full, run_round(n, length, graph=True)):
            ratio = float(row["per_silo"]) / float(full["per_silo"])
            print(
                f"{n:>4} {row['graph']:<14} {row['t']:>4} {1e3 * float(row['share']):>9.1f} "
                f"{1e3 * float(row['mask']):>9.1f} {1e3 * float(row['unmask']):>10.1f} "
                f"{1e3 * float(row['per_silo']):>12.1f} {ratio:>7.2f}x {1e3 * float(row['server']):>17.1f} "
                f"{float(row['load']):>6.2f}"
            )
            if row is not full:
                last = f"{n} silos x {length} params: per-silo graph/full {ratio:.2f}x"
    print(last)


if __name__ == "__main__":
    main()
