"""The fast threshold decryption against a slow, obviously correct reference: same plaintexts, same partial
decryptions, batch verification that misses no wrong entry, proofs that bind, packing that never carries.

The reference (this module only, never the library) is the textbook Damgard-Jurik scheme with Python's ``pow``:
``x_i = c^(2 Delta s_i) mod N^2``, one Chaum-Pedersen proof per ciphertext, and
``M = L(prod x_i^(2 lambda_i)) / (4 Delta^2)`` with ``lambda_i = Delta * prod j / (j - i)``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import replace
from fractions import Fraction
from typing import Any

import numpy as np
import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import DecryptionError, InvalidParameters, InvalidProof, RoundAborted
from secagg.hazmat.packing import SlotPacking
from secagg.hazmat.paillier import (
    KeyShare,
    ObfuscatorPool,
    PartialDecryption,
    RadixPacking,
    ThresholdKeyMaterial,
    ThresholdPublicKey,
    combine_partial_decryptions,
    deal_threshold_key,
    encrypt_plaintexts,
    lagrange_combine,
    parallel,
    partial_decrypt,
    verify_partial_decryption,
)
from secagg.hazmat.paillier.multiexp import multi_exponentiation
from secagg.hazmat.paillier.proofs import prove_partial_decryption
from secagg.hazmat.paillier.threshold import _lagrange_at_zero

from .conftest import TEST_KEY_BITS, seeded_rng

CONTEXT = b"fast-path-context"
KAT_P = 0xC278528E980FE4DFDB9D33FA7B5AAC0873E225C33352B3B18279A4C8E9DDEC9B
KAT_Q = 0xC59A4B056D2AD42590F549C92165E4FC8D501C2F6FAD5F969B28D977F4258173


# -- the reference ----------------------------------------------------------------------------------------------
def reference_share(pk: ThresholdPublicKey, share: KeyShare) -> int:
    """The Damgard-Jurik share ``s_i = 1 + N g_i``."""
    return 1 + pk.n * share.secret


def reference_partial(pk: ThresholdPublicKey, share: KeyShare, c: int) -> int:
    """Damgard-Jurik 2001, section 4.2: ``c^(2 Delta s_i) mod N^2``."""
    return pow(c, 2 * pk.delta * reference_share(pk, share), pk.nsquare)


def reference_combine(pk: ThresholdPublicKey, c_partials: dict[int, int]) -> int:
    """Damgard-Jurik 2001, section 4.2, with Shoup's ``lambda = Delta * prod j / (j - i)`` (always integral)."""
    nsq = pk.nsquare
    combined = 1
    for i in c_partials:
        numerator, denominator = pk.delta, 1
        for j in c_partials:
            if j != i:
                numerator, denominator = numerator * j, denominator * (j - i)
        assert numerator % denominator == 0
        combined = combined * pow(c_partials[i], 2 * (numerator // denominator), nsq) % nsq
    assert combined % pk.n == 1
    return (combined - 1) // pk.n * pow(4 * pk.delta**2, -1, pk.n) % pk.n


def reference_proof(
    pk: ThresholdPublicKey, share: KeyShare, c: int, z: int, r: int
) -> tuple[int, int]:
    """One Chaum-Pedersen proof for one ciphertext: ``log_{(c^N)^4}(z^2) = log_v(v_i)`` (no batching)."""
    nsq, n = pk.nsquare, pk.n
    base = pow(c, 4 * n, nsq)
    a, b = pow(base, r, nsq), pow(pk.v, r, n)
    e = int.from_bytes(hashlib.sha256(repr((c, z, a, b)).encode()).digest(), "big")
    return e, r + e * pk.delta * share.secret


def reference_verify(
    pk: ThresholdPublicKey, index: int, c: int, z: int, proof: tuple[int, int]
) -> bool:
    nsq, n = pk.nsquare, pk.n
    e, response = proof
    base = pow(c, 4 * n, nsq)
    a = pow(base, response, nsq) * pow(pow(z, 2, nsq), -e, nsq) % nsq
    b = pow(pk.v, response, n) * pow(pk.verification_keys[index - 1], -e, n) % n
    return e == int.from_bytes(hashlib.sha256(repr((c, z, a, b)).encode()).digest(), "big")


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kat_keys() -> ThresholdKeyMaterial:
    """3-of-5 on the known 256-bit safe primes, so tests can also decrypt with ``phe`` and check ``m``."""
    return deal_threshold_key(
        threshold=3,
        parties=5,
        key_bits=TEST_KEY_BITS,
        rng=seeded_rng("fast-kat"),
        insecure_test_key_size=True,
        primes=(KAT_P, KAT_Q),
    )


@pytest.fixture(scope="module")
def small_keys() -> ThresholdKeyMaterial:
    """2-of-3 with 256-bit N (insecure; tests only): thousands of ciphertexts in a fraction of a second."""
    return deal_threshold_key(
        threshold=2,
        parties=3,
        key_bits=256,
        rng=seeded_rng("fast-small"),
        insecure_test_key_size=True,
    )


def encrypt(keys: ThresholdKeyMaterial, plaintexts: list[int], seed: str) -> list[int]:
    pool = ObfuscatorPool(keys.public_key, rng=seeded_rng(seed))
    pool.fill(len(plaintexts))
    return encrypt_plaintexts(keys.public_key, plaintexts, pool)


# -- the key ------------------------------------------------------------------------------------------------------
def test_dealt_shares_are_a_damgard_jurik_sharing_of_d(kat_keys: ThresholdKeyMaterial) -> None:
    pk = kat_keys.public_key
    n = pk.n
    m = ((KAT_P - 1) // 2) * ((KAT_Q - 1) // 2)
    shares = {s.index: reference_share(pk, s) for s in kat_keys.shares}
    assert all(s % n == 1 and 0 <= kat_keys.shares[i - 1].secret < m for i, s in shares.items())
    for subset in itertools.combinations(shares, pk.threshold):
        # Delta d = sum lambda_i s_i mod Nm, and d = 0 mod m, d = 1 mod N (Damgard-Jurik 2001, section 4.1)
        total = 0
        for i in subset:
            lam = pk.delta * math.prod(Fraction(j, j - i) for j in subset if j != i)
            assert lam.denominator == 1
            total += int(lam) * shares[i]
        d = total * pow(pk.delta, -1, n * m) % (n * m)
        assert d % m == 0 and d % n == 1
    for share in kat_keys.shares:
        assert pow(pk.v, pk.delta * share.secret, n) == pk.verification_keys[share.index - 1]


# -- fast path == reference -------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    subset=st.sampled_from(list(itertools.combinations(range(5), 3))),
)
def test_fast_path_decrypts_exactly_what_the_reference_does(
    kat_keys: ThresholdKeyMaterial, seed: int, subset: tuple[int, ...]
) -> None:
    pk = kat_keys.public_key
    gen = random.Random(seed)
    plaintexts = [gen.randrange(pk.n) for _ in range(5)] + [0, 1, pk.n - 1]
    ciphertexts = encrypt(kat_keys, plaintexts, f"fast-{seed}")
    shares = [kat_keys.shares[k] for k in subset]
    partials = [partial_decrypt(pk, s, ciphertexts, context=CONTEXT, workers=1) for s in shares]
    fast = combine_partials_checked(pk, ciphertexts, partials)
    # The published value is the Damgard-Jurik partial decryption divided by the public c^(2 Delta)...
    for share, partial in zip(shares, partials, strict=True):
        for c, z in zip(ciphertexts, partial.values, strict=True):
            assert z * pow(c, 2 * pk.delta, pk.nsquare) % pk.nsquare == reference_partial(
                pk, share, c
            )
    # ...and the plaintexts are the reference combination's, and phe's with the factors.
    reference = [
        reference_combine(pk, {s.index: reference_partial(pk, s, c) for s in shares})
        for c in ciphertexts
    ]
    private = phe.PaillierPrivateKey(pk.paillier, KAT_P, KAT_Q)
    assert fast == reference == [private.raw_decrypt(c) for c in ciphertexts] == plaintexts


def combine_partials_checked(
    pk: ThresholdPublicKey, ciphertexts: list[int], partials: list[PartialDecryption]
) -> list[int]:
    for partial in partials:
        verify_partial_decryption(pk, ciphertexts, partial, context=CONTEXT)
    return combine_partial_decryptions(pk, ciphertexts, partials, context=CONTEXT, workers=1)


def test_lagrange_scale_is_the_least_common_denominator_and_divides_delta() -> None:
    delta = math.factorial(10)
    for size in range(2, 11):
        for subset in itertools.combinations(range(1, 11), size):
            scale, lam = _lagrange_at_zero(subset, delta)
            assert delta % scale == 0
            assert sum(lam.values()) == scale  # sum of the Lagrange coefficients at 0 is 1
    assert _lagrange_at_zero((1, 2, 3, 4, 5, 6), delta)[0] == 1  # consecutive indices: binomials


def test_worker_processes_give_the_same_partial_decryption_and_plaintexts(
    small_keys: ThresholdKeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[int] = []

    class CountingPool(parallel.ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pools.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", CountingPool)
    pk = small_keys.public_key
    count = 2 * parallel.MIN_ITEMS_PER_WORKER + 3  # enough for two workers
    plaintexts = list(range(count))
    ciphertexts = encrypt(small_keys, plaintexts, "workers")
    one, two = (
        partial_decrypt(
            pk, small_keys.shares[0], ciphertexts, context=CONTEXT, rng=seeded_rng("w"), workers=w
        )
        for w in (1, 2)
    )
    assert one == two
    assert pools == [2]  # the second one ran on two worker processes
    other = partial_decrypt(pk, small_keys.shares[2], ciphertexts, context=CONTEXT, workers=2)
    for workers in (1, 2):
        assert (
            combine_partial_decryptions(
                pk, ciphertexts, [one, other], context=CONTEXT, workers=workers
            )
            == plaintexts
        )
    assert pools == [2, 2, 2, 2]  # partial decryption, then verification and combination
    with pytest.raises(ValueError, match="workers"):
        partial_decrypt(pk, small_keys.shares[0], ciphertexts, context=CONTEXT, workers=0)


# -- batch verification -----------------------------------------------------------------------------------------
def test_batch_verification_rejects_a_single_wrong_value_among_thousands(
    small_keys: ThresholdKeyMaterial,
) -> None:
    pk = small_keys.public_key
    n, nsq = pk.n, pk.nsquare
    count = 3000
    ciphertexts = encrypt(small_keys, [7 * k % n for k in range(count)], "thousands")
    share, other = small_keys.shares[0], small_keys.shares[1]
    honest = partial_decrypt(pk, share, ciphertexts, context=CONTEXT, workers=1)
    verify_partial_decryption(pk, ciphertexts, honest, context=CONTEXT)
    position = 1729
    shifted = list(honest.values)
    shifted[position] = (
        shifted[position] * (1 + n) % nsq
    )  # would shift one plaintext; invisible mod N
    randomised = list(honest.values)
    randomised[position] = (
        randomised[position] * pow(5, 2 * n, nsq) % nsq
    )  # a different N-th residue
    for wrong in (shifted, randomised):
        # The cheater makes its proof for the wrong vector: the batch test over all 3,000 entries refuses it.
        forged = prove_partial_decryption(pk, share, ciphertexts, wrong, context=CONTEXT)
        with pytest.raises(InvalidProof):
            verify_partial_decryption(pk, ciphertexts, forged, context=CONTEXT)
        with pytest.raises(RoundAborted, match=r"invalid from parties \[1\]"):
            combine_partial_decryptions(
                pk,
                ciphertexts,
                [forged, partial_decrypt(pk, other, ciphertexts, context=CONTEXT)],
                context=CONTEXT,
            )
        # Positive control: one reference proof per ciphertext catches it too, at exactly that position.
        rng = random.Random(position)
        failing = [
            j
            for j in range(position - 2, position + 3)
            if not reference_verify(
                pk,
                share.index,
                ciphertexts[j],
                wrong[j],
                reference_proof(
                    pk, share, ciphertexts[j], wrong[j], rng.getrandbits(pk.n.bit_length() + 400)
                ),
            )
        ]
        assert failing == [position]


def test_elements_of_order_two_pass_the_proof_and_cannot_change_the_plaintext(
    small_keys: ThresholdKeyMaterial,
) -> None:
    """The proof covers squares (Shoup 2000): a sign flip is accepted, and the combiner's even exponents undo it."""
    pk = small_keys.public_key
    plaintexts = [3, 1, 4, 1, 5]
    ciphertexts = encrypt(small_keys, plaintexts, "order-two")
    share, other = small_keys.shares[0], small_keys.shares[1]
    honest = partial_decrypt(pk, share, ciphertexts, context=CONTEXT, workers=1)
    flipped = [*honest.values[:2], pk.nsquare - honest.values[2], *honest.values[3:]]
    proof = prove_partial_decryption(pk, share, ciphertexts, flipped, context=CONTEXT)
    verify_partial_decryption(pk, ciphertexts, proof, context=CONTEXT)
    second = partial_decrypt(pk, other, ciphertexts, context=CONTEXT)
    assert (
        combine_partial_decryptions(pk, ciphertexts, [proof, second], context=CONTEXT) == plaintexts
    )


def test_a_wrong_proof_is_refused(small_keys: ThresholdKeyMaterial) -> None:
    pk = small_keys.public_key
    ciphertexts = encrypt(small_keys, list(range(40)), "wrong-proof")
    partials = [partial_decrypt(pk, s, ciphertexts, context=CONTEXT) for s in small_keys.shares]
    good, other = partials[0], partials[1]
    wrong = [
        replace(good, challenge=good.challenge ^ 1),
        replace(good, response=good.response + 1),
        replace(good, response=good.response + pk.n),  # still in range
        replace(good, index=other.index),  # claims to be another party
        replace(good, values=other.values),  # another party's values under this party's proof
        replace(
            other, index=good.index, challenge=other.challenge
        ),  # another party's proof as this one's
        replace(good, challenge=-1),
        replace(good, response=-good.response),
        replace(good, response=1 << (pk.n.bit_length() + pk.delta.bit_length() + 520)),
    ]
    for partial in wrong:
        with pytest.raises(InvalidProof):
            verify_partial_decryption(pk, ciphertexts, partial, context=CONTEXT)
    with pytest.raises(InvalidProof):  # bound to the request: another context or other ciphertexts
        verify_partial_decryption(pk, ciphertexts, good, context=CONTEXT + b"!")
    with pytest.raises(InvalidProof):
        verify_partial_decryption(pk, ciphertexts[::-1], good, context=CONTEXT)
    with pytest.raises(InvalidProof):  # shares a factor with N
        verify_partial_decryption(
            pk, ciphertexts, replace(good, values=(pk.n, *good.values[1:])), context=CONTEXT
        )
    with pytest.raises(RoundAborted, match=r"invalid from parties \[1\]"):
        combine_partial_decryptions(pk, ciphertexts, [wrong[1], other], context=CONTEXT)
    # with a third, honest party the combiner drops the bad one and still decrypts
    assert combine_partial_decryptions(
        pk, ciphertexts, [wrong[1], other, partials[2]], context=CONTEXT
    ) == list(range(40))


def test_shares_are_checked_against_their_verification_keys(
    small_keys: ThresholdKeyMaterial,
) -> None:
    pk = small_keys.public_key
    share = small_keys.shares[0]
    for bad in (
        replace(share, secret=share.secret + 1),
        replace(share, index=2),
        replace(share, key_fingerprint=b"\0" * 32),
    ):
        with pytest.raises(InvalidParameters):
            partial_decrypt(pk, bad, [2, 3], context=CONTEXT)


def test_format_one_keys_are_refused_with_a_way_out(small_keys: ThresholdKeyMaterial) -> None:
    old = small_keys.public_key.to_json().replace('"version":2', '"version":1')
    with pytest.raises(InvalidParameters, match="re-run the key ceremony"):
        ThresholdPublicKey.from_json(old)
    share = small_keys.shares[0].to_bytes().replace(b'"version": 2', b'"version": 1')
    with pytest.raises(InvalidParameters, match="re-run the key ceremony"):
        KeyShare.from_bytes(share)


def test_lagrange_combine_detects_too_few_parties(small_keys: ThresholdKeyMaterial) -> None:
    pk = small_keys.public_key
    ciphertexts = encrypt(small_keys, [11, 12], "too-few")
    partial = partial_decrypt(pk, small_keys.shares[0], ciphertexts, context=CONTEXT)
    with pytest.raises(DecryptionError):
        lagrange_combine(pk, ciphertexts, {partial.index: partial.values})


# -- multi-exponentiation -----------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(0, 80),
    bits=st.sampled_from([1, 7, 8, 64, 128, 130]),
    seed=st.integers(0, 2**32 - 1),
)
def test_multi_exponentiation_is_the_product_of_powers(count: int, bits: int, seed: int) -> None:
    gen = random.Random(seed)
    modulus = gen.getrandbits(512) | 1
    bases = [gen.randrange(modulus) for _ in range(count)]
    exponents = [gen.choice([0, 1, (1 << bits) - 1, gen.getrandbits(bits)]) for _ in range(count)]
    expected = 1
    for b, e in zip(bases, exponents, strict=True):
        expected = expected * pow(b, e, modulus) % modulus
    assert multi_exponentiation(bases, exponents, modulus, exponent_bits=bits) == expected % modulus


def test_multi_exponentiation_refuses_bad_exponents() -> None:
    with pytest.raises(ValueError, match="one exponent per base"):
        multi_exponentiation([2, 3], [1], 7, exponent_bits=8)
    with pytest.raises(ValueError, match="fit in exponent_bits"):
        multi_exponentiation([2], [256], 7, exponent_bits=8)
    with pytest.raises(ValueError, match="non-negative"):
        multi_exponentiation([2], [-1], 7, exponent_bits=8)


# -- mixed-radix packing ----------------------------------------------------------------------------------------
@st.composite
def radix_cases(draw: st.DrawFn) -> tuple[RadixPacking, np.ndarray, int]:
    packing = RadixPacking(
        value_bits=draw(st.integers(2, 32)),
        max_contributors=draw(st.integers(1, 64)),
        modulus_bits=draw(st.sampled_from([256, 512, 1024, 2048])),
    )
    contributors = draw(st.integers(1, packing.max_contributors))
    k = packing.slots_per_plaintext
    length = draw(st.sampled_from([1, max(1, k - 1), k, k + 1, 2 * k + 3]))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = gen.integers(-packing.offset, packing.offset + 1, size=(contributors, length))
    mode = draw(st.sampled_from(["random", "max", "min", "mixed"]))
    if mode == "max":
        values[:] = packing.offset
    elif mode == "min":
        values[:] = -packing.offset
    elif mode == "mixed":
        values[:, ::2] = packing.offset
        values[:, 1::2] = -packing.offset
    return packing, values.astype(np.int64), contributors


@settings(max_examples=120, deadline=None)
@given(radix_cases())
def test_radix_packed_sums_unpack_exactly_and_never_wrap(
    case: tuple[RadixPacking, np.ndarray, int],
) -> None:
    packing, values, contributors = case
    packed = [packing.pack(row) for row in values]
    summed = [sum(column) for column in zip(*packed, strict=True)]
    assert all(
        s < 1 << (packing.modulus_bits - 2) for s in summed
    )  # below N: decryption never wraps
    decoded = packing.unpack_sum(summed, length=values.shape[1], contributors=contributors)
    np.testing.assert_array_equal(decoded, values.sum(axis=0))
    np.testing.assert_array_equal(packing.unpack(packed[0], length=values.shape[1]), values[0])


def test_radix_slots_are_sized_to_the_exact_bound() -> None:
    packing = RadixPacking(value_bits=16, max_contributors=10, modulus_bits=2048)
    assert packing.radix == 10 * (2**16 - 2) + 1
    assert packing.slots_per_plaintext == 105
    assert packing.radix**105 < 2**2046 < packing.radix**106
    assert packing.plaintexts_for(1_000_000) == 9524  # 9,804 with 20-bit binary slots
    for b, n, bits in itertools.product([2, 8, 16, 24], [1, 3, 10, 64], [256, 2048]):
        radix = RadixPacking(value_bits=b, max_contributors=n, modulus_bits=bits)
        binary = SlotPacking(value_bits=b, max_contributors=n, modulus_bits=bits)
        assert radix.slots_per_plaintext >= binary.slots_per_plaintext


def test_radix_packing_refuses_what_could_overflow() -> None:
    packing = RadixPacking(value_bits=8, max_contributors=3, modulus_bits=256)
    with pytest.raises(InvalidParameters):
        packing.unpack_sum(packing.pack(np.zeros(5, dtype=np.int64)), length=5, contributors=4)
    with pytest.raises(ValueError, match="outside the quantization range"):
        packing.pack(np.array([128]))
    with pytest.raises(ValueError, match="too large"):
        packing.unpack_sum([packing.radix**packing.slots_per_plaintext], length=1, contributors=1)
    with pytest.raises(InvalidParameters):
        RadixPacking(value_bits=1, max_contributors=3, modulus_bits=256)
    with pytest.raises(InvalidParameters):
        RadixPacking(value_bits=62, max_contributors=3, modulus_bits=2048)
    with pytest.raises(InvalidParameters):
        RadixPacking(value_bits=40, max_contributors=3, modulus_bits=32)
