"""glibc allocator settings for the coordinator process: its resident memory must not grow with the silos.

Every function is a no-op where the C library is not glibc (``mallopt`` and ``malloc_trim`` are glibc
extensions, see ``mallopt(3)`` and ``malloc_trim(3)``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory", "tune_allocator"]

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENAS = 2
"""At most this many malloc arenas (``M_ARENA_MAX``).

Each gRPC handler thread would otherwise get an arena of its own, and the chunks freed in it stay mapped there,
so resident memory would grow with the number of concurrent silos.
"""

MMAP_THRESHOLD = 4 << 20
"""Allocations of at least this many bytes get their own mapping, returned to the kernel when freed.

Vectors above 4 MiB (about 1M parameters and up) get a mapping of their own and leave no hole in the heap when
freed. Stream chunks (64 KiB to 1 MiB, :func:`coordinator.common.chunk_words`), their protobuf messages and gRPC's
slices stay below it and come from the heap: a chunk freed there is reused by the next one, and
:func:`release_free_memory` returns what a stage freed when the stage closes. A threshold below the chunk size
(32 KiB, before issue 18) mapped and unmapped every chunk: page faults and ``munmap`` were a third of the
coordinator's CPU at 10 silos x 4M (``perf``), and raising the threshold to 4 MiB cut that scenario's
coordinator CPU from 2.28 to 1.25 s a round with the same peak RSS at 50 x 1M (``bench/bench_coordinator.py``;
2 MiB gave 1.58 s there and no lower peak).
Setting the threshold explicitly also turns off glibc's dynamic threshold, which otherwise rises to the size of
the largest freed mapping (up to 32 MiB), after which vector-sized temporaries would come from the heap and
stay resident (``mallopt(3)``, M_MMAP_THRESHOLD).
"""

TRIM_THRESHOLD = 128 * 1024
"""Free memory at the top of the heap beyond this is returned to the kernel (glibc's default, made static)."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # not glibc: nothing to tune
    return libc


def tune_allocator() -> bool:
    """Apply :data:`ARENAS`, :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD` to this process.

    Call it before the gRPC server starts its threads. Returns whether the settings were applied (glibc only).
    """
    libc = _libc()
    if libc is None:
        return False
    settings = (
        (_M_ARENA_MAX, ARENAS),
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    return all(libc.mallopt(ctypes.c_int(p), ctypes.c_int(v)) == 1 for p, v in settings)


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the kernel (``malloc_trim(0)``).

    The round driver calls it when a stage closes: what the stage's concurrent streams freed would otherwise
    stay resident, and the next stage's own peak would stack on top of it.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))
