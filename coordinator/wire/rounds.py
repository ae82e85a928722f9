"""Mode-independent round messages: a round's outcome on the wire."""

from __future__ import annotations

from coordinator.common import RoundReport, RoundStatus
from coordinator.proto.v1 import coordinator_pb2 as pb

__all__ = ["outcome_to_pb"]

_STATE = {
    RoundStatus.COMPLETED: pb.ROUND_STATE_COMPLETED,
    RoundStatus.ABORTED: pb.ROUND_STATE_ABORTED,
}


def outcome_to_pb(outcome: RoundReport) -> pb.RoundResult:
    """How a round ended, as ``GetResult`` answers it in every mode."""
    return pb.RoundResult(
        round=outcome.round,
        state=_STATE.get(outcome.status, pb.ROUND_STATE_OPEN),
        survivors=list(outcome.survivors),
        dropped=list(outcome.dropped),
        new_model_hash=outcome.new_model_hash,
        reason=outcome.reason,
    )
