"""The round parameters cross the wire unchanged, the SecAgg+ graph's degree included."""

from __future__ import annotations

import pytest

from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.wire.masking import config_from_pb, config_to_pb
from tests.secagg.harness import make_config, make_federation


@pytest.mark.parametrize(("threshold", "degree"), [(None, 0), (4, 6)])
def test_round_config_round_trips(threshold: int | None, degree: int) -> None:
    config = make_config(make_federation(12), length=8, threshold=threshold, graph_degree=degree)
    info = pb.RoundInfo()
    config_to_pb(config, info)
    back = config_from_pb(pb.RoundInfo.FromString(info.SerializeToString()))
    assert back == config
    assert back.params_hash() == config.params_hash()
