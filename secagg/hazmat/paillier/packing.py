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
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt
from gmpy2 import mpz

from secagg.errors import InvalidParameters
from secagg.hazmat.packing import SAFETY_MARGIN_BITS, SlotPacking

__all__ = ["RadixPacking"]

_WORD_LIMIT = 1 << 63


class RadixPacking(SlotPacking):
    """Layout of quantized values in Paillier plaintexts, one base-``radix`` digit per value.

    The fields, their validation (:class:`~secagg.hazmat.packing.SlotPacking`'s, whose ``slot_bits`` bounds the
    radix: ``B <= 2^slot_bits``), :attr:`offset`, :meth:`plaintexts_for` and :meth:`unpack` are the binary
    layout's; the digits and their count per plaintext are this module's.

    Raises:
        InvalidParameters: a slot sum could not be decoded exactly, or no slot fits.
    """

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

    def pack(self, values: npt.ArrayLike) -> list[int]:
        """Pack a 1-D integer vector (slot 0 is each plaintext's most significant digit); refusals as the parent's."""
        wide = np.asarray(values)
        if wide.ndim != 1 or not wide.size or not np.issubdtype(wide.dtype, np.integer):
            raise ValueError("values must be a non-empty 1-D array of integers (quantize first)")
        wide = wide.astype(np.int64, copy=False)
        if int(np.abs(wide).max()) > self.offset:
            raise ValueError(
                "a value is outside the quantization range; it could overflow its slot"
            )
        k = self.slots_per_plaintext
        w, words, lead = self._word_layout()
        rows = self.plaintexts_for(wide.size)
        slots = np.zeros(rows * k, dtype=np.int64)  # padding slots are 0, dropped on unpacking
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
        """Decode the sum of ``contributors`` packed vectors exactly; arguments and refusals as the parent's."""
        if not 1 <= contributors <= self.max_contributors:
            raise InvalidParameters("number of contributors exceeds what the slots were sized for")
        if length < 1 or len(plaintexts) != self.plaintexts_for(length):
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
