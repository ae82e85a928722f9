"""``silo.toml``: a silo's configuration (``secagg silo --config FILE``), its policy and the example task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, model_validator

from coordinator.config.base import (
    ConfigModel,
    Count,
    Ed25519Key,
    EntryPoint,
    FederationConfig,
    InputPath,
    NonNegative,
    OutputPath,
    Positive,
    Probability,
    Text,
    default_from,
)
from coordinator.config.errors import rule_error, value_error
from coordinator.errors import Unauthorized
from secagg import InvalidParameters, Roster, RoundConfig, check_graph_security, minimum_threshold

__all__ = ["SiloConfig", "SiloPolicy", "TaskConfig"]


class SiloPolicy(ConfigModel):
    """The ``[policy]`` table: what a silo insists on before it joins a round (the SDK compares the round config)."""

    _table = ("policy",)

    min_cohort: Annotated[int, Field(ge=2)] = 3
    """The silo refuses a round whose ``min_cohort`` is smaller."""
    max_collusion_assumed: NonNegative = 0
    """The number of silos the silo assumes may collude with the coordinator; it refuses a round whose
    collusion bound c (and hence threshold, and the silo-level DP plan's noise shares) is sized for fewer."""
    min_silo_dp_noise_multiplier: Annotated[float, Field(ge=0)] = 0.0
    """When > 0, the silo refuses a round without silo-level distributed DP or with a smaller noise multiplier
    than this (the coordinator announces the parameters; the silo adds the noise, so it decides)."""
    min_silo_dp_dropouts_tolerated: NonNegative = 0
    """The fewest dropouts the silo-level DP noise shares must tolerate: the silo derives its own plan with at
    least this many and refuses a round whose announced plan tolerates fewer (its share would be too small)."""
    max_silo_level_epsilon: Positive | None = None
    """The most silo-level epsilon (at the plan's delta) this silo's releases may compose to, counted by its
    own accountant over its own tally in ``state_dir``; it refuses a round that would exceed it, and any
    round without silo-level DP. Absent: no ceiling."""
    max_silo_level_releases: Count | None = None
    """The most rounds this silo contributes a masked update to in this federation, counted in its own tally
    in ``state_dir`` whatever the coordinator later reports about a round. Absent: no cap."""

    def check_round(self, config: RoundConfig, roster: Roster) -> None:
        """Raises ``Unauthorized`` if the coordinator's round parameters are weaker than this policy."""
        if config.federation != roster.federation or config.n != len(roster.members):
            raise Unauthorized("round parameters do not match the pinned roster")
        if config.min_cohort < self.min_cohort:
            raise Unauthorized(
                f"round min_cohort {config.min_cohort} is below this silo's {self.min_cohort}"
            )
        if config.graph_degree:
            # SecAgg+ graph: the silo recomputes the privacy bound of the announced graph itself (DESIGN 2:
            # nothing it relies on is taken from the coordinator's word when it can check it)
            try:
                check_graph_security(
                    n=config.n,
                    degree=config.graph_degree,
                    threshold=config.threshold,
                    collusion=self.max_collusion_assumed,
                )
            except InvalidParameters as exc:
                raise Unauthorized(str(exc)) from exc
            return
        needed = minimum_threshold(config.n, self.max_collusion_assumed)
        if config.threshold < needed:
            raise Unauthorized(
                f"threshold {config.threshold} is unsafe against {self.max_collusion_assumed} "
                f"colluding silos (need {needed})"
            )

    def check_silo_dp(self, noise_multiplier: float | None) -> None:
        """Raises ``Unauthorized`` if the announced silo-level noise is weaker than this policy."""
        floor = self.min_silo_dp_noise_multiplier
        if floor > 0 and (noise_multiplier is None or noise_multiplier < floor):
            announced = "none" if noise_multiplier is None else f"{noise_multiplier:g}"
            raise Unauthorized(
                f"silo-level DP noise multiplier {announced} is below this silo's minimum {floor:g}"
            )


class TaskConfig(ConfigModel):
    """The ``[task]`` table: your own task's entry point, or the parameters of the built-in example task.

    With ``entry`` the named function returns the model, the dataset and the training settings (a
    ``dp.training.Task``) and no other key may be given; without it the silo runs the built-in example (DP-SGD
    on a shard of scikit-learn's breast-cancer data) with the keys below.

    Notes:
        ``epsilon`` and ``delta`` are validated here (epsilon > 0 and finite, 0 < delta < 1); the trainer, which
        knows the shard size, also insists on delta < 1/records (Dwork & Roth 2014, section 2.3).
    """

    _table = ("task",)

    entry: EntryPoint | None = None
    """``"my_pkg.my_module:make_task"``: a function of no arguments returning a ``dp.training.Task`` (model,
    dataset, epsilon, delta, batch size, learning rate, local epochs, clipping norm) that ``secagg silo`` trains
    with DP-SGD. The coordinator's ``[model]`` must build the same architecture."""

    shard: NonNegative = Field(json_schema_extra=default_from("this silo's roster index - 1"))
    """Which shard of the dataset this silo holds."""
    num_shards: Count = Field(json_schema_extra=default_from("the roster size"))
    """How many shards the dataset is split into."""
    seed: int = 0
    """Seed of the *public* data split and model initialisation; never of DP noise or masks, which use
    cryptographic randomness."""
    local_epochs: Count = 1
    """Local passes over the shard per round."""
    lr: Positive = 0.1
    """Learning rate."""
    batch_size: Count = 32
    """Expected batch size (Poisson sampling rate = batch_size / shard size)."""
    epsilon: Positive = 3.0
    """The silo's total privacy budget epsilon over all rounds."""
    delta: Probability = 1e-5
    """The budget's delta."""

    @model_validator(mode="before")
    @classmethod
    def _entry_alone(cls, data: Any) -> Any:
        """With an entry point the task's function gives every setting: an example key would be ignored."""
        if not isinstance(data, dict) or data.get("entry") is None:
            return data
        extra = sorted(set(data) - {"entry", "shard", "num_shards"})
        if extra:
            raise rule_error(
                f"with entry, the task's function returns its training settings: remove {', '.join(extra)}"
            )
        return {"entry": data["entry"], "shard": 0, "num_shards": 1}

    @model_validator(mode="after")
    def _shard_in_range(self) -> Self:
        if self.shard >= self.num_shards:
            raise rule_error(f"must be in [0, num_shards) = [0, {self.num_shards})", key="shard")
        return self


class SiloConfig(FederationConfig):
    """A silo's configuration, ``silo.toml`` (``secagg silo --config FILE``).

    Loading also reads the roster and verifies it with the pinned consortium key; the silo must be on it.
    """

    _address = "coordinator"

    silo: Text
    """This silo's id; must be on the roster."""
    coordinator: Text | Annotated[list[Text], Field(min_length=1)]
    """The coordinator's ``host:port``, or a list of them: the replicas behind one federation (several
    ``secagg serve`` on one PostgreSQL store, one leading). The silo tries them in order, fails over to the next
    when one is unavailable (a standby binds its port only once it leads) and reconnects by itself after a
    coordinator restart."""
    signing_key: InputPath
    """This silo's Ed25519 roster private key (signs its per-round keys and privacy attestations)."""
    state_dir: OutputPath
    """Directory for the silo's local state: budget, silo-level release tally, model, round records (created if
    missing)."""
    task: TaskConfig = Field(
        json_schema_extra=default_from(
            "all defaults, with `shard` and `num_shards` from the roster"
        )
    )
    """Your task's entry point, or the example task's parameters."""
    policy: SiloPolicy = Field(default_factory=SiloPolicy)
    """What the silo insists on."""
    audit_public_key: Ed25519Key | None = None
    """The coordinator's pinned Ed25519 audit key (64 hex digits). When set, the silo checks after every round
    that the coordinator's signed ledger checkpoints only ever extend what it saw before (RFC 9162 consistency
    proofs), and keeps its own local ledger in ``state_dir``."""

    @property
    def coordinators(self) -> tuple[str, ...]:
        """Every coordinator replica's ``host:port``, in the order the silo tries them."""
        value = self.coordinator
        return (value,) if isinstance(value, str) else tuple(value)

    @classmethod
    def _from_roster(cls, doc: dict[str, Any], roster: Roster, roster_file: Path) -> dict[str, Any]:
        """The silo must be on the roster; its task's shard defaults to its place there."""
        silo, task = doc.get("silo"), doc.get("task", {})
        if not isinstance(silo, str) or not silo:  # validation names it
            return doc
        if silo not in roster.members:
            raise value_error(f"{silo!r} is not on the roster {roster_file}", key="silo")
        if not isinstance(task, dict):
            return doc
        shard = {"shard": roster.index(silo) - 1, "num_shards": len(roster.members)}
        return {**doc, "task": {**shard, **task}}
