"""Benchmark: packed threshold Paillier vs naive one-value-per-ciphertext phe (DESIGN 5, issue 6).

Run ``.venv/bin/python bench/bench_paillier.py`` (2048-bit key, 1,000,000 parameters per silo, 10 silos) or
``--quick`` (1024-bit key, 20,000 parameters). Everything runs on one core unless a row says "2 workers".
The naive baseline, the standard obfuscators and the threshold decryption are measured on a sample and
extrapolated (the row says so); encryption, upload and aggregation are measured in full.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.hazmat.paillier import (
    ObfuscatorMode,
    ObfuscatorPool,
    ciphertexts_from_bytes,
    combine_partial_decryptions,
    deal_threshold_key,
    partial_decrypt,
)
from secagg.paillier import (
    DecryptionRequest,
    InMemoryDecryptionHistory,
    PaillierAggregator,
    PaillierContributor,
    PaillierRoundConfig,
    PartialDecrypter,
)

VALUE_BITS = 16
SILOS = 10
THRESHOLD = 6  # DESIGN 4.3: n = 10 -> t = 6..7


T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1024-bit key, 20,000 parameters")
    args = parser.parse_args()
    key_bits = 1024 if args.quick else 2048
    length = 20_000 if args.quick else 1_000_000
    naive_sample = 20 if args.quick else 200
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str, note: str = "") -> None:
        rows.append((name, value, note))
        print(f"  {name}: {value} {note}", flush=True)

    print(
        f"threshold Paillier bench: {key_bits}-bit N, {length:,} params/silo, {SILOS} silos, t={THRESHOLD}"
    )
    seconds, material = _timed(
        lambda: deal_threshold_key(
            threshold=THRESHOLD, parties=SILOS, key_bits=key_bits, insecure_test_key_size=args.quick
        )
    )
    keys = material
    pk = keys.public_key
    row("safe-prime key generation (dealer, once)", f"{seconds:.1f} s")

    config = PaillierRoundConfig(
        federation_id="bench",
        round_number=1,
        session_id=os.urandom(32),
        vector_length=length,
        value_bits=VALUE_BITS,
        max_contributors=SILOS,
        min_cohort=3,
    )
    packing = config.packing(pk)
    count = packing.plaintexts_for(length)
    row(
        "layout",
        f"{packing.slot_bits}-bit slots x {packing.slots_per_plaintext}/ciphertext",
        f"-> {count:,} ct",
    )

    # --- naive phe baseline: one value per ciphertext, phe's own encrypt (sampled, extrapolated) ----------
    gen = np.random.default_rng()
    bound = (1 << (VALUE_BITS - 1)) - 1
    sample = [int(x) for x in gen.integers(-bound, bound + 1, size=naive_sample)]
    seconds, _ = _timed(lambda: [pk.paillier.encrypt(x) for x in sample])
    naive_total = seconds / naive_sample * length
    row(
        "naive phe encrypt, total",
        f"{naive_total:,.0f} s",
        f"(extrapolated from {naive_sample} values)",
    )

    # --- ours: offline pool fill (1 core, then 2 workers), online pack+encrypt+commit ----------------------
    pool = ObfuscatorPool(pk)
    offline, _ = _timed(lambda: pool.fill(count))
    row(
        "ours offline: obfuscator pool fill, 1 core",
        f"{offline:.2f} s",
        "(DJN short exponent, default)",
    )
    for executor in ("process", "thread"):
        probe = ObfuscatorPool(pk)
        seconds, _ = _timed(functools.partial(probe.fill, count, workers=2, executor=executor))
        row(f"ours offline: pool fill, 2 workers ({executor} pool)", f"{seconds:.2f} s")
    standard_sample = min(count, 200)
    seconds, _ = _timed(
        lambda: ObfuscatorPool(pk, mode=ObfuscatorMode.STANDARD).fill(standard_sample)
    )
    row(
        "standard r^N obfuscators (DCR only), 1 core",
        f"{seconds / standard_sample * count:.1f} s",
        f"(extrapolated from {standard_sample})",
    )

    signing = {f"silo-{i:02d}": Ed25519PrivateKey.generate() for i in range(SILOS)}
    roster = {s: k.public_key().public_bytes_raw() for s, k in signing.items()}
    updates = {s: gen.integers(-bound, bound + 1, size=length) for s in signing}
    first = next(iter(signing))
    contributor = PaillierContributor(
        silo_id=first, signing_key=signing[first], public_key=pk, config=config, pool=pool
    )
    online, submission = _timed(lambda: contributor.encrypt_update(updates[first]))
    chunks, commitment = submission
    row("ours online: pack + encrypt + Merkle + sign", f"{online:.3f} s", "(target < 1 s)")
    ours_total = offline + online
    row(
        "speed-up vs naive phe (offline + online, 1 core)",
        f"{naive_total / ours_total:,.0f}x",
        "(target >= 500x)",
    )

    upload = (
        sum(len(c.data) for c in chunks) + len(commitment.merkle_root) + len(commitment.signature)
    )
    float32 = 4 * length
    naive_upload = pk.ciphertext_bytes * length
    row(
        "upload per silo",
        f"{upload / 1e6:.2f} MB",
        f"= {upload / float32:.2f}x float32 (target <= 1.5x)",
    )
    row(
        "naive phe upload per silo",
        f"{naive_upload / 1e6:.0f} MB",
        f"= {naive_upload / float32:.0f}x float32",
    )

    # --- coordinator aggregation of 10 silos -----------------------------------------------------------------
    submissions = {first: submission}
    for silo in list(signing)[1:]:
        silo_pool = ObfuscatorPool(pk)
        silo_pool.fill(count, workers=2)
        submissions[silo] = PaillierContributor(
            silo_id=silo, signing_key=signing[silo], public_key=pk, config=config, pool=silo_pool
        ).encrypt_update(updates[silo])
    aggregator = PaillierAggregator(public_key=pk, config=config, roster=roster)

    def aggregate() -> DecryptionRequest:
        for chunks_, commitment_ in submissions.values():
            aggregator.accept_commitment(commitment_)
            for chunk in chunks_:
                aggregator.accept_chunk(chunk)
        return aggregator.decryption_request()

    seconds, request = _timed(aggregate)
    row(f"coordinator: aggregate {SILOS} silos (verify, Merkle, multiply)", f"{seconds:.2f} s")

    # --- threshold decryption ------------------------------------------------------------------------------------
    holders = list(signing)[:THRESHOLD]
    decrypter = PartialDecrypter(
        silo_id=holders[0],
        share=keys.shares[0],
        public_key=pk,
        config=config,
        roster=roster,
        history=InMemoryDecryptionHistory(),
    )
    seconds_check, challenge = _timed(lambda: decrypter.challenge(request))
    seconds_open, _ = _timed(lambda: aggregator.open_spot_checks(challenge))
    row("decrypter: verify 10 signed commitments + draw positions", f"{seconds_check:.2f} s")
    row("coordinator: open spot checks (Merkle paths)", f"{seconds_open:.2f} s")

    aggregate_cts = ciphertexts_from_bytes(pk, request.aggregate)
    sample_cts = [int(c) for c in aggregate_cts[: 32 if args.quick else 96]]
    scale = count / len(sample_cts)
    note = f"(extrapolated from {len(sample_cts)} ciphertexts)"
    per_party: dict[int, float] = {}
    for workers in (1, 2):
        seconds, _ = _timed(
            functools.partial(
                partial_decrypt, pk, keys.shares[0], sample_cts, context=b"bench", workers=workers
            )
        )
        per_party[workers] = seconds * scale
        row(
            f"partial decryption + proof, per party, {workers} core(s)",
            f"{per_party[workers]:.1f} s",
            note,
        )
    partials = [
        partial_decrypt(pk, share, sample_cts, context=b"bench", workers=2)
        for share in keys.shares[:THRESHOLD]
    ]
    seconds, plaintexts = _timed(
        lambda: combine_partial_decryptions(pk, sample_cts, partials, context=b"bench")
    )
    combine = seconds * scale
    row(f"combine {THRESHOLD} partials (verify proofs + Lagrange)", f"{combine:.1f} s", note)
    row(
        "threshold decryption total, wall clock",
        f"{per_party[2] + combine:.1f} s",
        "(parties in parallel, 2 cores each)",
    )
    row(
        "threshold decryption total, compute",
        f"{THRESHOLD * per_party[1] + combine:.1f} s",
        "(all parties)",
    )
    # The decrypted sample decodes to the exact sum of the first values (slot order is vector order).
    covered = len(sample_cts) * packing.slots_per_plaintext
    if covered <= length:
        decoded = packing.unpack_sum(plaintexts, length=covered, contributors=SILOS)
        expected = sum(u[:covered] for u in updates.values())
        assert np.array_equal(decoded, expected), "aggregate does not decode to the exact sum"
        row("exact sum check on the decrypted sample", "ok")

    width = max(len(r[0]) for r in rows)
    print()
    print(f"| {'measure'.ljust(width)} | value | note |")
    print(f"|{'-' * (width + 2)}|-------|------|")
    for name, value, note_ in rows:
        print(f"| {name.ljust(width)} | {value} | {note_} |")


if __name__ == "__main__":
    main()
