"""Generate the pinned known-answer vectors in this folder. Run once, by hand; the tests never run it.

    .venv/bin/python -m tests.secagg.vectors.generate

Regenerating changes the pinned answers, so do it only for a deliberate, versioned change of a wire or key
format, and say so in the commit: otherwise a failing vector test means the library changed behaviour.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from secagg import Quantizer
from secagg.hazmat import shamir
from secagg.hazmat.keys import encode_fields, hkdf
from secagg.hazmat.prg import add_mask, mask_key
from secagg.masking.client import pairwise_mask_key, self_mask_key, share_key
from secagg.masking.messages import advertisement_payload, seed_commitment
from tests.secagg.harness import (
    make_config,
    make_federation,
    run_round,
    run_to_consistency,
    seeded_rng,
)

HERE = Path(__file__).parent
SESSION = hashlib.sha256(b"secagg test session").digest()
PRG_LENGTHS = (1, 3, 1000, 262_144, 262_145, 600_001)  # 262,144 words = one 1 MiB chunk


def words_summary(v: np.ndarray) -> dict[str, Any]:
    """First and last four words and the SHA-256 of the little-endian bytes of a uint32 vector."""
    return {
        "length": int(v.shape[0]),
        "first": [int(w) for w in v[:4]],
        "last": [int(w) for w in v[-4:]],
        "sha256": hashlib.sha256(v.astype("<u4").tobytes()).hexdigest(),
    }


def keys_vectors() -> dict[str, Any]:
    secret = bytes(range(32))
    return {
        "encode_fields": {
            "fields": [["s", "advertise"], ["i", 7], ["b", "00ff"], ["i", -1]],
            "encoding": encode_fields("advertise", 7, bytes.fromhex("00ff"), -1).hex(),
        },
        "hkdf": [
            {
                "secret": secret.hex(),
                "purpose": purpose,
                "info": info.hex(),
                "length": length,
                "output": hkdf(secret, purpose=purpose, info=info, length=length).hex(),
            }
            for purpose, info, length in [
                ("share-encryption", b"", 32),
                ("pairwise-mask", SESSION, 16),
                ("self-mask", b"\x00" * 40, 64),
            ]
        ],
        "mask_key": [
            {
                "secret": s.hex(),
                "purpose": purpose,
                "session": SESSION.hex(),
                "pair": list(pair),
                "output": mask_key(s, purpose=purpose, session_id=SESSION, pair=pair).hex(),
            }
            for s, purpose, pair in [
                (secret, "self-mask", (1, 1)),
                (secret, "pairwise-mask", (1, 2)),
                (bytes(32), "pairwise-mask", (3, 17)),
            ]
        ],
        "self_mask_key": {
            "seed": secret.hex(),
            "session": SESSION.hex(),
            "index": 4,
            "output": self_mask_key(secret, SESSION, 4).hex(),
        },
        "pairwise_mask_key": {
            "secret": secret.hex(),
            "session": SESSION.hex(),
            "a": 5,
            "b": 2,
            "output": pairwise_mask_key(secret, SESSION, 5, 2).hex(),
        },
        "share_key": {
            "secret": secret.hex(),
            "session": SESSION.hex(),
            "sender": "silo-00",
            "recipient": "silo-01",
            "output": share_key(secret, SESSION, "silo-00", "silo-01").hex(),
        },
    }


def prg_vectors() -> list[dict[str, Any]]:
    keys = [
        bytes(16),
        bytes(range(16)),
        mask_key(bytes(range(32)), purpose="self-mask", session_id=SESSION, pair=(1, 1)),
    ]
    out = []
    for key in keys:
        for length in PRG_LENGTHS:
            v = np.zeros(length, dtype=np.uint32)
            add_mask(v, key)
            out.append({"key": key.hex(), **words_summary(v)})
    return out


def shamir_vectors() -> list[dict[str, Any]]:
    out = []
    for secret, threshold, xs, seed in [
        (bytes(range(32)), 3, [1, 2, 3, 4, 5], 7),
        (b"\xff" * 32, 1, [1, 2], 8),
        (bytes(32), 6, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29], 9),
    ]:
        shares = shamir.split(secret, threshold=threshold, xs=xs, rng=seeded_rng(seed))
        out.append(
            {
                "secret": secret.hex(),
                "threshold": threshold,
                "xs": xs,
                "rng_seed": seed,
                "shares": {str(x): share.hex() for x, share in shares.items()},
            }
        )
    return out


def quantize_vectors() -> list[dict[str, Any]]:
    out = []
    for clip, bits, max_silos, x, seed in [
        (1.0, 8, 4, [0.5, -0.25, 0.1, -0.0, 0.0031, -0.7], 11),  # norm < clip: no clipping
        (0.5, 12, 100, [3.0, -4.0, 0.0, 1e-9], 12),  # norm 5 > clip: scaled by 0.1
        (2.0, 24, 64, [-2.0, 1.999999, 0.123456789], 13),
    ]:
        q = Quantizer(clip=clip, bits=bits, max_silos=max_silos)
        encoded = q.encode(np.array(x), rng=seeded_rng(seed))
        out.append(
            {
                "clip": clip,
                "bits": bits,
                "max_silos": max_silos,
                "x": x,
                "rng_seed": seed,
                "encoded": [int(w) for w in encoded],
            }
        )
    return out


def round_vectors() -> dict[str, Any]:
    """A seeded 4-silo round: advertisement payload, seed commitment, params hash, session id, one masked
    vector, the sum."""
    fed = make_federation(4, seed=0)
    config = make_config(fed, length=1000, round_=3)
    tr = run_to_consistency(fed, config, seed=1)
    silo = fed.silos[1]
    result = run_round(fed, config, tr.inputs, seed=1, drop={"masked_input": [fed.silos[2]]})
    return {
        "n": 4,
        "federation_seed": 0,
        "client_seed": 1,
        "length": 1000,
        "round": 3,
        "advertisement_payload": {
            "silo": "silo-00",
            "enc_public": (b"\x01" * 32).hex(),
            "mask_public": (b"\x02" * 32).hex(),
            "seed_commitment": (b"\x03" * 32).hex(),
            "payload": advertisement_payload(
                config, "silo-00", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
            ).hex(),
        },
        "seed_commitment": {
            "silo": "silo-00",
            "seed": bytes(range(32)).hex(),
            "commitment": seed_commitment(config, "silo-00", bytes(range(32))).hex(),
        },
        "params_hash": config.params_hash().hex(),
        "session_id": tr.session.hex(),
        "advertisements": {
            ad.silo: {
                "enc_public": ad.enc_public.hex(),
                "mask_public": ad.mask_public.hex(),
                "seed_commitment": ad.seed_commitment.hex(),
                "signature": ad.signature.hex(),
            }
            for ad in tr.ads
        },
        "masked": {"silo": silo, **words_summary(tr.masked[silo])},
        "dropped_at_masked_input": [fed.silos[2]],
        "total": words_summary(result.total),
    }


def main() -> None:
    for name, data in [
        ("keys", keys_vectors()),
        ("prg", prg_vectors()),
        ("shamir", shamir_vectors()),
        ("quantize", quantize_vectors()),
        ("round", round_vectors()),
    ]:
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {name}.json")


if __name__ == "__main__":
    main()
