"""Folds and proofs of plaintext knowledge (secagg.hazmat.paillier.knowledge): identities, soundness, binding."""

from __future__ import annotations

import dataclasses

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidProof
from secagg.hazmat.paillier import (
    FOLD_SEED_BYTES,
    ObfuscatorMode,
    ObfuscatorPool,
    ThresholdKeyMaterial,
    encrypt_with,
    fold_ciphertexts,
    fold_own,
    fold_weights,
    prove_plaintext_knowledge,
    verify_plaintext_knowledge,
)
from tests.secagg.paillier.conftest import seeded_rng

MODES = [ObfuscatorMode.SHORT_EXPONENT, ObfuscatorMode.STANDARD]


def _encrypted(keys: ThresholdKeyMaterial, plaintexts: list[int], mode: ObfuscatorMode, seed: str):
    pool = ObfuscatorPool(keys.public_key, mode=mode, rng=seeded_rng(seed))
    pool.fill(len(plaintexts))
    obfuscators, witnesses = pool.take_with_witnesses(len(plaintexts))
    return encrypt_with(keys.public_key, plaintexts, obfuscators), witnesses


def test_fold_weights_are_a_deterministic_expansion_of_the_seed() -> None:
    seed = bytes(range(FOLD_SEED_BYTES))
    weights = fold_weights(seed, 5)
    assert weights == fold_weights(seed, 5)
    assert weights[:3] == fold_weights(seed, 3)
    assert weights != fold_weights(bytes(FOLD_SEED_BYTES), 5)
    assert all(0 <= w < 2**128 for w in weights)
    with pytest.raises(ValueError, match="32 bytes"):
        fold_weights(b"short", 5)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=10, deadline=None)
@given(plaintexts=st.lists(st.integers(min_value=0, max_value=2**200), min_size=1, max_size=40))
def test_own_fold_equals_the_fold_of_the_ciphertexts(
    keys_2_of_3: ThresholdKeyMaterial, mode: ObfuscatorMode, plaintexts: list[int]
) -> None:
    pk = keys_2_of_3.public_key
    ciphertexts, witnesses = _encrypted(keys_2_of_3, plaintexts, mode, "fold")
    weights = fold_weights(b"\x07" * FOLD_SEED_BYTES, len(plaintexts))
    fold, plaintext, _ = fold_own(pk, plaintexts, witnesses, mode, weights)
    assert fold == fold_ciphertexts(pk, ciphertexts, weights)
    assert plaintext == sum(w * m for w, m in zip(weights, plaintexts, strict=True)) % pk.n


def test_fold_on_worker_processes_equals_one_process(keys_2_of_3: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3.public_key
    ciphertexts, _ = _encrypted(keys_2_of_3, list(range(300)), ObfuscatorMode.SHORT_EXPONENT, "w")
    weights = fold_weights(b"\x01" * FOLD_SEED_BYTES, 300)
    naive = 1
    for c, w in zip(ciphertexts, weights, strict=True):
        naive = naive * pow(c, w, pk.nsquare) % pk.nsquare
    assert fold_ciphertexts(pk, ciphertexts, weights, workers=2) == naive
    assert fold_ciphertexts(pk, ciphertexts, weights, workers=1) == naive


@pytest.mark.parametrize("mode", MODES)
def test_proof_of_plaintext_knowledge_verifies_and_is_bound_to_its_context(
    keys_2_of_3: ThresholdKeyMaterial, mode: ObfuscatorMode
) -> None:
    pk = keys_2_of_3.public_key
    plaintexts = [5, 7, 11]
    ciphertexts, witnesses = _encrypted(keys_2_of_3, plaintexts, mode, "pok")
    weights = fold_weights(b"\x02" * FOLD_SEED_BYTES, 3)
    fold, plaintext, witness = fold_own(pk, plaintexts, witnesses, mode, weights)
    proof = prove_plaintext_knowledge(
        pk, fold, plaintext, witness, mode, context=b"silo-a", rng=seeded_rng("p")
    )
    verify_plaintext_knowledge(pk, fold, proof, context=b"silo-a")
    # another prover's context (silo b replaying silo a's proof) is refused
    with pytest.raises(InvalidProof):
        verify_plaintext_knowledge(pk, fold, proof, context=b"silo-b")
    # the proof covers this ciphertext only
    with pytest.raises(InvalidProof):
        verify_plaintext_knowledge(pk, fold * ciphertexts[0] % pk.nsquare, proof, context=b"silo-a")
    for field, value in (("response", proof.response ^ 1), ("commitment", proof.commitment + 1)):
        with pytest.raises(InvalidProof):
            verify_plaintext_knowledge(
                pk, fold, dataclasses.replace(proof, **{field: value}), context=b"silo-a"
            )


def test_a_prover_without_the_plaintext_cannot_prove_knowledge(
    keys_2_of_3: ThresholdKeyMaterial,
) -> None:
    """The cancellation attack's ciphertext ``Enc(v) / c_A``: the colluder knows neither plaintext nor noise.

    Positive control: with the plaintext and witness of what it proves (here the product, whose parts the
    prover knows) a proof passes.
    """
    pk = keys_2_of_3.public_key
    mode = ObfuscatorMode.SHORT_EXPONENT
    (c_a,), (w_a,) = _encrypted(keys_2_of_3, [123456789], mode, "victim")
    (c_v,), (w_v,) = _encrypted(keys_2_of_3, [1000], mode, "colluder")
    cancelling = c_v * gmpy2.invert(c_a, pk.nsquare) % pk.nsquare
    # the colluder's best guess: its own part of the plaintext and noise
    guess = prove_plaintext_knowledge(pk, int(cancelling), 1000, w_v, mode, context=b"b")
    with pytest.raises(InvalidProof):
        verify_plaintext_knowledge(pk, int(cancelling), guess, context=b"b")
    # positive control: knowing A's values (what the attack is after) the proof would pass
    honest = prove_plaintext_knowledge(
        pk, int(c_v * c_a % pk.nsquare), (1000 + 123456789) % pk.n, w_v + w_a, mode, context=b"b"
    )
    verify_plaintext_knowledge(pk, int(c_v * c_a % pk.nsquare), honest, context=b"b")


def test_out_of_range_proof_elements_are_refused(keys_2_of_3: ThresholdKeyMaterial) -> None:
    pk = keys_2_of_3.public_key
    (c,), (w,) = _encrypted(keys_2_of_3, [9], ObfuscatorMode.STANDARD, "range")
    proof = prove_plaintext_knowledge(pk, c, 9, w, ObfuscatorMode.STANDARD, context=b"x")
    for bad in (
        dataclasses.replace(proof, response=pk.n),
        dataclasses.replace(proof, randomness=0),
        dataclasses.replace(proof, commitment=pk.nsquare),
        dataclasses.replace(proof, form=ObfuscatorMode.SHORT_EXPONENT, randomness=1 << 2000),
    ):
        with pytest.raises(InvalidProof):
            verify_plaintext_knowledge(pk, c, bad, context=b"x")
