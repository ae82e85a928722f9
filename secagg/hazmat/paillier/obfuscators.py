"""Ciphertext randomness ``r^N``: the short-exponent and standard constructions and the offline pool.

Notes:
    Obfuscators come from :class:`ObfuscatorPool`; the default is the Damgard-Jurik-Nielsen short exponent
    (``hs^a`` with ``hs = h^N``, ``h = -x^2 mod N`` fixed at key generation, ``a`` of
    :data:`SHORT_EXPONENT_BITS` bits) evaluated with a fixed-base table, which rests on one extra assumption
    quoted in :data:`SHORT_EXPONENT_ASSUMPTION`. :attr:`ObfuscatorMode.STANDARD` (``r^N`` with uniform
    ``r``) needs only the DCR assumption and costs about 30 times more per obfuscator.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import gmpy2
from gmpy2 import mpz

from secagg.hazmat.keys import RandomSource
from secagg.hazmat.paillier.keys import ThresholdPublicKey
from secagg.hazmat.random import randbits, random_unit

__all__ = [
    "SHORT_EXPONENT_ASSUMPTION",
    "SHORT_EXPONENT_BITS",
    "ObfuscatorMode",
    "ObfuscatorPool",
]

SHORT_EXPONENT_BITS = 256
"""Bit length of the Damgard-Jurik-Nielsen short exponent ``a`` in ``hs^a``.

256 bits = twice the 128-bit security target: the best known attacks on a discrete logarithm whose exponent is
known to lie in ``[0, 2^k)`` (Pollard's lambda/kangaroo, van Oorschot-Wiener 1996 for short exponents) cost
about ``2^(k/2)`` group operations, and 2^128 is above the ~112-bit strength of a 2048-bit modulus and equal
to the 128-bit strength of a 3072-bit one. The table makes each obfuscator cost ``256 / 8 = 32`` modular
multiplications instead of a ~2048-bit exponentiation."""

SHORT_EXPONENT_ASSUMPTION = (
    "Paillier mode draws ciphertext randomness with the Damgard-Jurik-Nielsen short-exponent technique: "
    "the obfuscator is hs^a mod N^2 with hs = h^N, h = -x^2 mod N fixed at key generation and a a uniformly "
    f"random {SHORT_EXPONENT_BITS}-bit exponent, instead of r^N for a uniformly random r. Semantic security "
    "then rests on the Decisional Composite Residuosity assumption PLUS the assumption that hs^a for a short "
    "random exponent a is computationally indistinguishable from a uniformly random element of the subgroup "
    "hs generates (a short-exponent discrete-logarithm assumption in the style of Koshiba and Kurosawa, "
    "PKC 2004; Damgard, Jurik and Nielsen, Int. J. Inf. Secur. 2010, section 4). Best known attacks cost "
    "about 2^128 operations. Consortia that do not accept the extra assumption select the standard "
    "obfuscator r^N (ObfuscatorMode.STANDARD), which relies on DCR alone and is about 30x slower to "
    "precompute; the short exponent is the default."
)


class ObfuscatorMode(enum.StrEnum):
    """How the randomness ``r^N`` of a ciphertext is produced."""

    SHORT_EXPONENT = "short-exponent"
    """Default: ``hs^a`` with a short random ``a`` and a fixed-base table (extra assumption, see module)."""
    STANDARD = "standard"
    """``r^N`` with uniform ``r`` in ``Z*_N``: DCR only, one full exponentiation each."""


_WINDOW_BITS = 8
_WORKER_TABLES: dict[tuple[int, int], list[list[Any]]] = {}


def _fixed_base_table(base: int, modulus: int, exponent_bits: int) -> list[list[Any]]:
    """``table[j][w] = base^(w * 2^(8j)) mod modulus`` for 8-bit windows ``w``."""
    windows = -(-exponent_bits // _WINDOW_BITS)
    table: list[list[Any]] = []
    g = mpz(base)
    mod = mpz(modulus)
    for _ in range(windows):
        row = [mpz(1), g]
        for _ in range((1 << _WINDOW_BITS) - 2):
            row.append(row[-1] * g % mod)
        table.append(row)
        g = row[-1] * g % mod
    return table


def _fixed_base_pow(table: list[list[Any]], exponent: int, modulus: Any) -> Any:
    acc = mpz(1)
    mask = (1 << _WINDOW_BITS) - 1
    j = 0
    while exponent:
        w = exponent & mask
        if w:
            acc = acc * table[j][w] % modulus
        exponent >>= _WINDOW_BITS
        j += 1
    return acc


def _compute_obfuscators(mode: str, n: int, hs: int, seeds: Sequence[int]) -> list[Any]:
    """Turn random seeds into obfuscators (top-level so a process pool can run it)."""
    nsq = mpz(n) * n
    if mode == ObfuscatorMode.STANDARD:
        return list(gmpy2.powmod_base_list([mpz(s) for s in seeds], mpz(n), nsq))
    table = _WORKER_TABLES.get((hs, n))
    if table is None:
        _WORKER_TABLES.clear()  # one key at a time per process: bounded memory
        table = _fixed_base_table(hs, n * n, SHORT_EXPONENT_BITS)
        _WORKER_TABLES[(hs, n)] = table
    return [_fixed_base_pow(table, int(a), nsq) for a in seeds]


class ObfuscatorPool:
    """Precomputed ciphertext randomness, filled offline ahead of a round and consumed once each.

    Args:
        public_key: the joint public key.
        mode: :attr:`ObfuscatorMode.SHORT_EXPONENT` (default) or :attr:`ObfuscatorMode.STANDARD`.
        rng: source of the exponents / bases; every random draw happens in this process.

    Notes:
        An obfuscator is never used twice: two ciphertexts with the same obfuscator reveal the difference of
        their plaintexts (``c1 / c2 = 1 + (m1 - m2) N``). :meth:`take` removes what it returns; if the pool runs
        dry it computes the shortfall on the spot (correct, only slower) and counts it in
        :attr:`computed_online`. Filling uses worker processes for the short-exponent mode, because the
        fixed-base table is driven by Python-level multiplications that hold the GIL, and threads for the
        standard mode, where ``gmpy2.powmod_base_list`` releases the GIL (measured in
        ``bench/bench_paillier.py``).
    """

    def __init__(
        self,
        public_key: ThresholdPublicKey,
        *,
        mode: ObfuscatorMode = ObfuscatorMode.SHORT_EXPONENT,
        rng: RandomSource = os.urandom,
    ) -> None:
        self._public_key = public_key
        self._mode = ObfuscatorMode(mode)
        self._rng = rng
        self._pool: list[Any] = []
        self._witnesses: list[int] = []  # a_j or r_j of each obfuscator: secret, never logged
        self.computed_online = 0

    def __repr__(self) -> str:
        return f"ObfuscatorPool(mode={self._mode.value!r}, available={len(self._pool)})"

    @property
    def mode(self) -> ObfuscatorMode:
        """The obfuscator construction in use."""
        return self._mode

    @property
    def available(self) -> int:
        """How many precomputed obfuscators remain."""
        return len(self._pool)

    def _seeds(self, count: int) -> list[int]:
        if self._mode is ObfuscatorMode.STANDARD:
            return [random_unit(self._rng, self._public_key.n) for _ in range(count)]
        return [randbits(self._rng, SHORT_EXPONENT_BITS) for _ in range(count)]

    def _compute(self, seeds: list[int], workers: int, executor: str) -> list[Any]:
        pk = self._public_key
        if workers <= 1 or len(seeds) < 2 * workers:
            return _compute_obfuscators(self._mode.value, pk.n, pk.hs, seeds)
        size = -(-len(seeds) // (4 * workers))
        batches = [seeds[i : i + size] for i in range(0, len(seeds), size)]
        pool_cls = ProcessPoolExecutor if executor == "process" else ThreadPoolExecutor
        with pool_cls(max_workers=workers) as pool:
            futures = [
                pool.submit(_compute_obfuscators, self._mode.value, pk.n, pk.hs, batch)
                for batch in batches
            ]
            return [value for future in futures for value in future.result()]

    def fill(self, count: int, *, workers: int = 1, executor: str | None = None) -> None:
        """Precompute ``count`` more obfuscators.

        Args:
            count: how many to add.
            workers: parallel workers (2 uses both cores of the reference machine).
            executor: ``"process"`` or ``"thread"``; by default processes for the short-exponent mode and
                threads for the standard mode (see class notes).
        """
        if count < 0 or workers < 1:
            raise ValueError("count must be >= 0 and workers >= 1")
        if executor is None:
            executor = "thread" if self._mode is ObfuscatorMode.STANDARD else "process"
        if executor not in ("process", "thread"):
            raise ValueError("executor must be 'process' or 'thread'")
        seeds = self._seeds(count)
        self._pool.extend(self._compute(seeds, workers, executor))
        self._witnesses.extend(seeds)

    def take(self, count: int) -> list[Any]:
        """Remove and return ``count`` obfuscators, computing any shortfall now."""
        return self.take_with_witnesses(count)[0]

    def take_with_witnesses(self, count: int) -> tuple[list[Any], list[int]]:
        """Remove ``count`` obfuscators; return them with their witnesses (``a_j`` or ``r_j``, see the mode).

        The witnesses let a silo fold and prove knowledge of its own ciphertexts
        (:mod:`secagg.hazmat.paillier.knowledge`); they are as secret as the plaintexts.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        shortfall = max(0, count - len(self._pool))
        if shortfall:
            self.fill(shortfall)
            self.computed_online += shortfall
        cut = len(self._pool) - count
        taken, witnesses = self._pool[cut:], self._witnesses[cut:]
        del self._pool[cut:], self._witnesses[cut:]
        return taken, witnesses
