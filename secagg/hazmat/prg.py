"""The mask PRG: an AES-128-CTR keystream added in place into ``uint32`` vectors (arithmetic mod 2^32).

Notes:
    - Every mask key is derived with HKDF from the full 256-bit secret (a Diffie-Hellman output or a 32-byte
      self-mask seed), a purpose label, the round's session id and the ordered pair of silo indices, so the
      same secret never yields the same keystream twice (Bonawitz et al. CCS 2017, section 4; the
      truncated-seed Mersenne Twister in some open-source SecAgg+ code gives no such guarantee).
    - AES-CTR with a fresh key and a zero initial counter block is a PRF-based stream (NIST SP 800-38A);
      the key is never reused, so the fixed IV is safe.
    - The keystream is generated in 1 MiB chunks into one reused buffer and added with numpy's wrapping
      ``uint32`` arithmetic, so memory stays flat and the cost stays within a small factor of raw AES.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.hazmat.keys import encode_fields, hkdf

__all__ = ["CHUNK_BYTES", "MaskStream", "add_mask", "mask_key"]

CHUNK_BYTES = 1 << 20
_WORDS = CHUNK_BYTES // 4
_ZERO_IV = bytes(16)
_LE_U32 = np.dtype("<u4")

U32Array = npt.NDArray[np.uint32]


def mask_key(secret: bytes, *, purpose: str, session_id: bytes, pair: tuple[int, int]) -> bytes:
    """The 128-bit AES key of one mask: HKDF(secret; purpose, session id, ordered pair)."""
    return hkdf(
        secret, purpose=purpose, info=encode_fields(session_id, pair[0], pair[1]), length=16
    )


class MaskStream:
    """A reusable keystream buffer; one instance per thread, reused across many masks."""

    __slots__ = ("_buffer", "_zeros")

    def __init__(self) -> None:
        self._zeros = bytes(CHUNK_BYTES)
        self._buffer = bytearray(CHUNK_BYTES + 15)  # update_into needs block-size slack

    def add(self, out: U32Array, key: bytes, *, subtract: bool = False) -> None:
        """Add (or subtract) the keystream of ``key`` into ``out`` in place, mod 2^32."""
        if out.dtype != np.uint32 or out.ndim != 1:
            raise TypeError("masks apply to one-dimensional uint32 vectors")
        encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
        view = memoryview(self._buffer)
        op = np.subtract if subtract else np.add
        for start in range(0, out.shape[0], _WORDS):
            words = min(_WORDS, out.shape[0] - start)
            nbytes = words * 4
            encryptor.update_into(memoryview(self._zeros)[:nbytes], view)
            stream = np.frombuffer(self._buffer, dtype=_LE_U32, count=words)
            target = out[start : start + words]
            op(target, stream, out=target)


def add_mask(out: U32Array, key: bytes, *, subtract: bool = False) -> None:
    """One-off convenience over :class:`MaskStream` (allocates a buffer; use a stream in loops)."""
    MaskStream().add(out, key, subtract=subtract)
