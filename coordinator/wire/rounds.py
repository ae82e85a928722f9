"""Mode-independent round messages: a round's outcome on the wire."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coordinator.common import RoundStatus
from coordinator.proto.v1 import coordinator_pb2 as pb

__all__ = ["outcome_to_pb"]

_STATE = {
    RoundStatus.COMPLETED: pb.ROUND_STATE_COMPLETED,
    RoundStatus.ABORTED: pb.ROUND_STATE_ABORTED,
}


class Outcome(Protocol):
    """How a round ended (``coordinator.rounds.driver.RoundOutcome``; wire and rounds stay independent)."""

    @property
    def round(self) -> int: ...
    @property
    def status(self) -> RoundStatus: ...
    @property
    def survivors(self) -> Sequence[str]: ...
    @property
    def dropped(self) -> Sequence[str]: ...
    @property
    def new_model_hash(self) -> bytes: ...
    @property
    def reason(self) -> str: ...


def outcome_to_pb(outcome: Outcome) -> pb.RoundResult:
    """How a round ended, as ``GetResult`` answers it in every mode."""
    return pb.RoundResult(
        round=outcome.round,
        state=_STATE.get(outcome.status, pb.ROUND_STATE_OPEN),
        survivors=list(outcome.survivors),
        dropped=list(outcome.dropped),
        new_model_hash=outcome.new_model_hash,
        reason=outcome.reason,
    )
