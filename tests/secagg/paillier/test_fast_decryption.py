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

import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import DecryptionError, InvalidParameters, InvalidProof, RoundAborted
from secagg.hazmat.paillier import (
    KeyShare,
    PartialDecryption,
    ThresholdKeyMaterial,
    ThresholdPublicKey,
    combine_partial_decryptions,
    lagrange_combine,
    parallel,
    partial_decrypt,
    verify_partial_decryption,
)
from secagg.hazmat.paillier.multiexp import multi_exponentiation
from secagg.hazmat.paillier.proofs import prove_partial_decryption
from secagg.hazmat.paillier.threshold import _lagrange_at_zero

from .conftest import KAT_P, KAT_Q, encrypt, seeded_rng

CONTEXT = b"fast-path-context"


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


# -- the key ------------------------------------------------------------------------------------------------------
def test_dealt_shares_are_a_damgard_jurik_sharing_of_d(
    keys_3_of_5_kat: ThresholdKeyMaterial,
) -> None:
    pk = keys_3_of_5_kat.public_key
    n = pk.n
    m = ((KAT_P - 1) // 2) * ((KAT_Q - 1) // 2)
    shares = {s.index: reference_share(pk, s) for s in keys_3_of_5_kat.shares}
    assert all(
        s % n == 1 and 0 <= keys_3_of_5_kat.shares[i - 1].secret < m for i, s in shares.items()
    )
    for subset in itertools.combinations(shares, pk.threshold):
        # Delta d = sum lambda_i s_i mod Nm, and d = 0 mod m, d = 1 mod N (Damgard-Jurik 2001, section 4.1)
        total = 0
        for i in subset:
            lam = pk.delta * math.prod(Fraction(j, j - i) for j in subset if j != i)
            assert lam.denominator == 1
            total += int(lam) * shares[i]
        d = total * pow(pk.delta, -1, n * m) % (n * m)
        assert d % m == 0 and d % n == 1
    for share in keys_3_of_5_kat.shares:
        assert pow(pk.v, pk.delta * share.secret, n) == pk.verification_keys[share.index - 1]


# -- fast path == reference -------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    subset=st.sampled_from(list(itertools.combinations(range(5), 3))),
)
def test_fast_path_decrypts_exactly_what_the_reference_does(
    keys_3_of_5_kat: ThresholdKeyMaterial, seed: int, subset: tuple[int, ...]
) -> None:
    pk = keys_3_of_5_kat.public_key
    gen = random.Random(seed)
    plaintexts = [gen.randrange(pk.n) for _ in range(5)] + [0, 1, pk.n - 1]
    ciphertexts = encrypt(keys_3_of_5_kat, plaintexts, f"fast-{seed}")
    shares = [keys_3_of_5_kat.shares[k] for k in subset]
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
    keys_2_of_3_tiny: ThresholdKeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[int] = []

    class CountingPool(parallel.ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pools.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", CountingPool)
    pk = keys_2_of_3_tiny.public_key
    count = 2 * parallel.MIN_ITEMS_PER_WORKER + 3  # enough for two workers
    plaintexts = list(range(count))
    ciphertexts = encrypt(keys_2_of_3_tiny, plaintexts, "workers")
    one, two = (
        partial_decrypt(
            pk,
            keys_2_of_3_tiny.shares[0],
            ciphertexts,
            context=CONTEXT,
            rng=seeded_rng("w"),
            workers=w,
        )
        for w in (1, 2)
    )
    assert one == two
    assert pools == [2]  # the second one ran on two worker processes
    other = partial_decrypt(pk, keys_2_of_3_tiny.shares[2], ciphertexts, context=CONTEXT, workers=2)
    for workers in (1, 2):
        assert (
            combine_partial_decryptions(
                pk, ciphertexts, [one, other], context=CONTEXT, workers=workers
            )
            == plaintexts
        )
    assert pools == [2, 2, 2, 2]  # partial decryption, then verification and combination
    with pytest.raises(ValueError, match="workers"):
        partial_decrypt(pk, keys_2_of_3_tiny.shares[0], ciphertexts, context=CONTEXT, workers=0)


# -- batch verification -----------------------------------------------------------------------------------------
def test_batch_verification_rejects_a_single_wrong_value_among_thousands(
    keys_2_of_3_tiny: ThresholdKeyMaterial,
) -> None:
    pk = keys_2_of_3_tiny.public_key
    n, nsq = pk.n, pk.nsquare
    count = 3000
    ciphertexts = encrypt(keys_2_of_3_tiny, [7 * k % n for k in range(count)], "thousands")
    share, other = keys_2_of_3_tiny.shares[0], keys_2_of_3_tiny.shares[1]
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
    keys_2_of_3_tiny: ThresholdKeyMaterial,
) -> None:
    """The proof covers squares (Shoup 2000): a sign flip is accepted, and the combiner's even exponents undo it."""
    pk = keys_2_of_3_tiny.public_key
    plaintexts = [3, 1, 4, 1, 5]
    ciphertexts = encrypt(keys_2_of_3_tiny, plaintexts, "order-two")
    share, other = keys_2_of_3_tiny.shares[0], keys_2_of_3_tiny.shares[1]
    honest = partial_decrypt(pk, share, ciphertexts, context=CONTEXT, workers=1)
    flipped = [*honest.values[:2], pk.nsquare - honest.values[2], *honest.values[3:]]
    proof = prove_partial_decryption(pk, share, ciphertexts, flipped, context=CONTEXT)
    verify_partial_decryption(pk, ciphertexts, proof, context=CONTEXT)
    second = partial_decrypt(pk, other, ciphertexts, context=CONTEXT)
    assert (
        combine_partial_decryptions(pk, ciphertexts, [proof, second], context=CONTEXT) == plaintexts
    )


def test_a_wrong_proof_is_refused(keys_2_of_3_tiny: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3_tiny.public_key
    ciphertexts = encrypt(keys_2_of_3_tiny, list(range(40)), "wrong-proof")
    partials = [
        partial_decrypt(pk, s, ciphertexts, context=CONTEXT) for s in keys_2_of_3_tiny.shares
    ]
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
    keys_2_of_3_tiny: ThresholdKeyMaterial,
) -> None:
    pk = keys_2_of_3_tiny.public_key
    share = keys_2_of_3_tiny.shares[0]
    for bad in (
        replace(share, secret=share.secret + 1),
        replace(share, index=2),
        replace(share, key_fingerprint=b"\0" * 32),
    ):
        with pytest.raises(InvalidParameters):
            partial_decrypt(pk, bad, [2, 3], context=CONTEXT)


def test_format_one_keys_are_refused_with_a_way_out(keys_2_of_3_tiny: ThresholdKeyMaterial) -> None:
    old = keys_2_of_3_tiny.public_key.to_json().replace('"version":2', '"version":1')
    with pytest.raises(InvalidParameters, match="re-run the key ceremony"):
        ThresholdPublicKey.from_json(old)
    share = keys_2_of_3_tiny.shares[0].to_bytes().replace(b'"version": 2', b'"version": 1')
    with pytest.raises(InvalidParameters, match="re-run the key ceremony"):
        KeyShare.from_bytes(share)


def test_lagrange_combine_detects_too_few_parties(keys_2_of_3_tiny: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3_tiny.public_key
    ciphertexts = encrypt(keys_2_of_3_tiny, [11, 12], "too-few")
    partial = partial_decrypt(pk, keys_2_of_3_tiny.shares[0], ciphertexts, context=CONTEXT)
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
