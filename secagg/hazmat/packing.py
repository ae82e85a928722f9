"""Slot packing: many quantized integers per Paillier plaintext in offset-binary slots, vectorized with numpy.

Notes:
    - A signed value ``x`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` is stored as ``u = x + (2^(b-1) - 1)`` in
      ``[0, 2^b - 2]`` (offset binary). A slot is ``b + ceil(log2 n)`` bits wide, so the sum of ``n`` slots is at
      most ``n (2^b - 2) < 2^(b + ceil(log2 n))``: adding ``n`` packed plaintexts never carries into the next
      slot. That is the BatchCrypt layout (Zhang et al., USENIX ATC 2020) without its sign bits, since offset
      binary keeps every slot non-negative.
    - ``slots_per_plaintext * slot_bits <= bits(N) - 1 - SAFETY_MARGIN_BITS``, so even the sum of ``n`` packed
      plaintexts stays below ``2^(bits(N) - 1) <= N``: decryption (mod ``N``) never wraps. Parameters that could
      overflow a slot or the plaintext space are refused with :class:`InvalidParameters`, and inputs outside
      the signed range are refused before packing, so overflow is impossible by construction.
    - Packing never loops over elements in Python: values become big-endian ``uint64`` bytes, are unpacked to
      bits, the top bits are cut to the slot width, rows of slots are re-packed to bytes and each row becomes one
      integer with ``int.from_bytes`` (one Python call per plaintext, ~100 values each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import InvalidParameters

__all__ = ["MAX_SLOT_BITS", "SAFETY_MARGIN_BITS", "SlotPacking"]

SAFETY_MARGIN_BITS = 1
"""Bits kept free below ``bits(N) - 1`` on top of the exact bound (defence in depth against off-by-one)."""

MAX_SLOT_BITS = 62
"""Slot sums are decoded through ``uint64`` and returned as ``int64``; 62 bits keeps both exact."""

_U64_BITS = 64


@dataclass(frozen=True, kw_only=True)
class SlotPacking:
    """Layout of quantized values in Paillier plaintexts.

    Attributes:
        value_bits: ``b``; inputs lie in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
        max_contributors: ``n``, the most plaintexts that will ever be added together.
        modulus_bits: bit length of the Paillier modulus ``N``.

    Raises:
        InvalidParameters: a slot or the plaintext space could overflow, or no slot fits.
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
        if self.slot_bits > MAX_SLOT_BITS:
            raise InvalidParameters(
                f"slot of {self.slot_bits} bits exceeds {MAX_SLOT_BITS}: sums could not be decoded exactly"
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
    def slot_bits(self) -> int:
        """``b + ceil(log2 n)``."""
        # (n - 1).bit_length() == ceil(log2 n) for n >= 1, exactly (no floating point).
        return self.value_bits + (self.max_contributors - 1).bit_length()

    @property
    def plaintext_bits(self) -> int:
        """Usable plaintext bits: ``bits(N) - 1 - SAFETY_MARGIN_BITS``."""
        return self.modulus_bits - 1 - SAFETY_MARGIN_BITS

    @property
    def slots_per_plaintext(self) -> int:
        """How many slots fit in one plaintext."""
        return max(0, self.plaintext_bits) // self.slot_bits

    def plaintexts_for(self, length: int) -> int:
        """Number of plaintexts (ciphertexts) needed for a vector of ``length`` values."""
        if length < 0:
            raise ValueError("length must be >= 0")
        return -(-length // self.slots_per_plaintext)

    def pack(self, values: npt.ArrayLike) -> list[int]:
        """Pack a 1-D integer vector into plaintexts (slot 0 is the most significant of each plaintext).

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
        rows = self.plaintexts_for(wide.size)
        shifted = np.zeros(
            rows * k, dtype=np.uint64
        )  # padding slots hold 0 and are dropped on unpacking
        shifted[: wide.size] = (wide + self.offset).astype(np.uint64)
        # Only the low ceil(slot_bits / 8) bytes of each big-endian uint64 can be non-zero: unpack just those.
        slot_bytes = -(-self.slot_bits // 8)
        low_bytes = shifted.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - slot_bytes :]
        bits = np.unpackbits(low_bytes, axis=1)[:, 8 * slot_bytes - self.slot_bits :]
        row_bits = k * self.slot_bits
        pad = (-row_bits) % 8  # left-pad each row to whole bytes (leading zeros keep the value)
        rows_of_bits = np.zeros((rows, pad + row_bits), dtype=np.uint8)
        rows_of_bits[:, pad:] = bits.reshape(rows, row_bits)
        row_bytes = np.packbits(rows_of_bits, axis=1)
        return [int.from_bytes(row.tobytes(), "big") for row in row_bytes]

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
        k = self.slots_per_plaintext
        row_bits = k * self.slot_bits
        nbytes = -(-row_bits // 8)
        try:
            raw = b"".join(int(p).to_bytes(nbytes, "big") for p in plaintexts)
        except OverflowError as exc:
            raise ValueError("plaintext too large for this layout") from exc
        if any(p < 0 or int(p) >> row_bits for p in plaintexts):
            raise ValueError("plaintext too large for this layout")
        bits = np.unpackbits(
            np.frombuffer(raw, dtype=np.uint8).reshape(len(plaintexts), nbytes), axis=1
        )
        bits = bits[:, nbytes * 8 - row_bits :].reshape(-1, self.slot_bits)
        padded = np.zeros((bits.shape[0], _U64_BITS), dtype=np.uint8)
        padded[:, _U64_BITS - self.slot_bits :] = bits
        slots = np.packbits(padded, axis=1).view(">u8").reshape(-1)[:length].astype(np.int64)
        return slots - np.int64(contributors * self.offset)

    def unpack(self, plaintexts: Sequence[int], *, length: int) -> npt.NDArray[np.int64]:
        """Inverse of :meth:`pack` for a single vector."""
        return self.unpack_sum(plaintexts, length=length, contributors=1)
