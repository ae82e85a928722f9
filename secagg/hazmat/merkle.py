"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and an incremental compact range: the one Merkle core.

Notes:
    Hashing follows RFC 9162 section 2.1.1: ``leaf = SHA-256(0x00 || entry)`` and
    ``node = SHA-256(0x01 || left || right)``; the tree of n leaves splits at the largest
    power of two strictly below n. The distinct prefixes stop a leaf from being passed off as
    an interior node (second-preimage attack on unprefixed Merkle trees). Proof generation is
    RFC 6962 section 2.1.1/2.1.2 (PATH, PROOF/SUBPROOF); verification is the iterative
    algorithm of RFC 9162 sections 2.1.3.2 and 2.1.4.2, which checks that a proof has exactly
    the right length as well as the right hashes. Verifiers raise, never return ``False``.
    Both the Paillier commitments (:mod:`secagg.paillier`) and the audit log (:mod:`audits.merkle`)
    build on this module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from secagg.errors import InvalidMerkleProof

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "InvalidMerkleProof",
    "MerkleTree",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256

#: Root of the empty tree: SHA-256 of the empty string (RFC 9162 2.1.1).
EMPTY_ROOT = _sha256(b"").digest()
#: Bytes of every leaf, node and root hash (SHA-256).
HASH_SIZE = 32


def leaf_hash(entry: bytes) -> bytes:
    """Return ``SHA-256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """Largest k = 2**i with k < n, for n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The O(log n) state from which the root of a growing tree is available at any time.

    It holds one hash per set bit of ``size``: the roots of the perfect subtrees that the
    first ``size`` leaves decompose into, largest (leftmost) first.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (not the entry: call :func:`leaf_hash` first)."""
        h = leaf
        size = self._size
        hashes = self._hashes
        # Each trailing 1 bit of the old size is a perfect subtree of the same height as the
        # carry, so they merge, exactly like binary addition.
        while size & 1:
            h = node_hash(hashes.pop(), h)
            size >>= 1
        hashes.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """Root hash of the tree of all leaves appended so far."""
        if not self._hashes:
            return EMPTY_ROOT
        hashes = self._hashes
        r = hashes[-1]
        for h in reversed(hashes[:-1]):
            r = node_hash(h, r)
        return r


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """Root of the tree over the given *leaf hashes* (MTH in RFC 9162 2.1.1)."""
    compact = CompactRange()
    compact.extend(leaves)
    return compact.root()


class MerkleTree:
    """An append-only tree that keeps every perfect subtree's hash, for O(log n) proofs.

    ``levels[h][i]`` is the hash of the perfect subtree of height ``h`` covering leaves
    ``[i * 2**h, (i + 1) * 2**h)``. Appending is amortized O(1) hashes; the root at any past
    size, an inclusion proof and a consistency proof are O(log n) hashes each.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._levels[0][index]

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash and return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        levels = self._levels
        levels[0].append(leaf)
        height = 0
        while len(levels[height]) % 2 == 0:
            level = levels[height]
            parent = node_hash(level[-2], level[-1])
            if height + 1 == len(levels):
                levels.append([])
            levels[height + 1].append(parent)
            height += 1
        return len(levels[0]) - 1

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``; ``start`` is aligned as in every RFC 6962 split."""
        n = end - start
        if n & (n - 1) == 0:
            height = n.bit_length() - 1
            if start % n == 0:
                return self._levels[height][start >> height]
        k = _largest_power_of_two_below(n)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all)."""
        n = self._check_size(size)
        return EMPTY_ROOT if n == 0 else self._subtree(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of the first ``size`` leaves (RFC 6962 PATH)."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"leaf index {index} is outside a tree of size {n}")
        proof: list[bytes] = []
        start, end, m = 0, n, index
        # Walk down from the root, collecting siblings; reversed at the end (leaf-up order).
        while end - start > 1:
            k = _largest_power_of_two_below(end - start)
            if m < k:
                proof.append(self._subtree(start + k, end))
                end = start + k
            else:
                proof.append(self._subtree(start, start + k))
                start += k
                m -= k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the first ``old_size`` leaves are a prefix of the first ``new_size``.

        RFC 6962 2.1.2 (PROOF/SUBPROOF); empty when ``old_size`` is 0 or equals ``new_size``.
        """
        n = self._check_size(new_size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} is outside 0..{n}")
        if old_size in (0, n):
            return []
        proof: list[bytes] = []
        start, end, m, complete = 0, n, old_size, True
        while True:
            if m == end - start:
                if not complete:
                    proof.append(self._subtree(start, end))
                break
            k = _largest_power_of_two_below(end - start)
            if m <= k:
                proof.append(self._subtree(start + k, end))
                end = start + k
            else:
                proof.append(self._subtree(start, start + k))
                start += k
                m -= k
                complete = False
        proof.reverse()
        return proof


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise InvalidMerkleProof(f"{what} is not a 32-byte hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) sits at ``index`` in the tree of ``size`` with ``root``.

    Raises:
        InvalidMerkleProof: the proof does not verify (wrong index, size, hashes or length).

    Notes:
        RFC 9162 section 2.1.3.2, including the final ``sn == 0`` test that rejects proofs
        with missing or trailing elements.
    """
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root")
    if not 0 <= index < size:
        raise InvalidMerkleProof(
            f"inclusion proof: index {index} is not inside a tree of size {size}"
        )
    fn, sn, r = index, size - 1, leaf
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {i}")
        if sn == 0:
            raise InvalidMerkleProof("inclusion proof: too many elements")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidMerkleProof("inclusion proof: too few elements")
    if not hmac.compare_digest(r, root):
        raise InvalidMerkleProof("inclusion proof: computed root does not match")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``).

    Raises:
        InvalidMerkleProof: the proof does not verify: the log was rewritten, or the proof is bad.

    Notes:
        RFC 9162 section 2.1.4.2. An empty old tree is a prefix of everything (and takes an
        empty proof); equal sizes need equal roots and an empty proof.
    """
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if not 0 <= old_size <= new_size:
        raise InvalidMerkleProof(f"consistency proof: old size {old_size} > new size {new_size}")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise InvalidMerkleProof("consistency proof: expected an empty proof")
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise InvalidMerkleProof("consistency proof: same size but different roots")
        return
    if not proof:
        raise InvalidMerkleProof("consistency proof: empty proof for different sizes")
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency proof element {i}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidMerkleProof("consistency proof: too many elements")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidMerkleProof("consistency proof: too few elements")
    if not hmac.compare_digest(fr, old_root):
        raise InvalidMerkleProof("consistency proof: does not reproduce the old root")
    if not hmac.compare_digest(sr, new_root):
        raise InvalidMerkleProof("consistency proof: does not reproduce the new root")
