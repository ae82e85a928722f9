"""Mixed-radix slots: the most quantized integers per Paillier plaintext whose sums still never carry.

Notes:
    - A signed value ``x`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` is stored as ``u = x + (2^(b-1) - 1)`` in
      ``[0, 2^b - 2]`` (offset binary, as :class:`secagg.hazmat.packing.SlotPacking`). The sum of at most ``n``
      such values lies in ``[0, n (2^b - 2)]``, so a slot is one digit in base ``B = n (2^b - 2) + 1``: adding
      ``n`` packed plaintexts never carries into the next slot. ``k`` slots fill ``B^k`` values, and ``k`` is
      the largest with ``B^k <= 2^(bits(N) - 1 - SAFETY_MARGIN_BITS)``, so even the sum of ``n`` packed
      plaintexts stays below ``2^(bits(N) - 2) < N`` and decryption (mod ``N``) never wraps. This is the
      BatchCrypt layout (Zhang et al., USENIX ATC 2020) with the slot sized to the exact bound instead of
      ``b + ceil(log2 n)`` whole bits: for ``b = 16``, ``n = 10`` and a 2048-bit ``N``, 105 slots of
      ``log2(655,341) = 19.32`` bits instead of 102 of 20 bits, 2.9% fewer ciphertexts to encrypt, upload and
      decrypt.
    - ``n`` is the round's ``max_contributors``, the roster size (each silo insists on it): the cohort is not
      known when a silo encrypts, and every decrypter refuses an aggregate of more contributions than the
      slots were sized for (and so does :meth:`RadixPacking.unpack_sum`), so a smaller ``n`` could overflow.
    - Vectorized with numpy: slots are grouped into 64-bit words of ``w`` digits (``B^w < 2^63``), and each
      plaintext is built from (and split into) its words with one Python big-integer operation per word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from secagg.errors import InvalidParameters
from secagg.hazmat.packing import MAX_SLOT_BITS, SAFETY_MARGIN_BITS

__all__ = ["RadixPacking"]

_WORD_LIMIT = 1 << 63


@dataclass(frozen=True, kw_only=True)
class RadixPacking:
    """Layout of quantized values in Paillier plaintexts, one base-``radix`` digit per value.

    Attributes:
        value_bits: ``b``; inputs lie in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
        max_contributors: ``n``, the most plaintexts that will ever be added together.
        modulus_bits: bit length of the Paillier modulus ``N``.

    Raises:
        InvalidParameters: a slot sum could not be decoded exactly, or no slot fits.
    """

    value_bits: int
    max_contributors: int
    modulus_bits: int

    def __post_init__(self) -> None:
        if self.value_bits < 2:
            raise InvalidParameters(
                "value_bits must be >= 2 (one sign position and one magnitude bit)"
            )
        if self.max_contributors < 1:
            raise InvalidParameters("max_contributors must be >= 1")
        if self.radix.bit_length() > MAX_SLOT_BITS:
            raise InvalidParameters(
                f"slot sums above 2^{MAX_SLOT_BITS} could not be decoded exactly"
            )
        if self.slots_per_plaintext < 1:
            raise InvalidParameters("the Paillier modulus is too small for even one slot")

    @property
    def offset(self) -> int:
        """``2^(b-1) - 1``, added to every value (offset binary)."""
        return (1 << (self.value_bits - 1)) - 1

    @property
    def max_abs_value(self) -> int:
        """Largest magnitude accepted: the range is symmetric, ``[-offset, offset]``."""
        return self.offset

    @property
    def radix(self) -> int:
        """``B = n (2^b - 2) + 1``: one more than the largest slot sum."""
        return self.max_contributors * 2 * self.offset + 1

    @property
    def slots_per_plaintext(self) -> int:
        """The largest ``k`` with ``B^k <= 2^(bits(N) - 1 - SAFETY_MARGIN_BITS)``."""
        limit = 1 << max(0, self.modulus_bits - 1 - SAFETY_MARGIN_BITS)
        k, power = 0, self.radix
        while power <= limit:
            k, power = k + 1, power * self.radix
        return k

    @property
    def _digits_per_word(self) -> int:
        w, power = 1, self.radix
        while power * self.radix < _WORD_LIMIT:
            w, power = w + 1, power * self.radix
        return w

    def _word_layout(self) -> tuple[int, int, int]:
        """``(w, words per plaintext, leading zero digits)``: a plaintext is ``words`` base-``B^w`` digits."""
        w = self._digits_per_word
        words = -(-self.slots_per_plaintext // w)
        return w, words, words * w - self.slots_per_plaintext

    def plaintexts_for(self, length: int) -> int:
        """Number of plaintexts (ciphertexts) needed for a vector of ``length`` values."""
        if length < 0:
            raise ValueError("length must be >= 0")
        return -(-length // self.slots_per_plaintext)

    def pack(self, values: npt.ArrayLike) -> list[int]:
        """Pack a 1-D integer vector into plaintexts (slot 0 is the most significant digit of each plaintext).

        Raises:
            ValueError: not a 1-D integer array, empty, or a value outside ``[-offset, offset]``.
        """
        array = np.asarray(values)
        if array.ndim != 1 or array.size == 0:
            raise ValueError("values must be a non-empty 1-D array")
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError("values must be integers (quantize first)")
        wide = array.astype(np.int64, copy=False)
        if int(wide.min()) < -self.offset or int(wide.max()) > self.offset:
            raise ValueError(
                "a value is outside the quantization range; it could overflow its slot"
            )
        k = self.slots_per_plaintext
        w, words, lead = self._word_layout()
        rows = self.plaintexts_for(wide.size)
        slots = np.zeros(
            rows * k, dtype=np.int64
        )  # padding slots hold 0 and are dropped on unpacking
        slots[: wide.size] = wide + self.offset
        digits = np.zeros((rows, words * w), dtype=np.int64)  # leading zero digits keep the value
        digits[:, lead:] = slots.reshape(rows, k)
        weights = np.int64(self.radix) ** np.arange(w - 1, -1, -1, dtype=np.int64)
        word_values = (digits.reshape(rows, words, w) @ weights).tolist()
        base = self.radix**w
        out: list[int] = []
        for row in word_values:
            acc = 0
            for word in row:
                acc = acc * base + word
            out.append(acc)
        return out

    def unpack_sum(
        self, plaintexts: Sequence[int], *, length: int, contributors: int
    ) -> npt.NDArray[np.int64]:
        """Decode the sum of ``contributors`` packed vectors exactly (offsets removed).

        Args:
            plaintexts: the decrypted aggregate plaintexts.
            length: the vector length (padding slots are dropped).
            contributors: how many packed vectors were added (``1 <= contributors <= max_contributors``).

        Raises:
            InvalidParameters: more contributors than the slots were sized for.
            ValueError: wrong number of plaintexts, or a plaintext too large for the layout (not a valid sum).
        """
        if not 1 <= contributors <= self.max_contributors:
            raise InvalidParameters("number of contributors exceeds what the slots were sized for")
        if len(plaintexts) != self.plaintexts_for(length) or length < 1:
            raise ValueError("wrong number of plaintexts for this vector length")
        w, words, lead = self._word_layout()
        bound = self.radix**self.slots_per_plaintext
        base = self.radix**w
        divisor = mpz(base)
        flat: list[Any] = []  # the words of each plaintext, least significant first
        for plaintext in plaintexts:
            value = mpz(plaintext)
            if not 0 <= value < bound:
                raise ValueError("plaintext too large for this layout")
            for _ in range(words):
                value, word = gmpy2.f_divmod(value, divisor)
                flat.append(word)
        table = np.fromiter(map(int, flat), dtype=np.int64, count=len(flat))
        table = table.reshape(len(plaintexts), words)[:, ::-1]
        powers = np.int64(self.radix) ** np.arange(w - 1, -1, -1, dtype=np.int64)
        digits = (table[:, :, None] // powers) % np.int64(self.radix)
        slots = digits.reshape(len(plaintexts), words * w)[:, lead:].reshape(-1)[:length]
        return slots - np.int64(contributors * self.offset)

    def unpack(self, plaintexts: Sequence[int], *, length: int) -> npt.NDArray[np.int64]:
        """Inverse of :meth:`pack` for a single vector."""
        return self.unpack_sum(plaintexts, length=length, contributors=1)
