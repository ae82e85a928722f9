"""Threshold Paillier primitives: keys, sealing, encryption KAT, t-of-l decryption, proofs."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace

import gmpy2
import phe
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import DecryptionError, InvalidParameters, InvalidProof, RoundAborted
from secagg.hazmat.keys import public_bytes
from secagg.hazmat.paillier import (
    SHORT_EXPONENT_ASSUMPTION,
    SHORT_EXPONENT_BITS,
    KeyShare,
    ObfuscatorMode,
    ObfuscatorPool,
    PartialDecryption,
    SealedShare,
    ThresholdKeyMaterial,
    ThresholdPublicKey,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    combine_partial_decryptions,
    deal_threshold_key,
    encrypt_plaintexts,
    generate_safe_prime,
    lagrange_combine,
    multiply_ciphertexts,
    open_share,
    partial_decrypt,
    seal_share,
    verify_partial_decryption,
)
from secagg.hazmat.paillier.proofs import prove_partial_decryption

from .conftest import KAT_P, KAT_Q, TEST_KEY_BITS, encrypt, seeded_rng

CONTEXT = b"test-context"

# Known-answer vector: the two 256-bit safe primes KAT_P, KAT_Q, a seeded dealer and a seeded obfuscator pool.
KAT_PLAINTEXT = 0x5EC466
KAT_CIPHERTEXT_SHA256 = {
    ObfuscatorMode.SHORT_EXPONENT: "71ca4db241f3cd6c86b3b2c70b1914594cef3e4548be1a8252437cb285ab4c4a",
    ObfuscatorMode.STANDARD: "2e779d3db51d16a9f4a6de1aa38bb06464527691d96639b904bc3132349944bc",
}


@pytest.mark.parametrize("mode", list(ObfuscatorMode))
def test_known_answer_encryption_with_seeded_randomness(mode: ObfuscatorMode) -> None:
    keys = deal_threshold_key(
        threshold=2,
        parties=3,
        key_bits=TEST_KEY_BITS,
        rng=seeded_rng("kat-deal"),
        insecure_test_key_size=True,
        primes=(KAT_P, KAT_Q),
    )
    pk = keys.public_key
    assert pk.n == KAT_P * KAT_Q
    (ciphertext,) = encrypt_plaintexts(
        pk, [KAT_PLAINTEXT], ObfuscatorPool(pk, mode=mode, rng=seeded_rng("kat-enc"))
    )
    encoded = ciphertexts_to_bytes(pk, [ciphertext])
    assert hashlib.sha256(encoded).hexdigest() == KAT_CIPHERTEXT_SHA256[mode]
    if mode is ObfuscatorMode.STANDARD:
        # phe builds the same ciphertext from the same r (the pool's first 64-byte draw, which is < N here).
        r = int.from_bytes(seeded_rng("kat-enc")(64), "big")
        assert r < pk.n
        assert pk.paillier.raw_encrypt(KAT_PLAINTEXT, r_value=r) == ciphertext
    # Independent check with phe's (non-threshold) private key built from the factors.
    assert (
        phe.PaillierPrivateKey(pk.paillier, KAT_P, KAT_Q).raw_decrypt(ciphertext) == KAT_PLAINTEXT
    )
    partials = [
        partial_decrypt(pk, s, [ciphertext], context=CONTEXT, rng=seeded_rng("p"))
        for s in keys.shares
    ]
    assert combine_partial_decryptions(pk, [ciphertext], partials[:2], context=CONTEXT) == [
        KAT_PLAINTEXT
    ]


def test_ciphertexts_decrypt_with_phe_and_add_homomorphically(
    keys_2_of_3: ThresholdKeyMaterial,
) -> None:
    pk = keys_2_of_3.public_key
    assert isinstance(pk.paillier, phe.PaillierPublicKey)
    assert pk.paillier.g == pk.n + 1
    a = encrypt(keys_2_of_3, [1, 2, pk.n - 1], "a")
    b = encrypt(keys_2_of_3, [10, 20, 5], "b")
    total = multiply_ciphertexts(pk, a, b)
    partials = [partial_decrypt(pk, s, total, context=CONTEXT) for s in keys_2_of_3.shares]
    assert combine_partial_decryptions(pk, total, partials, context=CONTEXT) == [11, 22, 4]


def test_any_t_partial_decryptions_combine(keys_3_of_5: ThresholdKeyMaterial) -> None:
    pk = keys_3_of_5.public_key
    plaintexts = [0, 1, 123456789, pk.n - 2]
    ciphertexts = encrypt(keys_3_of_5, plaintexts)
    partials = [partial_decrypt(pk, s, ciphertexts, context=CONTEXT) for s in keys_3_of_5.shares]
    for subset in itertools.combinations(partials, 3):
        assert (
            combine_partial_decryptions(pk, ciphertexts, list(subset), context=CONTEXT)
            == plaintexts
        )
    # More than t is fine too (the combiner uses the first t valid ones).
    assert combine_partial_decryptions(pk, ciphertexts, partials, context=CONTEXT) == plaintexts


def test_t_minus_one_partial_decryptions_do_not_combine(keys_3_of_5: ThresholdKeyMaterial) -> None:
    pk = keys_3_of_5.public_key
    ciphertexts = encrypt(keys_3_of_5, [42, 7])
    partials = [partial_decrypt(pk, s, ciphertexts, context=CONTEXT) for s in keys_3_of_5.shares]
    for subset in itertools.combinations(partials, 2):
        # The combiner refuses to try...
        with pytest.raises(RoundAborted, match="2 valid partial decryptions, 3 needed"):
            combine_partial_decryptions(pk, ciphertexts, list(subset), context=CONTEXT)
        # ...and forcing the interpolation through t - 1 points yields no valid plaintext: it is detected
        # because the combination is not 1 mod N (definition of "fails detectably").
        with pytest.raises(DecryptionError):
            lagrange_combine(pk, ciphertexts, {p.index: p.values for p in subset})
    # Repeating one party's partial decryption does not count twice.
    with pytest.raises(RoundAborted):
        combine_partial_decryptions(
            pk, ciphertexts, [partials[0], partials[0], partials[1]], context=CONTEXT
        )


def test_tampered_partial_decryption_is_detected_and_never_combined(
    keys_2_of_3: ThresholdKeyMaterial,
) -> None:
    pk = keys_2_of_3.public_key
    ciphertexts = encrypt(keys_2_of_3, [5, 6, 7, 8])
    honest = [partial_decrypt(pk, s, ciphertexts, context=CONTEXT) for s in keys_2_of_3.shares]
    nsq = pk.nsquare
    bad = honest[0]
    tampered_values = [
        replace(
            bad, values=(bad.values[0] * pk.v % nsq, *bad.values[1:])
        ),  # wrong value, first entry
        replace(
            bad, values=(*bad.values[:3], bad.values[3] * (pk.n + 1) % nsq)
        ),  # shifts the plaintext by one
        replace(
            bad, values=(*bad.values[:2], nsq - bad.values[2], bad.values[3])
        ),  # sign flip (order-2 element)
        replace(bad, values=tuple(pow(x, 2, nsq) for x in bad.values)),
        replace(bad, challenge=bad.challenge ^ 1),
        replace(bad, response=bad.response + 1),
        replace(bad, index=2),  # claims another party's identity
        replace(bad, values=bad.values[:3]),
        replace(bad, values=(0, *bad.values[1:])),
        replace(bad, values=(pk.n, *bad.values[1:])),  # shares a factor with N
    ]
    for tampered in tampered_values:
        with pytest.raises(InvalidProof):
            verify_partial_decryption(pk, ciphertexts, tampered, context=CONTEXT)
    # Another session's context, or a proof over other ciphertexts, does not verify either.
    with pytest.raises(InvalidProof):
        verify_partial_decryption(pk, ciphertexts, honest[0], context=b"another-context")
    with pytest.raises(InvalidProof):
        verify_partial_decryption(pk, list(reversed(ciphertexts)), honest[0], context=CONTEXT)
    # The combiner drops the tampered one and uses honest ones when there are enough...
    plain = combine_partial_decryptions(
        pk, ciphertexts, [tampered_values[1], *honest[1:]], context=CONTEXT
    )
    assert plain == [5, 6, 7, 8]
    # ...and aborts, naming the culprit, when there are not.
    with pytest.raises(RoundAborted, match=r"invalid from parties \[1\]"):
        combine_partial_decryptions(
            pk, ciphertexts, [tampered_values[1], honest[1]], context=CONTEXT
        )


def test_a_wrong_share_cannot_produce_a_valid_proof(keys_2_of_3: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3.public_key
    ciphertexts = encrypt(keys_2_of_3, [9, 10])
    share = keys_2_of_3.shares[0]
    forged = KeyShare(
        index=share.index, secret=share.secret + 1, key_fingerprint=share.key_fingerprint
    )
    # A silo with a corrupted share learns it before it sends anything: the share is checked against v_i...
    with pytest.raises(InvalidParameters, match="verification key"):
        partial_decrypt(pk, forged, ciphertexts, context=CONTEXT)
    # ...and a partial decryption made with it anyway (values and proof both from the wrong share) is refused.
    n, nsq = pk.n, pk.nsquare
    exponent = 2 * pk.delta * forged.secret
    values = [pow(pow(c % n, exponent, n), n, nsq) for c in ciphertexts]
    with pytest.raises(InvalidProof):
        verify_partial_decryption(
            pk,
            ciphertexts,
            prove_partial_decryption(pk, forged, ciphertexts, values, context=CONTEXT),
            context=CONTEXT,
        )


def test_partial_decryption_threads_match_single_thread(keys_2_of_3: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3.public_key
    ciphertexts = encrypt(keys_2_of_3, list(range(9)))
    one = partial_decrypt(
        pk, keys_2_of_3.shares[0], ciphertexts, context=CONTEXT, rng=seeded_rng("x")
    )
    two = partial_decrypt(
        pk, keys_2_of_3.shares[0], ciphertexts, context=CONTEXT, rng=seeded_rng("x"), workers=2
    )
    assert one == two


def test_production_api_refuses_small_keys() -> None:
    for bits in (512, 1024, 2046):
        with pytest.raises(InvalidParameters, match="insecure"):
            deal_threshold_key(threshold=2, parties=3, key_bits=bits)
    with pytest.raises(InvalidParameters):
        deal_threshold_key(threshold=2, parties=3, key_bits=128, insecure_test_key_size=True)
    with pytest.raises(InvalidParameters):
        deal_threshold_key(threshold=1, parties=3, key_bits=512, insecure_test_key_size=True)
    with pytest.raises(InvalidParameters):
        deal_threshold_key(threshold=4, parties=3, key_bits=512, insecure_test_key_size=True)


def test_given_primes_must_be_safe_primes() -> None:
    not_safe = int(gmpy2.next_prime(2**255 + 2**254))
    while gmpy2.is_prime((not_safe - 1) // 2):
        not_safe = int(gmpy2.next_prime(not_safe))
    with pytest.raises(InvalidParameters):
        deal_threshold_key(
            threshold=2,
            parties=3,
            key_bits=512,
            insecure_test_key_size=True,
            primes=(KAT_P, not_safe),
        )
    with pytest.raises(InvalidParameters):
        deal_threshold_key(
            threshold=2, parties=3, key_bits=512, insecure_test_key_size=True, primes=(KAT_P, KAT_P)
        )


def test_safe_prime_generation_is_driven_by_the_injected_rng() -> None:
    p = generate_safe_prime(128, rng=seeded_rng("sp"))
    assert p == generate_safe_prime(128, rng=seeded_rng("sp"))
    assert p.bit_length() == 128
    assert p >> 126 == 0b11
    assert gmpy2.is_prime(p)
    assert gmpy2.is_prime((p - 1) // 2)
    assert generate_safe_prime(128, rng=seeded_rng("other")) != p


def test_share_sealing_round_trip_and_wrong_recipient(keys_2_of_3: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3.public_key
    share = keys_2_of_3.shares[1]
    alice = X25519PrivateKey.from_private_bytes(seeded_rng("alice")(32))
    mallory = X25519PrivateKey.from_private_bytes(seeded_rng("mallory")(32))
    sealed = seal_share(share, public_bytes(alice), CONTEXT, rng=seeded_rng("seal"))
    assert share.to_bytes() not in sealed.to_json().encode()
    restored = SealedShare.from_json(sealed.to_json())
    assert open_share(restored, alice, CONTEXT, public_key=pk) == share
    with pytest.raises(DecryptionError):
        open_share(sealed, mallory, CONTEXT)
    with pytest.raises(DecryptionError):
        open_share(sealed, alice, b"another ceremony")
    with pytest.raises(DecryptionError):  # the coordinator relabels the share index
        open_share(replace(sealed, index=3), alice, CONTEXT)
    with pytest.raises(DecryptionError):
        open_share(
            replace(sealed, ciphertext=sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])),
            alice,
            CONTEXT,
        )
    other_key = deal_threshold_key(
        threshold=2, parties=3, key_bits=512, insecure_test_key_size=True, rng=seeded_rng("o")
    )
    with pytest.raises(DecryptionError):  # a share of another key is refused when the key is known
        open_share(sealed, alice, CONTEXT, public_key=other_key.public_key)


def test_serialization_round_trips_and_repr_hides_secrets(
    keys_2_of_3: ThresholdKeyMaterial,
) -> None:
    pk = keys_2_of_3.public_key
    assert ThresholdPublicKey.from_json(pk.to_json()) == pk
    assert ThresholdPublicKey.from_bytes(pk.to_bytes()).fingerprint() == pk.fingerprint()
    share = keys_2_of_3.shares[0]
    assert KeyShare.from_bytes(share.to_bytes()) == share
    for text in (repr(share), str(share), repr(keys_2_of_3)):
        assert format(share.secret, "x") not in text
        assert str(share.secret) not in text
        assert "hidden" in text
    with pytest.raises(InvalidParameters):
        ThresholdPublicKey.from_json('{"version": 1}')
    with pytest.raises(InvalidParameters):
        KeyShare.from_bytes(b"not json")
    tampered = pk.to_json().replace('"threshold":2', '"threshold":4')
    with pytest.raises(InvalidParameters):
        ThresholdPublicKey.from_json(tampered)


def test_ciphertext_bytes_refuse_non_units(keys_2_of_3: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3.public_key
    width = pk.ciphertext_bytes
    ciphertexts = encrypt(keys_2_of_3, [1, 2])
    assert ciphertexts_from_bytes(pk, ciphertexts_to_bytes(pk, ciphertexts)) == ciphertexts
    for bad in (0, pk.n, pk.nsquare, pk.nsquare - pk.n):
        data = (
            bad.to_bytes(width + 1, "big")[-width:] if bad < 1 << (8 * width) else b"\xff" * width
        )
        with pytest.raises(ValueError, match="Z"):
            ciphertexts_from_bytes(pk, data)
    with pytest.raises(ValueError, match="multiple"):
        ciphertexts_from_bytes(pk, b"\x01" * (width + 1))


def test_obfuscator_pool_never_reuses_and_fills_in_parallel(
    keys_2_of_3: ThresholdKeyMaterial,
) -> None:
    pk = keys_2_of_3.public_key
    for mode in ObfuscatorMode:
        pool = ObfuscatorPool(pk, mode=mode, rng=seeded_rng(f"pool-{mode}"))
        pool.fill(16, workers=2)
        assert pool.available == 16
        taken = pool.take(10) + pool.take(6)
        assert len(set(taken)) == 16
        assert pool.available == 0
        assert pool.take(3)
        assert pool.computed_online == 3
        # Every obfuscator is an N-th residue: it decrypts to 0.
        partials = [
            partial_decrypt(pk, s, [int(x) for x in taken[:3]], context=CONTEXT)
            for s in keys_2_of_3.shares
        ]
        assert combine_partial_decryptions(
            pk, [int(x) for x in taken[:3]], partials, context=CONTEXT
        ) == [0, 0, 0]
    # Parallel and serial fills draw the same randomness in the same order.
    serial = ObfuscatorPool(pk, rng=seeded_rng("same"))
    serial.fill(12)
    parallel = ObfuscatorPool(pk, rng=seeded_rng("same"))
    parallel.fill(12, workers=2, executor="thread")
    assert serial.take(12) == parallel.take(12)


def test_threat_model_text_states_the_short_exponent_assumption() -> None:
    assert str(SHORT_EXPONENT_BITS) in SHORT_EXPONENT_ASSUMPTION
    assert "Decisional Composite Residuosity" in SHORT_EXPONENT_ASSUMPTION
    assert "default" in SHORT_EXPONENT_ASSUMPTION
    assert PartialDecryption.__repr__ is not object.__repr__
