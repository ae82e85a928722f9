"""Silo-level DP as the silo guards it: its own plan from facts it can check, and its own tally of releases.

Notes:
    DESIGN 2 and 6: nothing a silo relies on for its own privacy (noise sizing, budget, cohort size) is taken
    from the coordinator's word when the silo can check it against signed facts.

    - **Own plan** (:func:`derive_plan`). The silo sizes its noise share from ``n`` = its pinned, signed
      roster; the collusion bound = the largest of the plan's, the round's ``c`` (signed into every
      advertisement through the round's parameters) and its policy's ``max_collusion_assumed``; dropouts
      tolerated = the larger of the plan's and its policy's ``min_silo_dp_dropouts_tolerated``; everything
      else (mechanism, clip, noise multiplier, bits, rounds, delta, rotation) from the announcement, the
      noise multiplier no lower than its policy's floor. It refuses a round whose announced plan differs
      from that derivation instead of quietly using its own: every difference the derivation can produce is
      one that shrinks this silo's noise share (more silos, fewer colluders or dropouts to cover) or
      contradicts the roster, and a silo that used another plan than the coordinator's would fail every
      signature of the round anyway, so refusing up front names the fact before anything is sent.
    - **Binding**. The digest of the derived plan goes into the silo's round parameters
      (``secagg.RoundConfig.silo_dp_hash``, part of ``params_hash``), hence into its advertisement signature
      and the session id. A coordinator that shows different silos different plans (each acceptable on its
      own, e.g. more bits to one silo, which scales that silo's update above the others' noise) splits the
      round: the advertisements no longer verify for each other and it aborts.
    - **Survivor minimum**. Before it reveals any unmask share the silo refuses a survivor set smaller than its
      plan's ``min_contributors`` (``n - dropouts_tolerated``): with fewer the released sum holds fewer noise
      shares than the central noise needs.
    - **Tally** (:class:`SiloLevelTally`). Every masked input is counted in a file in the silo's state
      directory, written and fsynced before the input leaves, whatever the coordinator later reports about the
      round (an "aborted" round may still have been unmasked by a lying coordinator). The silo-level epsilon
      of the next release is the silo's own accountant over that tally: the RDP of its past releases plus one
      more under its own plan (:meth:`dp.distributed.DistributedDPPlan.silo_level_epsilon_after`). A round is
      refused (:class:`~coordinator.errors.PrivacyRefused`, before training) when it would exceed the policy's
      ``max_silo_level_epsilon`` or ``max_silo_level_releases``, or be a release beyond the ``rounds`` the plan
      was announced for (its epsilon is a promise for that many releases only).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from coordinator.config import SiloPolicy
from coordinator.errors import InvalidInput, PrivacyRefused, StoreError, Unauthorized
from dp.distributed import RDP_ORDERS, DistributedDPConfig, DistributedDPPlan, plan
from secagg import Roster, RoundConfig

__all__ = ["SiloLevelRelease", "SiloLevelTally", "derive_plan"]

TALLY_FORMAT: Final = "secagg-silo-level-tally/v1"


def derive_plan(
    announced: DistributedDPConfig,
    dimension: int,
    *,
    round_config: RoundConfig,
    roster: Roster,
    policy: SiloPolicy,
    planned_rounds: int,
) -> DistributedDPPlan:
    """This silo's own silo-level DP plan for a round, from facts it can check (module Notes).

    Args:
        announced: the settings the coordinator announced (``RoundInfo.silo_dp``).
        dimension: the announced model length.
        round_config: the round's parameters, already checked against the roster and ``policy``.
        roster: the pinned, signed roster.
        policy: this silo's policy.
        planned_rounds: the federation's planned rounds as announced with the round (``RoundInfo.rounds``).

    Returns:
        The plan this silo encodes with; it equals the announced one.

    Raises:
        Unauthorized: the announced plan differs from this silo's derivation (naming each difference), or
            its noise multiplier is below the policy's floor.
        InvalidInput: the plan does not fit the round's vector.

    Notes:
        DESIGN 6, "the silo derives its own noise share from checkable facts". Refusing on any difference,
        rather than using the silo's own plan, is explained in the module Notes.
    """
    derived = dataclasses.replace(
        announced,
        n_silos=len(roster.members),
        collusion_bound=max(
            announced.collusion_bound, round_config.collusion, policy.max_collusion_assumed
        ),
        dropouts_tolerated=max(announced.dropouts_tolerated, policy.min_silo_dp_dropouts_tolerated),
    )
    sources = {
        "n_silos": "the pinned roster",
        "collusion_bound": "the round's c and this silo's max_collusion_assumed",
        "dropouts_tolerated": "this silo's min_silo_dp_dropouts_tolerated",
    }
    differences = [
        f"{name} {getattr(announced, name)} (this silo derives {getattr(derived, name)} from {source})"
        for name, source in sources.items()
        if getattr(announced, name) != getattr(derived, name)
    ]
    if announced.rounds != planned_rounds:
        differences.append(
            f"rounds {announced.rounds} (the federation announces {planned_rounds} rounds)"
        )
    if differences:
        raise Unauthorized(
            "the announced silo-level DP plan is not the one this silo derives: "
            + "; ".join(differences)
        )
    policy.check_silo_dp(derived.noise_multiplier)
    own = plan(derived, dimension)
    if own.padded_dimension != round_config.vector_length:
        raise InvalidInput("the announced silo-level DP plan does not fit the round's vector")
    return own


@dataclass(frozen=True, kw_only=True)
class SiloLevelRelease:
    """One masked input this silo let out, as its tally records it.

    Attributes:
        round: the round number the coordinator gave.
        session_id: the round's session id (hex).
        plan: digest (hex) of the silo-level DP plan it was encoded with; empty without silo-level DP.
        epsilon: the silo-level epsilon after this release, at the plan's delta; ``inf`` without silo-level DP.
        delta: the delta of ``epsilon`` (0 without silo-level DP).
    """

    round: int
    session_id: str
    plan: str
    epsilon: float
    delta: float


class SiloLevelTally:
    """This silo's own count of its releases in a federation and the silo-level RDP they compose to.

    Args:
        path: the JSON file (in the silo's state directory); ``None`` keeps the tally in memory only, so it
            is lost when the process ends.
        federation: the federation the tally is for.
        silo: the silo it is for.

    Raises:
        StoreError: the file is unreadable, or a tally of another federation or silo.

    Notes:
        Module Notes, "Tally". The file is rewritten whole (temporary file, fsync, rename, fsync of the
        directory) before each masked input leaves, so a crash leaves either the old or the new tally, never
        a torn one, and a release is never missing from it. An unreadable file stops the silo: starting from
        an empty tally would hand a restarted silo a fresh budget.
    """

    def __init__(self, path: Path | None, *, federation: str, silo: str) -> None:
        self.path = path
        self.federation = federation
        self.silo = silo
        self._releases: list[SiloLevelRelease] = []
        self._rdp = np.zeros(len(RDP_ORDERS), dtype=np.float64)
        if path is not None and path.exists():
            self._load(path)

    def __repr__(self) -> str:
        return f"SiloLevelTally(silo={self.silo!r}, releases={len(self._releases)})"

    @property
    def releases(self) -> tuple[SiloLevelRelease, ...]:
        """Every release recorded so far, oldest first."""
        return tuple(self._releases)

    @property
    def epsilon(self) -> float:
        """The silo-level epsilon of the releases so far (``inf`` if one had no silo-level DP; 0 for none)."""
        return self._releases[-1].epsilon if self._releases else 0.0

    def next_epsilon(self, p: DistributedDPPlan) -> float:
        """The silo-level epsilon after one more release under ``p``, at ``p``'s delta."""
        if any(not r.plan for r in self._releases):
            return math.inf
        return p.silo_level_epsilon_after(
            spent_rdp=self._rdp.tolist(), releases=len(self._releases)
        ).epsilon

    def check(self, p: DistributedDPPlan | None, policy: SiloPolicy, *, plan_rounds: bool) -> None:
        """Refuse a next release that would go beyond ``policy``'s ceiling or cap, or ``p``'s rounds.

        Args:
            p: the plan of the next release; ``None`` for a round without silo-level DP.
            policy: this silo's policy.
            plan_rounds: also refuse a release beyond the ``rounds`` the plan is for.

        Raises:
            PrivacyRefused: one line naming the limit.
        """
        made = len(self._releases)
        cap = policy.max_silo_level_releases
        if cap is not None and made + 1 > cap:
            raise PrivacyRefused(
                f"silo-level release cap reached: {made} of this silo's {cap} releases made"
            )
        ceiling = policy.max_silo_level_epsilon
        if p is None:
            if ceiling is not None:
                raise PrivacyRefused("no silo-level DP in this round, and this silo has a ceiling")
            return
        with_dp = sum(1 for r in self._releases if r.plan)
        if plan_rounds and with_dp + 1 > p.config.rounds:
            raise PrivacyRefused(
                f"silo-level release {with_dp + 1} would exceed the {p.config.rounds} rounds "
                "the announced plan is for"
            )
        if ceiling is not None:
            eps = self.next_epsilon(p)
            if eps > ceiling:
                raise PrivacyRefused(
                    f"silo-level epsilon would reach {eps:.4g} after release {made + 1}, above this "
                    f"silo's ceiling {ceiling:g} (delta {p.config.target_delta:g})"
                )

    def record(
        self,
        *,
        round_: int,
        session_id: str,
        p: DistributedDPPlan | None,
        policy: SiloPolicy,
        plan_rounds: bool,
    ) -> SiloLevelRelease:
        """Check the release once more, then count it and persist the tally (call before the input leaves).

        Raises:
            PrivacyRefused: as :meth:`check`; nothing is recorded.
            StoreError: the tally could not be written; the input must not leave.
        """
        self.check(p, policy, plan_rounds=plan_rounds)
        if p is None:
            release = SiloLevelRelease(
                round=round_, session_id=session_id, plan="", epsilon=math.inf, delta=0.0
            )
            rdp = self._rdp
        else:
            release = SiloLevelRelease(
                round=round_,
                session_id=session_id,
                plan=p.digest().hex(),
                epsilon=self.next_epsilon(p),
                delta=p.config.target_delta,
            )
            rdp = self._rdp + np.asarray(p.rdp_per_round, dtype=np.float64)
        if self.path is not None:
            self._write(self.path, [*self._releases, release], rdp)
        self._releases.append(release)
        self._rdp = rdp
        return release

    # persistence -----------------------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc["format"] != TALLY_FORMAT or doc["orders"] != list(RDP_ORDERS):
                raise ValueError("unknown format or RDP orders")
            releases = [
                SiloLevelRelease(**(entry | {"epsilon": _epsilon_from_json(entry["epsilon"])}))
                for entry in doc["releases"]
            ]
            rdp = np.asarray(doc["rdp"], dtype=np.float64)
            if rdp.shape != (len(RDP_ORDERS),) or not np.all(np.isfinite(rdp)):
                raise ValueError("malformed RDP curve")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the silo-level tally {path} is unreadable: {exc}") from exc
        if (doc["federation"], doc["silo"]) != (self.federation, self.silo):
            raise StoreError(f"the silo-level tally {path} belongs to another federation or silo")
        self._releases, self._rdp = releases, rdp

    def _write(self, path: Path, releases: Sequence[SiloLevelRelease], rdp: Any) -> None:
        doc = {
            "format": TALLY_FORMAT,
            "federation": self.federation,
            "silo": self.silo,
            "orders": list(RDP_ORDERS),
            "rdp": [float(v) for v in rdp],
            "releases": [
                dataclasses.asdict(r) | {"epsilon": None if math.isinf(r.epsilon) else r.epsilon}
                for r in releases
            ],
        }
        text = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)
        temporary = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise StoreError(f"could not write the silo-level tally {path}: {exc}") from exc


def _epsilon_from_json(value: object) -> float:
    """The file writes an unbounded epsilon (a release without silo-level DP) as ``null``."""
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError("a release's epsilon must be a number >= 0 or null")
    return float(value)
