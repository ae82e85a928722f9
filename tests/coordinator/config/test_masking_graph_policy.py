"""A silo's own check of an announced SecAgg+ graph (``SiloPolicy.check_round``): it recomputes the graph's
privacy bound against the collusion it assumes instead of taking the coordinator's parameters on trust."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.config import SiloPolicy
from coordinator.errors import Unauthorized
from secagg import secaggplus_parameters
from tests.secagg.harness import make_config, make_federation


def test_a_silo_accepts_the_computed_graph_and_refuses_a_weaker_threshold() -> None:
    fed = make_federation(100)
    p = secaggplus_parameters(n=100, dropout_rate=0.05, collusion=10)
    config = make_config(
        fed, length=4, threshold=p.threshold, graph_degree=p.degree, collusion=10, min_cohort=3
    )
    SiloPolicy(max_collusion_assumed=10).check_round(config, fed.roster)
    weak = dataclasses.replace(config, threshold=p.degree // 2 + 1)
    with pytest.raises(Unauthorized, match="fails privacy with probability up to"):
        SiloPolicy(max_collusion_assumed=10).check_round(weak, fed.roster)
    # a silo assuming more colluders than the graph was sized for refuses it too
    with pytest.raises(Unauthorized, match="against 40 colluding silos"):
        SiloPolicy(max_collusion_assumed=40).check_round(config, fed.roster)
