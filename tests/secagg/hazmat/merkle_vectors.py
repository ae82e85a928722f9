"""RFC 6962 known-answer vectors from transparency-dev/merkle, shared by the core and the audit-log tests."""

from __future__ import annotations

from secagg.hazmat.merkle import EMPTY_ROOT, leaf_hash

# transparency-dev/merkle testonly/constants.go: the 8 standard leaves and their roots.
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


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# transparency-dev/merkle proof/verify_test.go (leaf numbers there are 1-based).
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

# Consistency proofs that must fail although sizes and roots are trivial (empty or equal trees).
TRIVIAL_BAD_CONSISTENCY = [
    (1, 1, [], ROOTS[1], ROOTS[2]),
    (2, 1, [], ROOTS[2], ROOTS[1]),
    (1, 2, [], ROOTS[1], ROOTS[2]),
    (0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[1]),
]


def inclusion_probes(
    index: int, size: int, proof: list[bytes]
) -> list[tuple[bytes, int, int, list[bytes], bytes]]:
    """Every way to spoil a valid inclusion proof, as ``verify_inclusion`` arguments (leaf, index, size,
    proof, root): wrong index or size, leaf or root, or elements."""
    root, leaf = ROOTS[size], leaf_hash(LEAVES[index])
    probes = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (leaf_hash(b"Wrong"), index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((leaf, index, size, bad, root))
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    return probes


def consistency_probes(
    old: int, new: int, proof: list[bytes]
) -> list[tuple[int, int, list[bytes], bytes, bytes]]:
    """Every way to spoil a valid consistency proof (the valid proof itself is left out)."""
    r1, r2 = ROOTS[old], ROOTS[new]
    probes = [
        (old - 1, new, proof, r1, r2),
        (old + 1, new, proof, r1, r2),
        (old ^ 2, new, proof, r1, r2),
        (old, new * 2, proof, r1, r2),
        (old, new // 2, proof, r1, r2),
        (old, new, proof, EMPTY_ROOT, r2),
        (old, new, proof, r1, EMPTY_ROOT),
        (old, new, proof, r2, r1),
        (old, new, [], r1, r2),
        (old, new, [*proof, r1], r1, r2),
        (old, new, [*proof, r2], r1, r2),
        (old, new, [r1, *proof], r1, r2),
        (old, new, [r2, *proof], r1, r2),
        (old, new, [proof[0], *proof], r1, r2),
        (old, new, proof[:-1], r1, r2),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((old, new, bad, r1, r2))
    return [
        probe
        for probe in probes
        if not (probe[0] == old and probe[1] == new and probe[2] == proof and probe[3:] == (r1, r2))
    ]
