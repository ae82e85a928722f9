"""Privacy budgets and their enforcement: a silo's ledger and the federation's ceiling.

Notes:
    The check runs *before* a round trains: a round whose projected spend would exceed the
    budget never touches the data (Opacus only warns after the fact, or raises a bare
    ``ValueError``). Projections use the live RDP accountant, an upper bound on the tight
    one, so a round admitted here is also within budget under the reported number.

    ``delta`` must be below ``1 / records``: with delta >= 1/n a mechanism that publishes
    one random record verbatim is (0, delta)-DP (Dwork and Roth, "The Algorithmic
    Foundations of Differential Privacy", 2014, Section 2.3), so such a delta protects
    nobody. NIST SP 800-226 recommends delta far below 1/n; we enforce the hard limit and
    leave the margin to the operator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dp.accounting.mechanism import MechanismStep, validate_delta, validate_epsilon
from dp.accounting.rdp import RdpAccountant
from dp.errors import BudgetExceeded, InvalidPrivacyParameters

__all__ = ["BudgetLedger", "PrivacyBudget", "check_ceiling", "check_delta_for_records"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PrivacyBudget:
    """A total (epsilon, delta) budget for the whole federation.

    Args:
        epsilon: finite, > 0.
        delta: 0 < delta < 1 (and below 1/records where a silo's size is known).

    Raises:
        InvalidPrivacyParameters: out of range, not finite, or not a number.
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", validate_epsilon(self.epsilon))
        object.__setattr__(self, "delta", validate_delta(self.delta))

    def to_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {"delta": self.delta, "epsilon": self.epsilon}


def check_delta_for_records(delta: float, records: int) -> None:
    """Raise ``InvalidPrivacyParameters`` unless ``delta < 1 / records`` (see module Notes)."""
    delta = validate_delta(delta)
    if isinstance(records, bool) or not isinstance(records, int) or records < 1:
        raise InvalidPrivacyParameters(f"records must be an int >= 1, got {records!r}")
    if delta * records >= 1.0:
        raise InvalidPrivacyParameters(
            f"delta={delta:g} must be below 1/records = 1/{records} = {1.0 / records:.3g}"
        )


class BudgetLedger:
    """A silo's budget and the spend recorded against it.

    Args:
        budget: the silo's (epsilon, delta) for the whole federation.
        records: number of records in the silo (``budget.delta`` must be below 1/records).
        accountant: the running accountant (e.g. reloaded from disk); a new one by default.

    Raises:
        InvalidPrivacyParameters: delta is not below 1/records.
        BudgetExceeded: the reloaded history already exceeds the budget.
    """

    def __init__(
        self, *, budget: PrivacyBudget, records: int, accountant: RdpAccountant | None = None
    ) -> None:
        if not isinstance(budget, PrivacyBudget):
            raise TypeError("budget must be a PrivacyBudget")
        check_delta_for_records(budget.delta, records)
        self._budget = budget
        self._records = records
        self._accountant = accountant if accountant is not None else RdpAccountant()
        spent = self.spent()
        if spent > budget.epsilon:
            raise BudgetExceeded(
                f"the recorded history already spent epsilon={spent:.4f}, over the budget "
                f"epsilon={budget.epsilon:.4f} (delta={budget.delta:g})"
            )

    def __repr__(self) -> str:
        return f"BudgetLedger(budget={self._budget!r}, rounds={len(self._accountant.history)})"

    @property
    def budget(self) -> PrivacyBudget:
        """The budget this ledger enforces."""
        return self._budget

    @property
    def accountant(self) -> RdpAccountant:
        """The running accountant (its history is the silo's record of spend)."""
        return self._accountant

    def spent(self) -> float:
        """Epsilon spent so far at the budget's delta."""
        return self._accountant.epsilon(self._budget.delta)

    def remaining(self) -> float:
        """Epsilon left (never negative)."""
        return max(self._budget.epsilon - self.spent(), 0.0)

    def check(self, step: MechanismStep) -> float:
        """Return the projected epsilon after ``step``, or refuse it.

        Raises:
            BudgetExceeded: the projection exceeds the budget; the message gives spent,
                projected and budget.
        """
        projected = self._accountant.projected_epsilon(step, self._budget.delta)
        if projected > self._budget.epsilon:
            raise BudgetExceeded(
                f"round refused: spent epsilon={self.spent():.4f}, projected after this round "
                f"{projected:.4f} > budget epsilon={self._budget.epsilon:.4f} "
                f"(delta={self._budget.delta:g}; noise_multiplier={step.noise_multiplier:.4g}, "
                f"sample_rate={step.sample_rate:.4g}, steps={step.steps})"
            )
        return projected

    def record(self, step: MechanismStep) -> float:
        """Check and then record ``step``; returns epsilon spent after it.

        The projection and the recorded spend use the same summation, so the projected value
        *is* the new spend (no second conversion on the hot path).
        """
        projected = self.check(step)
        self._accountant.record(step)
        return projected


def check_ceiling(
    *,
    ceiling: PrivacyBudget,
    history: Iterable[MechanismStep],
    delta: float,
    next_step: MechanismStep | None = None,
) -> float:
    """The federation-level check a coordinator runs for one silo.

    Args:
        ceiling: the federation's maximum (epsilon, delta) for any silo.
        history: the silo's accepted rounds so far.
        delta: the silo's delta (must not exceed ``ceiling.delta``).
        next_step: the round about to run, if checking before it.

    Returns:
        Epsilon (recomputed with the RDP accountant) after ``next_step``, or so far.

    Raises:
        BudgetExceeded: the epsilon exceeds the ceiling, or delta exceeds its delta.
    """
    delta = validate_delta(delta)
    if delta > ceiling.delta:
        raise BudgetExceeded(
            f"silo delta={delta:g} exceeds the federation ceiling {ceiling.delta:g}"
        )
    accountant = RdpAccountant(history=history)
    spent = accountant.epsilon(delta)
    epsilon = spent if next_step is None else accountant.projected_epsilon(next_step, delta)
    if epsilon > ceiling.epsilon:
        raise BudgetExceeded(
            f"federation ceiling: spent epsilon={spent:.4f}, projected {epsilon:.4f} > ceiling "
            f"epsilon={ceiling.epsilon:.4f} (delta={delta:g})"
        )
    return epsilon
