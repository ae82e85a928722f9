"""Worker processes for the big-integer work of threshold decryption (gmpy2 holds the GIL: threads do not help).

Notes:
    - Processes are forked (``fork`` start method; ``spawn`` where the platform has no fork), as
      :class:`~secagg.hazmat.paillier.ObfuscatorPool` does. A forked worker runs only the module-level task
      function given here (gmpy2 arithmetic: no logging, no gRPC, no file or network I/O) and exits with the
      pool, so the locks other threads of a coordinator or silo may hold at fork time are never taken in the
      child. ``forkserver`` would isolate the workers better but re-runs the caller's main script in every
      worker, which breaks a silo script without a ``__main__`` guard.
    - Task arguments (a share's exponent among them) travel pickled over the pool's pipe or are inherited by
      the fork, never in ``argv`` or the environment (a forked child's command line is its parent's), and are
      never logged or put in an exception message.
    - Work is cut into chunks and handed out as workers free up (``ProcessPoolExecutor`` pickles a task only
      when a worker takes it), so memory stays within a few chunks of the input and output.
    - Small jobs run in the calling process: starting workers costs more than it saves below
      :data:`MIN_ITEMS_PER_WORKER` items per worker (and keeps tests on small keys fast).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["MIN_ITEMS_PER_WORKER", "default_workers", "effective_workers", "run_tasks", "split"]

MIN_ITEMS_PER_WORKER = 64
"""Below this many ciphertexts per worker a job runs in the calling process."""

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Every core: ``os.cpu_count()``."""
    return os.cpu_count() or 1


def effective_workers(workers: int | None, items: int) -> int:
    """How many processes a job of ``items`` ciphertexts gets (1 = run here).

    Raises:
        ValueError: ``workers`` below 1.
    """
    wanted = default_workers() if workers is None else workers
    if wanted < 1:
        raise ValueError("workers must be >= 1")
    return max(1, min(wanted, items // MIN_ITEMS_PER_WORKER))


def split(count: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``range(count)`` into ``parts`` nearly equal non-empty pieces."""
    parts = max(1, min(parts, count))
    bounds = [count * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_tasks(fn: Callable[[T], R], tasks: Sequence[T], workers: int) -> list[R]:
    """``[fn(task) for task in tasks]``, in order, on ``workers`` processes (here when ``workers`` is 1).

    ``fn`` must be a module-level function (it is pickled by reference).
    """
    if workers <= 1 or len(tasks) <= 1:
        return [fn(task) for task in tasks]
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_context()) as pool:
        return list(pool.map(fn, tasks))
