"""The one RFC 6962 Merkle core against the transparency-dev/merkle vectors, and randomized proof properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidMerkleProof, ProtocolViolation
from secagg.hazmat.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.secagg.hazmat.merkle_vectors import (
    CONSISTENCY,
    INCLUSION,
    LEAVES,
    ROOTS,
    TRIVIAL_BAD_CONSISTENCY,
    consistency_probes,
    inclusion_probes,
)

TREE = MerkleTree(leaf_hash(x) for x in LEAVES)


def test_a_failed_proof_is_a_protocol_violation() -> None:
    assert issubclass(InvalidMerkleProof, ProtocolViolation)


@pytest.mark.parametrize("size", range(9))
def test_roots_of_sizes_0_to_8(size: int) -> None:
    hashes = [leaf_hash(x) for x in LEAVES[:size]]
    assert TREE.root(size) == ROOTS[size]
    assert merkle_root(hashes) == ROOTS[size]
    compact = CompactRange()  # the streaming root a Paillier contribution is committed to
    compact.extend(hashes)
    assert compact.root() == ROOTS[size]
    assert MerkleTree(hashes).root() == ROOTS[size]


def test_empty_root_and_leaf_node_prefixes() -> None:
    assert ROOTS[0] == EMPTY_ROOT
    assert leaf_hash(b"") == ROOTS[1]
    assert node_hash(leaf_hash(LEAVES[0]), leaf_hash(LEAVES[1])) == ROOTS[2]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert TREE.inclusion_proof(index, size) == proof
    assert MerkleTree(leaf_hash(x) for x in LEAVES[:size]).inclusion_proof(index) == proof
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    assert TREE.consistency_proof(old, new) == proof
    verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_vectors_fail(index: int, size: int, proof: list[bytes]) -> None:
    for probe in inclusion_probes(index, size, proof):
        with pytest.raises(InvalidMerkleProof):
            verify_inclusion(*probe)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_vectors_fail(old: int, new: int, proof: list[bytes]) -> None:
    for probe in consistency_probes(old, new, proof):
        with pytest.raises(InvalidMerkleProof):
            verify_consistency(*probe)


def test_trivial_consistency_cases() -> None:
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[5])
    for args in TRIVIAL_BAD_CONSISTENCY:
        with pytest.raises(InvalidMerkleProof):
            verify_consistency(*args)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_random_trees_all_proofs_verify_and_tampering_fails(size: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    tree = MerkleTree(leaves)
    assert tree.root() == merkle_root(leaves)
    index = data.draw(st.integers(0, size - 1))
    at = data.draw(st.integers(index + 1, size))
    proof = tree.inclusion_proof(index, at)
    root = tree.root(at)
    verify_inclusion(leaves[index], index, at, proof, root)
    wrong_index = data.draw(st.integers(0, at - 1).filter(lambda i: i != index))
    with pytest.raises(InvalidMerkleProof):
        verify_inclusion(leaves[index], wrong_index, at, proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        with pytest.raises(InvalidMerkleProof):
            verify_inclusion(leaves[index], index, at, bad, root)
    old = data.draw(st.integers(0, at))
    cproof = tree.consistency_proof(old, at)
    verify_consistency(old, at, cproof, tree.root(old), root)
    if 0 < old < at:
        with pytest.raises(InvalidMerkleProof):
            verify_consistency(old, at, cproof, tree.root(old), leaf_hash(b"forged"))
        wrong_size = data.draw(st.integers(1, at).filter(lambda s: s != old))
        with pytest.raises(InvalidMerkleProof):
            verify_consistency(wrong_size, at, cproof, tree.root(old), root)
        k = data.draw(st.integers(0, len(cproof) - 1))
        bad = list(cproof)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        with pytest.raises(InvalidMerkleProof):
            verify_consistency(old, at, bad, tree.root(old), root)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_every_leaf_proves_and_no_other_leaf_does(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [leaf_hash(x) for x in leaves]
    root = merkle_root(hashes)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = MerkleTree(hashes).inclusion_proof(index)
    verify_inclusion(hashes[index], index, len(leaves), proof, root)
    if proof:
        with pytest.raises(InvalidMerkleProof):
            verify_inclusion(hashes[index], index, len(leaves), proof[:-1], root)
    with pytest.raises(InvalidMerkleProof):
        verify_inclusion(leaf_hash(leaves[index] + b"x"), index, len(leaves), proof, root)
    # the tree size comes from the signed commitment, not the prover
    with pytest.raises(InvalidMerkleProof):
        verify_inclusion(hashes[index], index, index, proof, root)
