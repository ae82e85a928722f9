"""The local RFC 6962 Merkle helper against the transparency-dev/merkle vectors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ProtocolViolation
from secagg.paillier import (
    _inclusion_proof,
    _leaf_hash,
    _merkle_root,
    _MerkleStream,
    _verify_inclusion,
)

# transparency-dev/merkle testonly/constants.go: the 8 standard leaves and the roots of their prefixes.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# transparency-dev/merkle proof/verify_test.go inclusion vectors (0-based leaf index, tree size, path).
INCLUSION = [
    (0, 8, ("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, ("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",)),
    (1, 5, ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]  # fmt: skip


@pytest.mark.parametrize("size", range(9))
def test_roots_match_rfc6962_vectors(size: int) -> None:
    hashes = [_leaf_hash(x) for x in LEAVES[:size]]
    assert _merkle_root(hashes) == ROOTS[size]
    stream = _MerkleStream()
    for h in hashes:
        stream.push(h)
    assert stream.root() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_vectors(index: int, size: int, path: tuple[str, ...]) -> None:
    hashes = [_leaf_hash(x) for x in LEAVES[:size]]
    expected = [bytes.fromhex(p) for p in path]
    assert _inclusion_proof(hashes, index) == expected
    _verify_inclusion(hashes[index], index, size, expected, ROOTS[size])
    with pytest.raises(ProtocolViolation):
        _verify_inclusion(hashes[index], (index + 1) % size, size, expected, ROOTS[size])
    with pytest.raises(ProtocolViolation):
        _verify_inclusion(_leaf_hash(b"forged"), index, size, expected, ROOTS[size])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_every_leaf_proves_and_no_other_leaf_does(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [_leaf_hash(x) for x in leaves]
    root = _merkle_root(hashes)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = _inclusion_proof(hashes, index)
    _verify_inclusion(hashes[index], index, len(leaves), proof, root)
    if proof:
        with pytest.raises(ProtocolViolation):
            _verify_inclusion(hashes[index], index, len(leaves), proof[:-1], root)
    with pytest.raises(ProtocolViolation):
        _verify_inclusion(_leaf_hash(leaves[index] + b"x"), index, len(leaves), proof, root)
    with pytest.raises(
        ProtocolViolation
    ):  # the tree size comes from the signed commitment, not the prover
        _verify_inclusion(hashes[index], index, index, proof, root)
