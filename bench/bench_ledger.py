"""Audit ledger benchmark: append throughput (checkpoint every 1,000) and 100k-bundle verify time.

The workload is what the coordinator writes: per round one ``round_opened``, one
``key_fingerprints``, one ``participants``, one signed ``privacy_attestation`` per surviving
silo (5..10 of 10 silos, real :class:`dp.accounting.PrivacyAttestation` payloads, epsilon from
the RDP accountant), one ``global_model`` and one ``round_closed``, then a signed checkpoint.

Baselines run in the same process: raw SQLite inserts of the same bytes with the same
durability settings (WAL, synchronous=FULL, same batch size), and the bare Ed25519
verification of the same attestation signatures in one process (the floor for a one-process
verifier). The 100k-entry verify rows run in a fresh process each, as ``secagg audit verify``
does: verifying inside this process would fork its worker from a heap of a million benchmark
objects, and copy-on-write faults on that heap cost the verifier seconds the command never
pays. Run ``python bench/bench_ledger.py`` (about two minutes) or ``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audits import (
    CheckpointSigner,
    CheckpointWitness,
    Event,
    EventKind,
    Ledger,
    LedgerEntry,
    RdpEpsilonAccount,
    verify_bundle,
    write_bundle,
)
from audits.witness import check_fork, sign_statement, verify_statement
from dp.accounting import (
    DP_SGD_MECHANISM,
    MechanismStep,
    PrivacyAttestation,
    RdpAccountant,
    library_versions,
    recompute_epsilon,
)

FEDERATION = "bench"
ORIGIN = "bench/log"
SILOS = [f"hospital-{i:02d}" for i in range(10)]
DELTA = 1e-5


class Clock:
    """Deterministic RFC 3339 timestamps with microseconds, like the coordinator's."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> str:
        self.t += 1
        s, us = divmod(self.t * 1_700, 1_000_000)
        return f"2025-01-01T{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{us:06d}Z"


def make_rounds(count: int, keys: Mapping[str, Ed25519PrivateKey]) -> list[list[Event]]:
    """At least ``count`` events, grouped as the coordinator appends them (first: creation)."""
    clock = Clock()

    def event(kind: EventKind, rnd: int | None, body: Mapping[str, Any]) -> Event:
        return Event.now(kind, federation=FEDERATION, round=rnd, body=body, clock=clock)

    creation = event(
        EventKind.FEDERATION_CREATED,
        None,
        {
            "config": {"rounds": count, "vector_length": 31, "quantization_bits": 16},
            "roster_fingerprint": "00" * 32,
            "threat_model": {"n": 10, "t": 7, "c": 2, "min_cohort": 5, "mode": "masking"},
            "privacy": {"budget": {"epsilon": 1e6, "delta": DELTA}},
        },
    )
    rounds = [[creation]]
    accountants = {s: RdpAccountant() for s in SILOS}
    versions = library_versions()
    # describe() reads package metadata (~1 ms): once, not per attestation.
    accountant_name = RdpAccountant().describe()["accountant"]
    total, rnd, model = 1, 0, hashlib.sha256(b"model-0").hexdigest()
    while total < count:
        rnd += 1
        cohort = [SILOS[(rnd + j) % len(SILOS)] for j in range(5 + rnd % 6)]
        dropped = cohort[-1:] if rnd % 10 == 0 else []
        survivors = [s for s in cohort if s not in dropped]
        session = hashlib.sha256(f"session-{rnd}".encode()).hexdigest()
        batch = [
            event(EventKind.ROUND_OPENED, rnd, {"model_hash": model}),
            event(
                EventKind.KEY_FINGERPRINTS,
                rnd,
                {
                    "fingerprints": {
                        s: hashlib.sha256(f"{s}/{rnd}".encode()).hexdigest() for s in cohort
                    }
                },
            ),
            event(
                EventKind.PARTICIPANTS,
                rnd,
                {"survivors": survivors, "dropped": dropped, "stage": "unmask"},
            ),
        ]
        for silo in survivors:
            step = MechanismStep(
                noise_multiplier=1.0 + 0.05 * SILOS.index(silo), sample_rate=0.01, steps=50
            )
            accountant = accountants[silo]
            accountant.record(step)
            epsilon = accountant.epsilon(DELTA)
            attestation = PrivacyAttestation(
                federation=FEDERATION,
                round=rnd,
                session_id=session,
                silo=silo,
                mechanism=DP_SGD_MECHANISM,
                noise_multiplier=step.noise_multiplier,
                sample_rate=step.sample_rate,
                steps=step.steps,
                max_grad_norm=1.0,
                accountant=accountant_name,
                epsilon=epsilon,
                delta=DELTA,
                library_versions=versions,
            )
            payload = attestation.signing_payload()
            body = {
                "silo": silo,
                "attestation": attestation.to_dict(),
                "signature": keys[silo].sign(payload).hex(),
                "signing_payload": payload.hex(),
                "recomputed_epsilon": epsilon,
                "accountant": accountant_name,
            }
            batch.append(event(EventKind.PRIVACY_ATTESTATION, rnd, body))
        model = hashlib.sha256(f"model-{rnd}".encode()).hexdigest()
        batch.append(event(EventKind.GLOBAL_MODEL, rnd, {"model_hash": model}))
        batch.append(event(EventKind.ROUND_CLOSED, rnd, {"global_model_hash": model}))
        rounds.append(batch)
        total += len(batch)
    return rounds


def build_bundle(
    rounds: Sequence[Sequence[Event]], count: int, tmp: Path, signer: CheckpointSigner
) -> tuple[Path, int]:
    """A ledger of the first ``count`` events and its bundle.

    Written in 5,000-entry transactions with one checkpoint: the bundle (entries and the
    latest checkpoint) is byte-for-byte what per-round appends and checkpoints would give,
    minus thousands of fsyncs (the per-round pattern is timed in the append rows).
    """
    name = f"verify-{count}"
    events = [e for batch in rounds for e in batch][:count]
    ledger = Ledger(tmp / f"{name}.sqlite", origin=ORIGIN)
    for start in range(0, len(events), 5_000):
        ledger.append_many(events[start : start + 5_000])
    ledger.checkpoint(signer)
    size = ledger.size
    bundle = write_bundle(
        ledger, tmp / name, roster_bytes=b"{}", audit_public_key=signer.public_key
    )
    ledger.close()
    return bundle, size


def bench_rounds(rounds: Sequence[Sequence[Event]], tmp: Path, signer: CheckpointSigner) -> float:
    """The coordinator's pattern: each round's events in one transaction, then a checkpoint."""
    ledger = Ledger(tmp / "rounds.sqlite", origin=ORIGIN)
    count = 0
    start = time.perf_counter()
    for batch in rounds:
        ledger.append_many(batch)
        ledger.checkpoint(signer)
        count += len(batch)
    rate = count / (time.perf_counter() - start)
    ledger.close()
    return rate


def bench_append(
    events: list[Event], tmp: Path, batch: int, signer: CheckpointSigner
) -> tuple[float, Ledger]:
    ledger = Ledger(tmp / f"ledger-{batch}.sqlite", origin=ORIGIN)
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        ledger.append_many(events[i : i + batch])
        if ledger.size // 1000 != (ledger.size - len(events[i : i + batch])) // 1000:
            ledger.checkpoint(signer)
    ledger.checkpoint(signer)
    return len(events) / (time.perf_counter() - start), ledger


def bench_raw_sqlite(blobs: list[bytes], tmp: Path, batch: int) -> float:
    db = sqlite3.connect(tmp / f"raw-{batch}.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (idx INTEGER PRIMARY KEY, entry BLOB, h BLOB)")
    start = time.perf_counter()
    for i in range(0, len(blobs), batch):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            [(i + j, b, b[:32]) for j, b in enumerate(blobs[i : i + batch])],
        )
        db.execute("COMMIT")
    rate = len(blobs) / (time.perf_counter() - start)
    db.close()
    return rate


def raw_signature_seconds(bundle: Path, pub: Mapping[str, bytes]) -> float:
    """Bare Ed25519 verification of every attestation signature in the bundle, one process."""
    jobs = []
    for line in (bundle / "entries.jsonl").read_bytes().splitlines():
        if b'"privacy_attestation"' in line:
            body = LedgerEntry.decode(line).event.body
            key = Ed25519PublicKey.from_public_bytes(pub[body["silo"]])
            jobs.append(
                (key, bytes.fromhex(body["signature"]), bytes.fromhex(body["signing_payload"]))
            )
    start = time.perf_counter()
    for key, signature, payload in jobs:
        key.verify(signature, payload)
    return time.perf_counter() - start


def whole_history_hook(silo: str, attestations: Sequence[Mapping[str, Any]]) -> float:
    """The pre-issue-5 style hook: recompute the silo's whole history on every attestation."""
    steps = [
        MechanismStep(
            noise_multiplier=a["noise_multiplier"], sample_rate=a["sample_rate"], steps=a["steps"]
        )
        for a in attestations
    ]
    return recompute_epsilon(steps, attestations[-1]["delta"])


def verify_child(request: str) -> None:
    """``--verify-child``: one verify in this fresh process; prints seconds, CPU and counts as JSON."""
    args = json.loads(request)
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, report = timed(
        verify_bundle,
        bundle=args["bundle"],
        silo_keys={s: bytes.fromhex(k) for s, k in args["silo_keys"].items()},
        audit_public_key=bytes.fromhex(args["audit_public_key"]),
        workers=args["workers"],
        epsilon_accounts=RdpEpsilonAccount if args["epsilon"] else None,
    )
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(
        a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
        for a, b in zip(after, before, strict=True)
    )
    counts = {"sigs": report.attestations_checked, "epsilons": report.epsilons_recomputed}
    print(json.dumps({"seconds": seconds, "cpu": cpu, **counts}))


def verify_fresh(
    bundle: Path, pub: Mapping[str, bytes], audit_key: bytes, *, workers: int, epsilon: bool
) -> dict[str, Any]:
    """Run one verify in a new interpreter (what the command line does); its figures."""
    request = {
        "bundle": str(bundle),
        "silo_keys": {s: k.hex() for s, k in pub.items()},
        "audit_public_key": audit_key.hex(),
        "workers": workers,
        "epsilon": epsilon,
    }
    out = subprocess.run(
        [sys.executable, __file__, "--verify-child", json.dumps(request)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def bench_witness(
    rounds: Sequence[Sequence[Event]],
    tmp: Path,
    signer: CheckpointSigner,
    keys: Mapping[str, Ed25519PrivateKey],
    pub: Mapping[str, bytes],
) -> tuple[float, float]:
    """One silo's witness work per round, in ms: plain (signature + consistency proof) and full.

    Full adds completeness (decode the round's entries, find the silo's attestation, check its inclusion
    proof) and fork detection (verify the 9 peers' signed statements, each a round behind, and check each
    peer checkpoint's consistency with the silo's own). Proofs come straight from the ledger: this is
    the silo's CPU, not the network or the coordinator's side.
    """
    ledger = Ledger(tmp / "witness-log.sqlite", origin=ORIGIN)
    me, peers = SILOS[0], SILOS[1:]
    plain = CheckpointWitness(":memory:", audit_public_key=signer.public_key, origin=ORIGIN)
    full = CheckpointWitness(":memory:", audit_public_key=signer.public_key, origin=ORIGIN)
    plain_s = full_s = 0.0
    prev = None
    for batch in rounds:
        start = ledger.size
        indices = ledger.append_many(batch)
        checkpoint = ledger.checkpoint(signer)
        proof = [] if prev is None else ledger.consistency_proof(prev.size, checkpoint.size)
        entries = ledger.entries(start, checkpoint.size)
        inclusion: dict[int, list[bytes]] = {}
        for index, event in zip(indices, batch, strict=True):
            if event.kind is EventKind.PRIVACY_ATTESTATION and event.body["silo"] == me:
                inclusion[index] = ledger.inclusion_proof(index, checkpoint.size)
                full.record(
                    "sent",
                    {
                        "round": event.round,
                        "attestation": dict(event.body["attestation"]),
                        "attestation_signature": event.body["signature"],
                    },
                )
        statements = (
            []
            if prev is None
            else [
                sign_statement(keys[p], federation=FEDERATION, silo=p, note=prev.text)
                for p in peers
            ]
        )
        t0 = time.perf_counter()
        plain.update(checkpoint.text, proof)
        t1 = time.perf_counter()
        full.update(checkpoint.text, proof)
        full.check_completeness(start, entries, inclusion.__getitem__, checkpoint)
        sizes = {}
        for statement in statements:
            theirs = verify_statement(
                statement,
                pub[statement.silo],
                federation=FEDERATION,
                audit_public_key=signer.public_key,
                origin=ORIGIN,
            )
            check_fork(checkpoint, theirs, proof)
            sizes[statement.silo] = theirs.size
        full.note_peers(sizes, peers)
        t2 = time.perf_counter()
        plain_s += t1 - t0
        full_s += t2 - t1
        prev = checkpoint
    ledger.close()
    plain.close()
    full.close()
    return 1000 * plain_s / len(rounds), 1000 * full_s / len(rounds)


def timed(fn: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(**kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--verify-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verify_child:
        verify_child(args.verify_child)
        return
    n_append = 5_000 if args.quick else 20_000
    n_single = 200 if args.quick else 1_000
    n_verify = 5_000 if args.quick else 100_000
    n_legacy = 1_000 if args.quick else 3_000
    workers = os.cpu_count() or 1

    keys = {s: Ed25519PrivateKey.generate() for s in SILOS}
    pub = {s: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for s, k in keys.items()}
    signer = CheckpointSigner.generate(key_name=ORIGIN)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rounds = make_rounds(max(n_append, n_verify), keys)
        events = [e for batch in rounds for e in batch]
        for batch in (100,):
            rate, ledger = bench_append(events[:n_append], tmp, batch, signer)
            blobs = ledger.entries()
            ledger.close()
            raw = bench_raw_sqlite(blobs, tmp, batch)
            rows.append(
                (
                    f"append_many (batch {batch}), ckpt/1000",
                    f"{rate:,.0f} appends/s",
                    f"raw SQLite {raw:,.0f}/s",
                    f"{rate / raw:.2f}x",
                )
            )
        n_rounds = next(i for i in range(len(rounds)) if sum(map(len, rounds[:i])) >= n_single)
        per_round = bench_rounds(rounds[:n_rounds], tmp, signer)
        round_events = sum(map(len, rounds[:n_rounds]))
        raw_round = bench_raw_sqlite(blobs[:round_events], tmp, round_events // n_rounds)
        rows.append(
            (
                f"append_many per round (~{round_events // n_rounds} events) + ckpt per round",
                f"{per_round:,.0f} appends/s",
                f"raw SQLite {raw_round:,.0f}/s",
                f"{per_round / raw_round:.2f}x",
            )
        )
        rate1, single = bench_append(events[:n_single], tmp, 1, signer)
        single.close()
        raw1 = bench_raw_sqlite(blobs[:n_single], tmp, 1)
        rows.append(
            (
                "append (fsync each), ckpt/1000",
                f"{rate1:,.0f} appends/s",
                f"raw SQLite {raw1:,.0f}/s",
                f"{rate1 / raw1:.2f}x",
            )
        )

        n_witness = 50 if args.quick else 200
        plain_ms, full_ms = bench_witness(rounds[:n_witness], tmp, signer, keys, pub)
        rows.append(
            (
                f"silo witness per round ({n_witness} rounds): + inclusion + 9 peer statements",
                f"{full_ms:.2f} ms",
                f"consistency only {plain_ms:.2f} ms",
                f"{full_ms / plain_ms:.2f}x",
            )
        )

        bundle, size = build_bundle(rounds, n_verify, tmp, signer)
        sig_s = raw_signature_seconds(bundle, pub)
        common = {"bundle": bundle, "silo_keys": pub, "audit_public_key": signer.public_key}
        runs = [
            ("no epsilon hook, workers=1", 1, False),
            (f"no epsilon hook, workers={workers}", workers, False),
            (f"RdpEpsilonAccount, workers={workers}", workers, True),
        ]
        seconds_by_run: list[float] = []
        for label, count, epsilon in runs:
            run = verify_fresh(bundle, pub, signer.public_key, workers=count, epsilon=epsilon)
            seconds_by_run.append(run["seconds"])
            rows.append(
                (
                    f"verify {size:,} entries ({run['sigs']:,} sigs), {label}",
                    f"{run['seconds']:.2f} s (CPU {run['cpu']:.1f} s)",
                    f"Ed25519 alone {sig_s:.2f} s",
                    f"{run['seconds'] / sig_s:.2f}x",
                )
            )

        # The whole-history hook is O(rounds^2): compare it with the running account on a
        # bundle small enough for it to finish.
        small, small_size = build_bundle(rounds, n_legacy, tmp, signer)
        running_s, _ = timed(
            verify_bundle, **common | {"bundle": small}, epsilon_accounts=RdpEpsilonAccount
        )
        legacy_s, _ = timed(
            verify_bundle, **common | {"bundle": small}, recompute_epsilon=whole_history_hook
        )
        rows.append(
            (
                f"verify {small_size:,} entries, RdpEpsilonAccount, workers=1",
                f"{running_s:.2f} s",
                f"whole-history hook {legacy_s:.2f} s",
                f"{running_s / legacy_s:.2f}x",
            )
        )

    header = ("measure", "result", "baseline", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    if size >= 100_000:
        plain_s, hooked_s = seconds_by_run[1], seconds_by_run[2]
        verdict = (
            f"no hook {plain_s:.1f} s ({'met' if plain_s < 10 else 'MISSED'}), "
            f"with epsilon recompute {hooked_s:.1f} s ({'met' if hooked_s < 10 else 'MISSED'})"
        )
    else:
        verdict = "quick run: sizes too small to judge"
    print(
        "targets: >= 5,000 appends/s (batched) with a checkpoint every 1,000; verify 100k "
        f"entries < 10 s with workers={workers}: {verdict}; load average "
        f"{os.getloadavg()[0]:.1f} on {workers} cores"
    )


if __name__ == "__main__":
    main()
