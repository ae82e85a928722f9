"""Silo-level DP plan: protobuf <-> :class:`dp.distributed.DistributedDPPlan` (the plan announced in ``RoundInfo``)."""

from __future__ import annotations

from coordinator.proto.v1 import coordinator_pb2 as pb
from dp.distributed import DistributedDPConfig, DistributedDPPlan, Mechanism, plan

__all__ = ["plan_config_from_pb", "plan_from_pb", "plan_to_pb"]


def plan_to_pb(p: DistributedDPPlan) -> pb.SiloDP:
    """The announced parameters of a plan."""
    c = p.config
    assert c.noise_multiplier is not None
    return pb.SiloDP(
        mechanism=c.mechanism,
        l2_norm_clip=c.l2_norm_clip,
        noise_multiplier=c.noise_multiplier,
        bits=c.bits,
        dropouts_tolerated=c.dropouts_tolerated,
        collusion_bound=c.collusion_bound,
        rotation=c.rotation,
        rounds=c.rounds,
        n_silos=c.n_silos,
        target_delta=c.target_delta,
        model_length=p.dimension,
    )


def plan_from_pb(message: pb.SiloDP) -> DistributedDPPlan:
    """Rebuild the plan from announced parameters (raises ``dp.errors.PrivacyError`` on invalid ones)."""
    return plan(plan_config_from_pb(message), int(message.model_length))


def plan_config_from_pb(message: pb.SiloDP) -> DistributedDPConfig:
    """The announced settings, unplanned (the model length is ``message.model_length``).

    Raises:
        ValueError: an unknown mechanism.
        dp.errors.PrivacyError: invalid settings.
    """
    mechanism: Mechanism = "ddg" if message.mechanism == "ddg" else "skellam"
    if message.mechanism != mechanism:
        raise ValueError(f"unknown distributed-DP mechanism {message.mechanism!r}")
    return DistributedDPConfig(
        mechanism=mechanism,
        l2_norm_clip=message.l2_norm_clip,
        rounds=message.rounds,
        n_silos=message.n_silos,
        noise_multiplier=message.noise_multiplier,
        target_delta=message.target_delta,
        bits=message.bits,
        dropouts_tolerated=message.dropouts_tolerated,
        collusion_bound=message.collusion_bound,
        rotation=message.rotation,
    )
