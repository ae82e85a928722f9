"""The audit log's Merkle tree is the secagg core, with every failure as a VerificationError (same message)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from audits import merkle
from audits.errors import VerificationError
from secagg.errors import InvalidMerkleProof
from secagg.hazmat import merkle as core
from tests.secagg.hazmat import merkle_vectors as kat


def test_hashing_and_trees_are_the_core_itself() -> None:
    verifiers = {"verify_consistency", "verify_inclusion"}
    assert verifiers <= set(merkle.__all__)
    for name in set(merkle.__all__) - verifiers:
        assert getattr(merkle, name) is getattr(core, name), name
    for name in verifiers:  # wrapped: they raise VerificationError
        assert getattr(merkle, name) is not getattr(core, name), name


@pytest.mark.parametrize(("index", "size", "proof"), kat.INCLUSION)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    tree = merkle.MerkleTree(merkle.leaf_hash(x) for x in kat.LEAVES)
    assert tree.inclusion_proof(index, size) == proof
    merkle.verify_inclusion(
        merkle.leaf_hash(kat.LEAVES[index]), index, size, proof, kat.ROOTS[size]
    )


@pytest.mark.parametrize(("old", "new", "proof"), kat.CONSISTENCY)
def test_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    tree = merkle.MerkleTree(merkle.leaf_hash(x) for x in kat.LEAVES)
    assert tree.consistency_proof(old, new) == proof
    merkle.verify_consistency(old, new, proof, kat.ROOTS[old], kat.ROOTS[new])


def _same_refusal(
    audit_check: Callable[..., None], core_check: Callable[..., None], *args: object
) -> None:
    with pytest.raises(InvalidMerkleProof) as core_failure:
        core_check(*args)
    with pytest.raises(VerificationError) as audit_failure:
        audit_check(*args)
    assert str(audit_failure.value) == str(core_failure.value)
    assert not isinstance(audit_failure.value, InvalidMerkleProof)


@pytest.mark.parametrize(("index", "size", "proof"), kat.INCLUSION[1:])
def test_corrupted_inclusion_vectors_fail(index: int, size: int, proof: list[bytes]) -> None:
    for probe in kat.inclusion_probes(index, size, proof):
        _same_refusal(merkle.verify_inclusion, core.verify_inclusion, *probe)


@pytest.mark.parametrize(("old", "new", "proof"), kat.CONSISTENCY[1:])
def test_corrupted_consistency_vectors_fail(old: int, new: int, proof: list[bytes]) -> None:
    for probe in kat.consistency_probes(old, new, proof):
        _same_refusal(merkle.verify_consistency, core.verify_consistency, *probe)


def test_trivial_consistency_cases() -> None:
    merkle.verify_consistency(0, 0, [], merkle.EMPTY_ROOT, merkle.EMPTY_ROOT)
    merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, kat.ROOTS[5])
    for args in kat.TRIVIAL_BAD_CONSISTENCY:
        _same_refusal(merkle.verify_consistency, core.verify_consistency, *args)
