"""Streamed uploads for every mode: one context manager that a mode's sink fills chunk by chunk.

The driver owns the checks (stage still open, deadline not passed, one upload per silo) and the life cycle
(a stream that breaks is rolled back, an upload still open at the deadline is cut off); a mode's
:class:`UploadSink` only says what a chunk, the end of the stream and a rollback mean for its aggregate.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coordinator.errors import InvalidInput, StageError
from secagg import RoundAborted, SecAggError

if TYPE_CHECKING:
    from coordinator.rounds.driver import RoundDriver, RoundState

__all__ = ["Upload", "UploadSink", "protocol"]

T = TypeVar("T")


def protocol(call: Callable[[], T]) -> T:
    """Run a protocol step; its ``SecAggError`` (other than an abort) is the caller's bad input."""
    try:
        return call()
    except RoundAborted:
        raise
    except SecAggError as exc:
        raise InvalidInput(str(exc)) from exc


class UploadSink(Protocol):
    """What a mode does with one silo's stream. Every method is called with the driver's lock held."""

    restartable: bool
    """Whether the silo may start the upload again in the same round after its stream broke off."""

    def add(self, index: int, data: Any) -> None:
        """Fold one chunk into the aggregate (``index``: the chunk's offset or number)."""

    def finish(self) -> None:
        """The last chunk has arrived; raise if the submission is incomplete."""

    def rollback(self) -> None:
        """Take back out of the aggregate everything added so far."""

    def close(self) -> None:
        """Release the sink's resources (spool files); called once, whatever happened."""


class Upload:
    """One silo's streamed submission; use as a context manager so a broken stream is rolled back.

    Each chunk is added under the driver's lock, so the driver can cut an unfinished upload off at the
    deadline while its handler thread is still blocked reading from the network.
    """

    def __init__(self, driver: RoundDriver, state: RoundState, silo: str, sink: UploadSink) -> None:
        self._driver = driver
        self._state = state
        self._stage = state.stage
        self._sink = sink
        self.silo = silo
        self._done = False
        self._cancelled = False

    def add(self, index: int, data: Any) -> None:
        """Add one chunk to the aggregate."""
        with self._driver.cond:
            self._check_open()
            protocol(lambda: self._sink.add(index, data))
        self._driver.metrics.received_bytes.inc(_payload_bytes(data))

    def finish(self) -> None:
        """The last chunk has arrived: the silo's submission is complete."""
        with self._driver.cond:
            self._check_open()
            protocol(self._sink.finish)
            del self._state.uploads[self.silo]
            self._driver.arrive(self._state, self.silo)
            self._done = True

    def cut_off(self) -> None:
        """Cancel the upload and roll it back (caller holds the driver's lock)."""
        if self._cancelled:
            return
        self._cancelled = True
        self._sink.rollback()
        if not self._sink.restartable:
            self._state.broken.add(self.silo)

    def _check_open(self) -> None:
        if self._cancelled:
            raise StageError(
                f"the {self._stage.value} stage of round {self._state.number} has closed; "
                "this upload was discarded"
            )
        self._driver.upload_open(self._state, self._stage)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._done:
                with self._driver.cond:
                    if self._driver.stage_open(self._state, self._stage):
                        self.cut_off()
                    elif not self._sink.restartable:
                        self._state.broken.add(self.silo)
                    if self._state.uploads.get(self.silo) is self:
                        del self._state.uploads[self.silo]
                    self._driver.cond.notify_all()
        finally:
            self._sink.close()


def _payload_bytes(data: Any) -> int:
    """Bytes of one chunk's payload (a numpy vector in masking mode, ciphertext bytes in Paillier mode)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    nbytes = getattr(data, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(data, list | tuple):
        return sum(_payload_bytes(item) for item in data)
    return 0
