"""Known-answer vectors: pinned outputs of every primitive and of a seeded round, plus independent cross-checks.

The JSON files in ``vectors/`` hold inputs and answers (written once by ``vectors/generate.py``); each test
recomputes the answer with the library. The RFC vectors and the PRG/HKDF cross-checks do not depend on the
pinned files at all: they compare ``secagg`` with published values or a second, independent computation.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import Quantizer
from secagg.hazmat import shamir
from secagg.hazmat.keys import agree, encode_fields, hkdf, sign, verify
from secagg.hazmat.prg import CHUNK_BYTES, MaskStream, add_mask, mask_key
from secagg.masking.client import pairwise_mask_key, self_mask_key, share_key
from secagg.masking.config import PROTOCOL_VERSION
from secagg.masking.messages import advertisement_payload, seed_commitment
from tests.secagg.harness import (
    make_config,
    make_federation,
    run_round,
    run_to_consistency,
    seeded_rng,
)

VECTORS = Path(__file__).parent / "vectors"


@cache
def load(name: str) -> Any:
    return json.loads((VECTORS / f"{name}.json").read_text())


def summary(v: np.ndarray) -> dict[str, Any]:
    return {
        "length": int(v.shape[0]),
        "first": [int(w) for w in v[:4]],
        "last": [int(w) for w in v[-4:]],
        "sha256": hashlib.sha256(v.astype("<u4").tobytes()).hexdigest(),
    }


def independent_keystream_words(key: bytes, length: int) -> np.ndarray:
    """AES-128-CTR from a zero counter block, straight from ``cryptography``, read as little-endian uint32."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)), dtype="<u4").astype(np.uint32)


def independent_hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 with an all-zero salt, written out with ``hmac`` (not ``cryptography``)."""
    prk = hmac.new(bytes(32), secret, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in itertools.count(1):
        if len(okm) >= length:
            break
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


# --- RFC vectors for the only door to `cryptography` ------------------------------------------------------


def test_x25519_agreement_matches_rfc7748_section_6_1() -> None:
    alice = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    alice_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert agree(alice, bob_pub) == shared
    assert agree(bob, alice_pub) == shared


def test_ed25519_sign_and_verify_match_rfc8032_test_1() -> None:
    key = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert sign(key, b"") == signature
    verify(public, signature, b"")


# --- Key derivation ------------------------------------------------------------------------------------------


def test_encode_fields_is_pinned() -> None:
    case = load("keys")["encode_fields"]
    fields: list[bytes | str | int] = []
    for tag, value in case["fields"]:
        fields.append(
            str(value) if tag == "s" else int(value) if tag == "i" else bytes.fromhex(value)
        )
    assert encode_fields(*fields).hex() == case["encoding"]
    # and it is the documented layout: type tag, 4-byte big-endian length, data
    assert encode_fields("ab", 1) == b"s\x00\x00\x00\x02ab" + b"i\x00\x00\x00\x08" + (1).to_bytes(
        8, "big"
    )


@pytest.mark.parametrize("case", load("keys")["hkdf"], ids=lambda c: c["purpose"])
def test_hkdf_is_pinned_and_matches_an_independent_hkdf(case: dict[str, Any]) -> None:
    secret, info = bytes.fromhex(case["secret"]), bytes.fromhex(case["info"])
    out = hkdf(secret, purpose=case["purpose"], info=info, length=case["length"])
    assert out.hex() == case["output"]
    full_info = b"secagg/v1/" + encode_fields(case["purpose"], info)
    assert out == independent_hkdf(secret, full_info, case["length"])


@pytest.mark.parametrize(
    "case", load("keys")["mask_key"], ids=lambda c: f"{c['purpose']}{c['pair']}"
)
def test_mask_keys_are_pinned(case: dict[str, Any]) -> None:
    key = mask_key(
        bytes.fromhex(case["secret"]),
        purpose=case["purpose"],
        session_id=bytes.fromhex(case["session"]),
        pair=(case["pair"][0], case["pair"][1]),
    )
    assert len(key) == 16
    assert key.hex() == case["output"]


def test_protocol_keys_are_pinned_and_pairwise_keys_are_symmetric() -> None:
    v = load("keys")
    c = v["self_mask_key"]
    assert (
        self_mask_key(bytes.fromhex(c["seed"]), bytes.fromhex(c["session"]), c["index"]).hex()
        == (c["output"])
    )
    c = v["pairwise_mask_key"]
    secret, session = bytes.fromhex(c["secret"]), bytes.fromhex(c["session"])
    assert pairwise_mask_key(secret, session, c["a"], c["b"]).hex() == c["output"]
    assert pairwise_mask_key(secret, session, c["b"], c["a"]).hex() == c["output"]
    c = v["share_key"]
    key = share_key(
        bytes.fromhex(c["secret"]), bytes.fromhex(c["session"]), c["sender"], c["recipient"]
    )
    assert key.hex() == c["output"]
    # the direction is part of the key: sender->recipient and recipient->sender never share a key
    assert (
        share_key(
            bytes.fromhex(c["secret"]), bytes.fromhex(c["session"]), c["recipient"], c["sender"]
        )
        != key
    )


# --- PRG ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("prg"), ids=lambda c: f"{c['key'][:6]}-{c['length']}")
def test_prg_keystream_is_pinned_and_is_aes128_ctr(case: dict[str, Any]) -> None:
    key, length = bytes.fromhex(case["key"]), case["length"]
    v = np.zeros(length, dtype=np.uint32)
    add_mask(v, key)
    assert summary(v) == {k: case[k] for k in ("length", "first", "last", "sha256")}
    np.testing.assert_array_equal(v, independent_keystream_words(key, length))


def test_prg_chunk_boundaries_and_subtraction() -> None:
    words = CHUNK_BYTES // 4
    key = bytes(range(16, 32))
    length = 2 * words + 3  # three chunks, the last a partial one
    base = np.random.default_rng(5).integers(0, 1 << 32, size=length, dtype=np.uint64)
    v = base.astype(np.uint32)
    stream = MaskStream()  # one reused buffer across calls, as the client and server use it
    stream.add(v, key)
    expected = ((base + independent_keystream_words(key, length)) % (1 << 32)).astype(np.uint32)
    np.testing.assert_array_equal(v, expected)
    stream.add(v, key, subtract=True)
    np.testing.assert_array_equal(v, base.astype(np.uint32))


# --- Shamir ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("shamir"), ids=lambda c: f"t{c['threshold']}-n{len(c['xs'])}")
def test_shamir_shares_are_pinned_and_every_threshold_subset_reconstructs(
    case: dict[str, Any],
) -> None:
    secret, t = bytes.fromhex(case["secret"]), case["threshold"]
    shares = shamir.split(secret, threshold=t, xs=case["xs"], rng=seeded_rng(case["rng_seed"]))
    assert {str(x): s.hex() for x, s in shares.items()} == case["shares"]
    pinned = {int(x): bytes.fromhex(s) for x, s in case["shares"].items()}
    for subset in itertools.islice(itertools.combinations(sorted(pinned), t), 50):
        assert shamir.reconstruct({x: pinned[x] for x in subset}, threshold=t) == secret


# --- Quantizer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("quantize"), ids=lambda c: f"bits{c['bits']}")
def test_quantizer_encodings_are_pinned(case: dict[str, Any]) -> None:
    q = Quantizer(clip=case["clip"], bits=case["bits"], max_silos=case["max_silos"])
    encoded = q.encode(np.array(case["x"]), rng=seeded_rng(case["rng_seed"]))
    assert encoded.dtype == np.uint32
    assert [int(w) for w in encoded] == case["encoded"]


# --- A seeded round -------------------------------------------------------------------------------------------


def test_seeded_round_is_pinned() -> None:
    v = load("round")
    fed = make_federation(v["n"], seed=v["federation_seed"])
    config = make_config(fed, length=v["length"], round_=v["round"])
    ad = v["advertisement_payload"]
    payload = advertisement_payload(
        config,
        ad["silo"],
        bytes.fromhex(ad["enc_public"]),
        bytes.fromhex(ad["mask_public"]),
        bytes.fromhex(ad["seed_commitment"]),
    )
    assert payload.hex() == ad["payload"]
    assert config.params_hash().hex() == v["params_hash"]
    c = v["seed_commitment"]
    seed = bytes.fromhex(c["seed"])
    assert seed_commitment(config, c["silo"], seed).hex() == c["commitment"]
    # and the commitment is what DESIGN 4.4 and its docstring say, recomputed from the spec
    spec = encode_fields(
        "self-mask-commitment", PROTOCOL_VERSION, config.federation, config.round, c["silo"], seed
    )
    assert hashlib.sha256(spec).hexdigest() == c["commitment"]

    tr = run_to_consistency(fed, config, seed=v["client_seed"])
    assert {
        a.silo: {
            "enc_public": a.enc_public.hex(),
            "mask_public": a.mask_public.hex(),
            "seed_commitment": a.seed_commitment.hex(),
            "signature": a.signature.hex(),
        }
        for a in tr.ads
    } == v["advertisements"]
    assert tr.session.hex() == v["session_id"]
    assert {c.session_id for c in tr.clients.values()} == {tr.session}
    masked = v["masked"]
    assert summary(tr.masked[masked["silo"]]) == {
        k: masked[k] for k in ("length", "first", "last", "sha256")
    }

    result = run_round(
        fed,
        config,
        tr.inputs,
        seed=v["client_seed"],
        drop={"masked_input": v["dropped_at_masked_input"]},
    )
    assert summary(result.total) == v["total"]
