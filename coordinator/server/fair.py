"""Fair scheduling of the coordinator's work: a queue per silo served round-robin, and the worker pool on it.

Notes:
    With one FIFO queue a silo that queues k tasks delays every later caller by k tasks. Serving the silos'
    queues in turn (round-robin, the simplest fair queuing; Nagle, "On packet switches with infinite storage",
    IEEE Trans. Commun. 1987) bounds what another silo can put before a new task: at most one task per other
    silo with work queued, whatever their queues hold.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["FairExecutor", "FairQueue"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class FairQueue(Generic[K, T]):
    """Items queued per key (a silo), taken one key at a time in turn; FIFO within a key. Not thread-safe.

    A key that gets a first item joins the end of the turn order; a key whose queue empties leaves it.
    """

    def __init__(self) -> None:
        self._queues: dict[K, deque[T]] = {}
        self._turns: deque[K] = deque()

    def put(self, key: K, item: T) -> None:
        """Queue ``item`` behind ``key``'s earlier items."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(item)

    def get(self) -> tuple[K, T]:
        """The next item: the oldest of the key whose turn it is.

        Raises:
            IndexError: the queue is empty.
        """
        if not self._turns:
            raise IndexError("get from an empty FairQueue")
        key = self._turns.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        if queue:
            self._turns.append(key)
        else:
            del self._queues[key]
        return key, item

    def queued(self, key: K) -> int:
        """How many items ``key`` has queued."""
        queue = self._queues.get(key)
        return 0 if queue is None else len(queue)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __bool__(self) -> bool:
        return bool(self._turns)


class FairExecutor:
    """``workers`` threads running submitted calls, taken from a :class:`FairQueue` keyed by silo.

    It is the only place the asyncio server runs blocking work (store writes, stage processing, folding an
    upload chunk, encoding a model), so the number of threads is bounded by this pool, not by waiting calls.
    """

    def __init__(self, workers: int, *, name: str = "coordinator-worker") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._queue: FairQueue[Hashable, tuple[Future[Any], Callable[[], Any]]] = FairQueue()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn()`` in a worker once it is ``key``'s turn; its result or exception goes to the future.

        Raises:
            RuntimeError: the executor was shut down.
        """
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the coordinator is stopping: no new work is accepted")
            self._queue.put(key, (future, fn))
            self._cond.notify()
        return future

    def shutdown(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the workers (waiting up to ``timeout`` seconds for each)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                _, (future, fn) = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting call, which reports it
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn  # nothing of a finished call stays referenced by an idle worker
