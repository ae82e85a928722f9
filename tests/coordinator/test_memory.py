"""The coordinator's memory-saving pieces: blockwise FedAvg, one chunk per upload stream, zero-copy views.

The 50-silo peak-memory figure itself is a benchmark (``bench/bench_coordinator.py``); these tests pin the
properties it relies on, and that none of them changes a result.
"""

from __future__ import annotations

import hashlib
import platform
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator._malloc import release_free_memory, tune_allocator
from coordinator.common import chunk_words, model_hash
from coordinator.errors import InvalidInput
from coordinator.proto.v1 import coordinator_pb2 as pb
from coordinator.rounds.fedavg import fedavg
from coordinator.server.base import drain_chunks, drain_upload, model_chunks, u32_view
from coordinator.store import SQLiteStore
from secagg import Quantizer


def whole_vector_fedavg(
    quantizer: Quantizer, start: np.ndarray, total: np.ndarray, count: int
) -> np.ndarray:
    """The formula fedavg replaces: decode the whole sum at once."""
    mean = quantizer.decode_sum(total, count=count) / count
    return (start.astype(np.float64) + mean).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(min_value=1, max_value=300),
    block=st.integers(min_value=1, max_value=64),
    count=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_blockwise_fedavg_is_bit_identical(length: int, block: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    quantizer = Quantizer(clip=1.0, bits=16, max_silos=8)
    start = rng.standard_normal(length).astype(np.float32)
    total = rng.integers(0, 2**32, size=length, dtype=np.uint64).astype(np.uint32)
    got = fedavg(quantizer, start, total, count, block=block)
    assert got.dtype == np.float32
    assert got.tobytes() == whole_vector_fedavg(quantizer, start, total, count).tobytes()


def test_fedavg_known_answer_across_block_edges() -> None:
    # two silos each sent +1 unit on every coordinate: the mean update is exactly 1 / scale
    quantizer = Quantizer(clip=1.0, bits=16, max_silos=4)
    length = 2 * 5 + 3  # blocks of 5 leave a ragged last block
    start = np.arange(length, dtype=np.float32)
    total = np.full(length, 2, dtype=np.uint32)
    got = fedavg(quantizer, start, total, 2, block=5)
    expected = (start.astype(np.float64) + 1.0 / quantizer.scale).astype(np.float32)
    assert got.tobytes() == expected.tobytes()
    # a negative sum (two's complement) decodes below the start model
    negative = np.full(length, 2**32 - 4, dtype=np.uint32)
    assert np.all(fedavg(quantizer, start, negative, 2, block=5) < start)


def test_fedavg_refuses_an_empty_block_and_a_count_beyond_the_quantizer() -> None:
    quantizer = Quantizer(clip=1.0, bits=16, max_silos=4)
    start, total = np.zeros(3, np.float32), np.zeros(3, np.uint32)
    with pytest.raises(ValueError, match="block"):
        fedavg(quantizer, start, total, 1, block=0)
    with pytest.raises(Exception, match="cannot decode"):
        fedavg(quantizer, start, total, 5)


@dataclass(slots=True, weakref_slot=True)
class Chunk:
    """Stands in for a MaskedChunk message (the drain reads only these fields); weak-referenceable."""

    silo: str
    round: int
    federation: str
    last: bool


def test_drain_releases_each_chunk_before_receiving_the_next() -> None:
    alive_at_receive: list[bool] = []
    refs: list[weakref.ref[Chunk]] = []
    pending = [Chunk("a", 3, "fed", last=i == 3) for i in range(4)]

    def receive() -> Iterator[Chunk]:
        while pending:
            # what a gRPC receive would allocate while the previous chunk is still referenced
            alive_at_receive.append(bool(refs) and refs[-1]() is not None)
            chunk = pending.pop(0)
            refs.append(weakref.ref(chunk))
            yield chunk
            del chunk

    added: list[bool] = []
    finished: list[bool] = []
    drain_chunks(
        receive(), "a", 3, "fed", lambda c: added.append(c.last), lambda: finished.append(True)
    )
    assert added == [False, False, False, True] and finished == [True]
    assert alive_at_receive == [False, False, False, False]


def test_drain_checks_identity_order_and_end() -> None:
    def run(chunks: list[Chunk]) -> None:
        drain_chunks(iter(chunks), "a", 3, "fed", lambda c: None, lambda: None)

    with pytest.raises(InvalidInput, match="same silo"):
        run([Chunk("a", 3, "fed", False), Chunk("b", 3, "fed", True)])
    with pytest.raises(InvalidInput, match="same silo"):
        run([Chunk("a", 4, "fed", True)])
    with pytest.raises(InvalidInput, match="after the last"):
        run([Chunk("a", 3, "fed", True), Chunk("a", 3, "fed", True)])
    with pytest.raises(InvalidInput, match="without its last"):
        run([Chunk("a", 3, "fed", False)])
    with pytest.raises(InvalidInput, match="without its last"):
        run([])
    # the first-chunk form used by the Paillier servicer takes the round and federation from the first chunk
    got: list[int] = []
    drain_upload(
        Chunk("a", 7, "other", False),
        iter([Chunk("a", 7, "other", True)]),
        "a",
        lambda c: got.append(c.round),
        lambda: got.append(-1),
    )
    assert got == [7, 7, -1]


def test_u32_view_reads_the_message_bytes_without_copying() -> None:
    data = np.array([1, 2**32 - 1, 7], dtype="<u4").tobytes()
    view = u32_view(data)
    assert view.tolist() == [1, 2**32 - 1, 7] and view.dtype == np.uint32
    base: object = view.base
    assert base is data and not view.flags.writeable  # a view of the bytes, not a copy
    with pytest.raises(InvalidInput, match="multiple of 4"):
        u32_view(b"\x00" * 5)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_allocator_settings_are_accepted_by_glibc() -> None:
    assert tune_allocator() is True
    release_free_memory()  # returns free pages; must not disturb live data
    live = np.arange(100_000, dtype=np.int64)
    release_free_memory()
    assert int(live.sum()) == 100_000 * 99_999 // 2


def test_store_hashes_and_keeps_the_model_bytes_it_was_given(tmp_path: Path) -> None:
    # hashed and stored from a view of the array (no copy); any float dtype is stored as float32 little-endian
    model = np.linspace(-1, 1, 1001)  # float64: converted once, like the old tobytes path
    expected = model.astype("<f4").tobytes()
    assert model_hash(model) == hashlib.sha256(expected).digest()
    assert model_hash(np.zeros(0, np.float32)) == hashlib.sha256(b"").digest()
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.init_federation("f", settings="{}", initial_model=model)
    store.open_round("f", 0, model_hash(model))
    new_model = np.arange(1001, dtype=np.float32)[
        ::-1
    ]  # not contiguous: copied to a contiguous view
    digest = store.complete_round("f", 0, survivors=("a",), dropped=(), new_model=new_model)
    assert digest == hashlib.sha256(new_model.astype("<f4").tobytes()).digest()
    start, start_hash = store.model("f", 0)
    assert start.tobytes() == expected and start_hash == hashlib.sha256(expected).digest()
    stored, stored_hash = store.model("f", 1)
    assert stored.tobytes() == new_model.tobytes() and stored_hash == digest
    store.close()


# -- chunk size ------------------------------------------------------------------------------------------------
def test_chunks_without_a_cohort_stay_at_64_kib_below_the_message_limit() -> None:
    assert chunk_words(4 << 20) == 1 << 14  # 64 KiB, as before the cohort-aware size
    # a small limit wins, with room for the framing
    assert chunk_words(64 * 1024) < (64 * 1024) // 4
    assert chunk_words(1) == 1


@pytest.mark.parametrize(
    ("vector", "silos", "words"),
    [
        (4_000_000, 10, 100_000),  # 10 x 4M: 400 KB chunks, a tenth of the messages of 64 KiB ones
        (1_000_000, 50, 1 << 14),  # 50 x 1M: the 64 KiB floor (the coordinator's memory)
        (100_000, 200, 1 << 14),  # many silos, small vectors: the floor
        (100_000_000, 3, 1 << 18),  # 1 MiB at most
    ],
)
def test_chunks_grow_with_the_vector_but_all_streams_hold_a_quarter_vector_at_most(
    vector: int, silos: int, words: int
) -> None:
    got = chunk_words(4 << 20, vector_words=vector, streams=silos)
    assert got == words
    # above the floor, the N streams' chunks together are at most a quarter vector
    assert got == 1 << 14 or got * silos <= vector // 4
    assert got * 4 <= (4 << 20) - 16 * 1024  # always below the message limit with its headroom
    assert chunk_words(256 * 1024, vector_words=vector, streams=silos) <= (256 * 1024) // 4


@pytest.mark.parametrize(("words", "streams"), [(10, 3), (4_000_000, 10), (1_000_000, 50), (5, 0)])
def test_download_chunks_are_sized_for_the_cohort_and_reassemble_exactly(
    words: int, streams: int
) -> None:
    model = np.random.default_rng(words).standard_normal(words).astype("<f4")
    data, digest = model.tobytes(), model_hash(model)
    wire = list(model_chunks(data, digest, 4 << 20, streams=streams))
    chunks = [pb.ModelChunk.FromString(c) for c in wire]  # what the silos parse
    step = chunk_words(4 << 20, vector_words=words, streams=streams)
    assert b"".join(c.values for c in chunks) == data
    assert [c.offset for c in chunks] == list(range(0, words, step))
    assert all(
        len(c.values) <= step * 4 and c.total == words and c.model_hash == digest for c in chunks
    )
    assert all(len(c) < 4 << 20 for c in wire)
