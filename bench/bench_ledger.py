"""Audit ledger benchmark: append throughput (checkpoint every 1,000) and 100k-bundle verify time.

Baselines run in the same process: raw SQLite inserts of the same bytes with the same
durability settings (WAL, synchronous=FULL, same batch size), and raw SHA-256 of the same
bytes. Run ``python bench/bench_ledger.py`` (about a minute) or ``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audits import CheckpointSigner, Event, EventKind, Ledger, verify_bundle, write_bundle

SILOS = [f"silo-{i}" for i in range(5)]
PREFIX = b"secagg/privacy-attestation/v1\n"


def make_events(count: int, keys: dict[str, Ed25519PrivateKey]) -> list[Event]:
    events = [
        Event(
            EventKind.FEDERATION_CREATED,
            "bench",
            None,
            {
                "config": {"rounds": count},
                "roster_fingerprint": "00" * 32,
                "threat_model": {"n": 5, "t": 4, "c": 1, "min_cohort": 3, "mode": "masking"},
            },
            "2025-01-01T00:00:00Z",
        )
    ]
    rnd = 0
    while len(events) < count:
        rnd += 1
        events.append(
            Event(
                EventKind.ROUND_OPENED,
                "bench",
                rnd,
                {"model_hash": "ab" * 32},
                "2025-01-01T00:00:00Z",
            )
        )
        events.append(
            Event(
                EventKind.KEY_FINGERPRINTS,
                "bench",
                rnd,
                {"fingerprints": {s: "cd" * 32 for s in SILOS}},
                "2025-01-01T00:00:00Z",
            )
        )
        events.append(
            Event(
                EventKind.PARTICIPANTS,
                "bench",
                rnd,
                {"survivors": SILOS, "dropped": []},
                "2025-01-01T00:00:00Z",
            )
        )
        for silo in SILOS:
            att = {
                "round": rnd,
                "epsilon": 0.01 * rnd,
                "delta": 1e-5,
                "silo": silo,
                "noise_multiplier": 1.1,
                "sample_rate": 0.01,
                "steps": 100,
            }
            payload = PREFIX + json.dumps(att, sort_keys=True, separators=(",", ":")).encode()
            events.append(
                Event(
                    EventKind.PRIVACY_ATTESTATION,
                    "bench",
                    rnd,
                    {
                        "silo": silo,
                        "attestation": att,
                        "signature": keys[silo].sign(payload).hex(),
                        "signing_payload": payload.hex(),
                        "recomputed_epsilon": 0.01 * rnd,
                        "accountant": "rdp",
                    },
                    "2025-01-01T00:00:00Z",
                )
            )
        events.append(
            Event(
                EventKind.GLOBAL_MODEL,
                "bench",
                rnd,
                {"model_hash": "ef" * 32},
                "2025-01-01T00:00:00Z",
            )
        )
        events.append(Event(EventKind.ROUND_CLOSED, "bench", rnd, {}, "2025-01-01T00:00:00Z"))
    return events[:count]


def bench_append(
    events: list[Event], tmp: Path, batch: int, signer: CheckpointSigner
) -> tuple[float, Ledger]:
    ledger = Ledger(tmp / f"ledger-{batch}.sqlite", origin="bench/log")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    args = parser.parse_args()
    n_append = 5_000 if args.quick else 20_000
    n_single = 200 if args.quick else 1_000
    n_verify = 5_000 if args.quick else 100_000

    keys = {s: Ed25519PrivateKey.generate() for s in SILOS}
    pub = {s: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for s, k in keys.items()}
    signer = CheckpointSigner.generate(key_name="bench/log")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        events = make_events(max(n_append, n_verify), keys)
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

        ledger = Ledger(tmp / "verify.sqlite", origin="bench/log")
        for i in range(0, n_verify, 5_000):
            ledger.append_many(events[i : min(i + 5_000, n_verify)])
        ledger.checkpoint(signer)
        bundle = write_bundle(
            ledger, tmp / "bundle", roster_bytes=b"{}", audit_public_key=signer.public_key
        )
        blobs = ledger.entries()
        ledger.close()
        start = time.perf_counter()
        report = verify_bundle(bundle, silo_keys=pub, audit_public_key=signer.public_key)
        verify_s = time.perf_counter() - start
        start = time.perf_counter()
        for b in blobs:
            hashlib.sha256(b"\x00" + b).digest()
        sha_s = time.perf_counter() - start
        rows.append(
            (
                f"verify bundle, {n_verify:,} entries ({report.attestations_checked:,} sigs)",
                f"{verify_s:.2f} s",
                f"raw SHA-256 {sha_s:.3f} s",
                f"{verify_s / sha_s:.0f}x",
            )
        )

    widths = [
        max(len(r[i]) for r in [("measure", "result", "baseline", "ratio"), *rows])
        for i in range(4)
    ]
    header = ("measure", "result", "baseline", "ratio")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("targets: >= 5,000 appends/s with a checkpoint every 1,000; verify 100k entries < 10 s")


if __name__ == "__main__":
    main()
