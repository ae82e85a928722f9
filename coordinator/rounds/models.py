"""The global models a federation produced, read back out of the store (``secagg model export``)."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.common import FloatVector, RoundStatus
from coordinator.errors import NotFound, StoreError
from coordinator.store import Store

__all__ = ["GlobalModel", "global_model"]


@dataclass(frozen=True)
class GlobalModel:
    """The global model round ``round`` produced (the one round ``round + 1`` starts from)."""

    round: int
    vector: FloatVector
    model_hash: bytes


def global_model(store: Store, federation: str, round_: int | None = None) -> GlobalModel:
    """The model completed round ``round_`` produced; by default that of the last completed round.

    The store checks the model against its hash, and it must be the hash the round's record names.

    Raises:
        NotFound: no such completed round (the message says which rounds there are).
    """
    records = store.rounds(federation)
    completed = [r for r in records if r.status is RoundStatus.COMPLETED]
    if round_ is None:
        if not completed:
            raise NotFound(
                f"no round of federation {federation!r} has completed yet "
                f"({len(records)} opened): there is no trained model to export"
            )
        record = completed[-1]
    else:
        found = [r for r in records if r.round == round_]
        if not found:
            raise NotFound(
                f"round {round_} of federation {federation!r} has not run "
                f"(rounds 0 to {len(records) - 1} have)"
                if records
                else f"round {round_} of federation {federation!r} has not run (no round has)"
            )
        record = found[0]
        if record.status is not RoundStatus.COMPLETED:
            done = ", ".join(str(r.round) for r in completed) or "none"
            raise NotFound(
                f"round {round_} was {record.status.value}, so it produced no model "
                f"(completed rounds: {done})"
            )
    vector, digest = store.model(federation, record.round + 1)
    if digest != record.new_model_hash:
        raise StoreError(
            f"the stored model of round {record.round} is not the one its record names"
        )
    return GlobalModel(record.round, vector, digest)
