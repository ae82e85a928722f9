"""Long polls that need not hold a thread: the driver's condition with change listeners, and a non-waiting mode.

A silo's long poll (``GetRound``, ``GetResult``, a stage result) waits until the round state changes. On a
thread-per-call server the handler blocks on :attr:`RoundDriver.cond <coordinator.rounds.driver.RoundDriver.cond>`.
The asyncio server (:mod:`coordinator.server.aio`) instead runs the same handler in a worker thread inside
:func:`without_waiting`: a wait that would block raises :class:`WouldWait` (before the call changed anything),
the worker is released, and the call awaits the next change on the event loop (a listener registered with
:meth:`Signal.listen` wakes it) before it runs the handler again. So a waiting call holds no thread, and the
answer is still computed by the one code path the threaded server runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

__all__ = ["Signal", "WouldWait", "wait_for", "without_waiting"]


class WouldWait(Exception):
    """A long poll would wait in :func:`without_waiting` mode; nothing was changed by the call so far.

    Attributes:
        ready: the poll's condition; true once it would answer (a hint: read without the lock).
        seconds: how long the poll may wait in all (already bounded by the server).
    """

    def __init__(self, ready: Callable[[], bool], seconds: float) -> None:
        super().__init__("a long poll would wait")
        self.ready = ready
        self.seconds = seconds


_mode = threading.local()
Mode = Literal["wait", "raise", "expired"]


@contextmanager
def without_waiting(*, expired: bool = False) -> Iterator[None]:
    """In this thread, a long poll raises :class:`WouldWait` instead of waiting.

    ``expired=True``: the poll's time is up; it answers at once, as the threaded server's poll does at its
    deadline (a timeout error when the state has not changed).
    """
    previous: Mode = getattr(_mode, "value", "wait")
    _mode.value = "expired" if expired else "raise"
    try:
        yield
    finally:
        _mode.value = previous


def wait_for(cond: threading.Condition, ready: Callable[[], bool], seconds: float) -> bool:
    """``cond.wait_for(ready, seconds)``, or in :func:`without_waiting` mode: never block (caller holds ``cond``)."""
    mode: Mode = getattr(_mode, "value", "wait")
    if mode == "wait":
        return cond.wait_for(ready, seconds)
    if ready() or seconds <= 0 or mode == "expired":
        return ready()
    raise WouldWait(ready, seconds)


class Signal(threading.Condition):
    """A condition whose :meth:`notify_all` also calls listeners (an event loop's wake-up, see module doc).

    Listeners run in the notifying thread with the lock held, so they must only schedule work (for instance
    ``loop.call_soon_threadsafe``), never block or call back into the driver.
    """

    def __init__(self, lock: threading.RLock | None = None) -> None:
        super().__init__(lock if lock is not None else threading.RLock())
        self._listeners: tuple[Callable[[], None], ...] = ()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on every state change; returns the function that removes it."""
        with self:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self:
                self._listeners = tuple(f for f in self._listeners if f is not listener)

        return remove

    def notify_all(self) -> None:
        """Wake every waiting thread and tell every listener that the state changed."""
        super().notify_all()
        for listener in self._listeners:
            listener()
