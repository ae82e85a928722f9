"""Streaming aggregation: the coordinator's memory grows with the vector length, not with the number of silos.

Ten silos upload 200,000-coordinate (800 KB) masked vectors concurrently, in 8 KiB chunks. Their chunk
messages are built before tracing starts, so what ``tracemalloc`` sees during the uploads is the coordinator's
own Python-level allocations (decoded chunks, bookkeeping). Buffering the uploads would need ten vectors;
streaming into the one running sum needs well under three (measured: about 0.7 of one vector, set by the
number of concurrent chunks, independent of the vector length). Not a timing test.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from coordinator.common import model_hash
from coordinator.proto.v1 import coordinator_pb2 as pb
from tests.e2e.harness import (
    Consortium,
    ManualSilo,
    exact,
    expected_model,
    in_threads,
    integer_update,
    running_coordinator,
    settings,
)

pytestmark = pytest.mark.e2e

LENGTH = 200_000
CHUNK_WORDS = 2048


def test_running_sum_is_one_vector_whatever_the_number_of_silos(
    ten: Consortium, tmp_path: Path
) -> None:
    units = {s: integer_update(60 + i, LENGTH, bound=20) for i, s in enumerate(ten.silos)}
    config = settings(n=10, length=LENGTH, threshold=6, min_cohort=3)
    with running_coordinator(ten, tmp_path / "c.db", config) as coord:
        silos = [ManualSilo(ten, s, coord.address) for s in ten.silos]
        for silo in silos:
            silo.advertise()
        for silo in silos:
            silo.share_keys()
        uploads: list[list[pb.MaskedChunk]] = [
            list(silo.chunks(silo.mask(exact(units[silo.silo])), CHUNK_WORDS)) for silo in silos
        ]
        tracemalloc.start()
        try:
            in_threads(
                *[
                    lambda silo=silo, chunks=chunks: silo.stub.UploadMaskedInput(iter(chunks))
                    for silo, chunks in zip(silos, uploads, strict=True)
                ]
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        vector_bytes = 4 * LENGTH
        # the start model and the one running sum, whatever the number of silos
        assert coord.service.held_bytes(0) == 2 * vector_bytes
        assert peak < 3 * vector_bytes, f"peak {peak} B while streaming 10 x {vector_bytes} B"

        for silo in silos:
            silo.sign_survivors()
        for silo in silos:
            silo.unmask()
        assert silos[0].result().state == pb.ROUND_STATE_COMPLETED
        new_model = coord.model(1)

        # the finished round keeps only what late long polls read: no running sum, no start model
        assert coord.service.held_bytes(0) == 0
        # the next round's model is served from memory, byte for byte what the store holds
        data, digest = coord.service.model_bytes(1)
        assert data == new_model.astype("<f4").tobytes()
        assert digest == model_hash(new_model)
        for silo in silos:
            silo.close()
    assert np.array_equal(
        new_model, expected_model(np.zeros(LENGTH, np.float32), list(units.values()))
    )
