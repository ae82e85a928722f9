"""The live RDP accountant: a running RDP vector built from cached per-(sigma, q) vectors.

Notes:
    Opacus' ``RDPAccountant.get_epsilon`` recomputes the RDP curve of every history entry
    on every call, which costs one full curve evaluation per round (and the budget check
    runs every round). RDP composes additively (Mironov, "Renyi Differential Privacy",
    CSF 2017, Proposition 1), so we keep the running sum and add ``steps * rdp(sigma, q)``
    per round, with ``rdp(sigma, q)`` computed once per distinct (sigma, q) and cached.
    The numbers equal Opacus' RDP accountant (same orders, same series, same Balle et al.
    2020 conversion) to floating-point precision; a test checks 1e-9 on random histories.

    Epsilon is validated: NaN or infinity raise ``AccountingError``. A negative value from
    the conversion is clamped to 0: an (eps, delta)-DP guarantee with eps < 0 implies the
    (0, delta) one, so the clamp only ever weakens the claim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dp.accounting._rdp import (
    CONVERSION,
    DEFAULT_ORDERS,
    conversion_offsets,
    epsilon_from_rdp,
    per_step_rdp,
)
from dp.accounting._versions import accountant_id
from dp.accounting.mechanism import MechanismStep, validate_delta, validate_epsilon
from dp.errors import AccountingError, BudgetExceeded, InvalidPrivacyParameters

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "RdpAccountant",
    "calibrate_noise_multiplier",
    "epsilon_trajectory",
    "recompute_epsilon",
]

_STATE_FORMAT = "secagg.dp.rdp-accountant/v1"

#: Calibration gives up above this noise multiplier (Opacus uses 1e6; beyond ~1e4 the model
#: learns nothing, so a budget that needs more is refused instead of silently useless).
MAX_NOISE_MULTIPLIER = 1e4


def checked_epsilon(value: float) -> float:
    """Validate an accountant's epsilon: finite, and clamped to >= 0 (see module Notes)."""
    if not math.isfinite(value):
        raise AccountingError(f"the accountant produced a non-finite epsilon ({value!r})")
    return max(value, 0.0)


def _validate_orders(orders: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(a) for a in orders)
    if not values or not all(math.isfinite(a) and a > 1.0 for a in values):
        raise InvalidPrivacyParameters(
            "RDP orders must be a non-empty sequence of finite values > 1"
        )
    return values


class RdpAccountant:
    """Running RDP of a silo's whole history of DP-SGD rounds.

    Args:
        history: rounds already spent (e.g. reloaded from disk).
        orders: RDP orders; defaults to Opacus' ``DEFAULT_ALPHAS``.

    Example:
        >>> acc = RdpAccountant()
        >>> step = MechanismStep(noise_multiplier=1.0, sample_rate=0.01, steps=10_000)
        >>> round(acc.projected_epsilon(step, delta=1e-5), 2)
        6.71
    """

    NAME = "rdp"

    def __init__(
        self, *, history: Iterable[MechanismStep] = (), orders: Sequence[float] = DEFAULT_ORDERS
    ) -> None:
        self._orders = _validate_orders(orders)
        self._cache: dict[tuple[float, float], np.ndarray] = {}
        self._history: list[MechanismStep] = []
        self._rdp = np.zeros(len(self._orders), dtype=np.float64)
        for step in history:
            self.record(step)

    def __repr__(self) -> str:
        return f"RdpAccountant(rounds={len(self._history)}, steps={self.total_steps})"

    @property
    def history(self) -> tuple[MechanismStep, ...]:
        """Every recorded round, oldest first."""
        return tuple(self._history)

    @property
    def orders(self) -> tuple[float, ...]:
        """The RDP orders (alphas) of the running vector."""
        return self._orders

    @property
    def rdp(self) -> np.ndarray:
        """A copy of the running RDP vector (one entry per order)."""
        return self._rdp.copy()

    @property
    def total_steps(self) -> int:
        """Noisy optimizer steps over all recorded rounds."""
        return sum(step.steps for step in self._history)

    def describe(self) -> dict[str, Any]:
        """Accountant name and version, conversion and orders, for reports and attestations."""
        return {
            "accountant": accountant_id(self.NAME),
            "conversion": CONVERSION,
            "orders": list(self._orders),
        }

    def _round_rdp(self, step: MechanismStep) -> np.ndarray:
        key = (step.noise_multiplier, step.sample_rate)
        vector = self._cache.get(key)
        if vector is None:
            vector = per_step_rdp(
                noise_multiplier=step.noise_multiplier,
                sample_rate=step.sample_rate,
                orders=self._orders,
            )
            self._cache[key] = vector
        return vector * step.steps

    def _projected_rdp(self, steps: Iterable[MechanismStep]) -> np.ndarray:
        # Same summation order as ``record`` so a projection equals the later real spend bit
        # for bit (the calibration relies on it: a schedule that fits is never refused).
        rdp = self._rdp
        for step in steps:
            rdp = rdp + self._round_rdp(step)
        return rdp

    def _raw_epsilon(self, rdp: np.ndarray, delta: float) -> tuple[float, float]:
        if not np.any(rdp):
            return 0.0, math.nan
        return epsilon_from_rdp(rdp=rdp, delta=delta, orders=self._orders)

    def record(self, step: MechanismStep) -> None:
        """Add one round to the history and the running RDP vector."""
        if not isinstance(step, MechanismStep):
            raise TypeError("record() takes a MechanismStep")
        self._rdp = self._rdp + self._round_rdp(step)
        self._history.append(step)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any round)."""
        return self.epsilon_and_order(delta)[0]

    def epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """Epsilon spent so far and the RDP order that attains it (NaN before any round)."""
        eps, order = self._raw_epsilon(self._rdp, validate_delta(delta))
        return checked_epsilon(eps), order

    def projected_epsilon(self, step: MechanismStep, delta: float) -> float:
        """Epsilon after ``step`` were recorded, without recording it (the pre-round check)."""
        return self.projected_epsilon_many([step], delta)

    def projected_epsilon_many(self, steps: Sequence[MechanismStep], delta: float) -> float:
        """Epsilon after all ``steps`` were recorded in order, without recording them.

        Returns ``inf`` (not an error) when the projection has no privacy at all, so a
        caller comparing it with a budget refuses the round.
        """
        eps, _ = self._raw_epsilon(self._projected_rdp(steps), validate_delta(delta))
        return math.inf if math.isinf(eps) and eps > 0 else checked_epsilon(eps)

    def to_json(self) -> str:
        """The state as JSON: format tag, orders and history (the RDP vector is re-derived).

        Notes:
            The running vector is not stored: it is recomputed from the history on load, so
            an edited state file cannot carry a smaller spend than its own history implies.
        """
        state = {
            "format": _STATE_FORMAT,
            "orders": list(self._orders),
            "history": [step.to_dict() for step in self._history],
        }
        return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> RdpAccountant:
        """Rebuild an accountant from ``to_json`` output.

        Raises:
            AccountingError: the text is not a state this version wrote.
            InvalidPrivacyParameters: a stored round is invalid.
        """
        try:
            state = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise AccountingError("accountant state is not valid JSON") from exc
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise AccountingError(f"accountant state is not in format {_STATE_FORMAT!r}")
        history = state.get("history")
        orders = state.get("orders")
        if not isinstance(history, list) or not isinstance(orders, list):
            raise AccountingError("accountant state needs 'history' and 'orders' lists")
        return cls(history=[MechanismStep.from_dict(item) for item in history], orders=orders)


def recompute_epsilon(history: Iterable[MechanismStep], delta: float) -> float:
    """Epsilon of a whole history with the RDP accountant: deterministic and fast.

    This is the number the coordinator and the auditor recompute from attested parameters.
    Per-(sigma, q) curves are cached process-wide, so re-checking a long federation costs
    one curve per distinct parameter pair.
    """
    return RdpAccountant(history=history).epsilon(delta)


#: Rounds converted per block by :func:`epsilon_trajectory`: bounds its memory (a block is
#: ``rows x orders`` doubles, about 5 MB) whatever the history length.
_TRAJECTORY_BLOCK = 4096


def epsilon_trajectory(
    history: Sequence[MechanismStep],
    deltas: Sequence[float],
    *,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> np.ndarray:
    """Cumulative epsilon after each round of a history, each at its own delta, in bulk.

    Element ``i`` is what an :class:`RdpAccountant` that recorded ``history[: i + 1]``
    reports as ``epsilon(deltas[i])``, bit for bit, but a whole history costs a few array
    operations instead of one conversion per round (the auditor recomputes every
    attestation of a federation: 60,000 conversions took 4 s one by one).

    Args:
        history: the rounds, oldest first.
        deltas: one delta per round (each validated).
        orders: RDP orders, as for :class:`RdpAccountant`.

    Returns:
        A float64 array of ``len(history)`` epsilons: clamped at 0 like
        :meth:`RdpAccountant.epsilon`, and ``inf`` where the history has no privacy at all
        (where the accountant would raise): the caller decides what that means.

    Raises:
        InvalidPrivacyParameters: a delta is invalid, or the lengths differ.
        TypeError: an item of ``history`` is not a :class:`MechanismStep`.

    Notes:
        The running sum is a cumulative sum in recording order (``np.cumsum`` adds
        sequentially, and each block starts from the previous block's last row), so every
        partial RDP vector is the accountant's running vector exactly; the conversion is the
        same Balle et al. (2020, Theorem 21) minimum over orders of ``rdp + offset(delta)``.
    """
    if len(history) != len(deltas):
        raise InvalidPrivacyParameters("epsilon_trajectory needs one delta per round")
    order_key = _validate_orders(orders)
    count = len(history)
    result = np.empty(count, dtype=np.float64)
    curves: dict[tuple[float, float], int] = {}
    curve_rows: list[np.ndarray] = []
    curve_index = np.empty(count, dtype=np.intp)
    steps = np.empty(count, dtype=np.float64)
    offset_index: dict[float, int] = {}
    offset_rows: list[np.ndarray] = []
    delta_index = np.empty(count, dtype=np.intp)
    for i, (step, delta) in enumerate(zip(history, deltas, strict=True)):
        if not isinstance(step, MechanismStep):
            raise TypeError("epsilon_trajectory() takes MechanismSteps")
        key = (step.noise_multiplier, step.sample_rate)
        if key not in curves:
            curves[key] = len(curve_rows)
            curve_rows.append(
                per_step_rdp(noise_multiplier=key[0], sample_rate=key[1], orders=order_key)
            )
        curve_index[i] = curves[key]
        steps[i] = step.steps
        delta = validate_delta(delta)
        if delta not in offset_index:
            offset_index[delta] = len(offset_rows)
            offset_rows.append(conversion_offsets(order_key, delta))
        delta_index[i] = offset_index[delta]
    if not count:
        return result
    curve_table = np.stack(curve_rows)
    offset_table = np.stack(offset_rows)
    carry = np.zeros(len(order_key), dtype=np.float64)
    for start in range(0, count, _TRAJECTORY_BLOCK):
        block = slice(start, min(start + _TRAJECTORY_BLOCK, count))
        rdp = curve_table[curve_index[block]] * steps[block, None]
        rdp[0] = carry + rdp[0]
        np.cumsum(rdp, axis=0, out=rdp)
        carry = rdp[-1].copy()
        with np.errstate(invalid="ignore"):
            eps = rdp + offset_table[delta_index[block]]
        eps[np.isnan(eps)] = np.inf  # an order without a finite bound bounds nothing
        values = eps.min(axis=1)
        values[~rdp.any(axis=1)] = 0.0  # no spend yet: the accountant reports 0
        result[block] = np.maximum(values, 0.0)
    return result


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    history: Iterable[MechanismStep] = (),
    rel_tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``rel_tol``) so that ``history`` plus ``rounds`` rounds fit.

    The search uses this module's RDP accountant with exactly the summation the live
    ledger uses, so every planned round passes the pre-round check.

    Args:
        target_epsilon: the silo's epsilon budget for the whole federation.
        delta: the silo's delta.
        sample_rate: Poisson sampling probability per step.
        steps_per_round: noisy steps per round (local epochs x steps per epoch).
        rounds: rounds still to be trained.
        history: rounds already spent.
        rel_tol: relative precision of the returned sigma.

    Returns:
        sigma such that the projected epsilon after all rounds is <= ``target_epsilon``.

    Raises:
        BudgetExceeded: the history alone exceeds the budget, or no sigma up to
            ``MAX_NOISE_MULTIPLIER`` fits.

    Notes:
        Calibrating with RDP rather than PLD is deliberate: RDP upper-bounds the tight
        accountant, so the schedule fits both the live RDP check and the reported number.
        Same doubling bracket as Opacus' ``get_noise_multiplier``, then secant probes in
        log-log space with a bisection fallback (each evaluation is a new RDP curve).
    """
    target = validate_epsilon(target_epsilon, name="target_epsilon")
    delta = validate_delta(delta)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidPrivacyParameters(f"rounds must be an int >= 1, got {rounds!r}")
    if not 0.0 < rel_tol < 1.0:
        raise InvalidPrivacyParameters("rel_tol must be in (0, 1)")
    accountant = RdpAccountant(history=history)
    spent = accountant.epsilon(delta)
    if spent > target:
        raise BudgetExceeded(f"already spent epsilon={spent:.4f} > budget {target:.4f}")

    def epsilon_at(sigma: float) -> float:
        step = MechanismStep(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps_per_round)
        return accountant.projected_epsilon_many([step] * rounds, delta)

    # Bracket the answer: eps(low) > target >= eps(high); eps decreases in sigma.
    low, high = 0.0, 1.0
    eps_low, eps_high = math.inf, epsilon_at(high)
    while eps_high > target:
        low, eps_low = high, eps_high
        high *= 2.0
        if high > MAX_NOISE_MULTIPLIER:
            raise BudgetExceeded(
                f"budget epsilon={target:.4g} (spent {spent:.4g}) cannot pay for {rounds} more "
                f"round(s) of {steps_per_round} steps at sample rate {sample_rate:.4g} with any "
                f"noise multiplier <= {MAX_NOISE_MULTIPLIER:g}"
            )
        eps_high = epsilon_at(high)
    # Shrink it: eps is close to a power law in sigma, so a secant step in log-log space
    # predicts the root well; probing just above and below the prediction usually closes
    # the bracket to rel_tol in two evaluations (plain bisection needs about ten).
    bisect = False
    while high - low > rel_tol * high:
        width = high - low
        logs = (low, high, eps_low, eps_high)
        if bisect or not all(math.isfinite(v) and v > 0 for v in logs):
            probes = [(low + high) / 2.0]
        else:
            f_low, f_high = math.log(eps_low / target), math.log(eps_high / target)
            x_low, x_high = math.log(low), math.log(high)
            root = math.exp(x_low + (x_high - x_low) * f_low / (f_low - f_high))
            probes = [root * (1 + rel_tol / 2), root * (1 - rel_tol / 2)]
        for sigma in probes:
            if low < sigma < high:
                eps = epsilon_at(sigma)
                if eps <= target:
                    high, eps_high = sigma, eps
                else:
                    low, eps_low = sigma, eps
        # Fall back to bisection whenever a round of probes did not halve the bracket.
        bisect = high - low > width / 2.0
    return high
