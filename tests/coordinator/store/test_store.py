"""The coordinator's store on both databases (SQLite file, real PostgreSQL server): the same tests on each.

Rounds and models as the round driver writes them, the immutability triggers, settings checks, the schema
version at open (newer refused, unversioned migrated, nothing changed on refusal), and the store lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from audits.database import Database
from coordinator.common import RoundStatus, model_hash
from coordinator.errors import NotFound, StoreError
from coordinator.store import SCHEMA_VERSION, SQLStore, StoreLock

FED = "fed-1"
REPO = Path(__file__).resolve().parents[3]


def started(storage: str, length: int = 8) -> tuple[SQLStore, np.ndarray]:
    store = SQLStore(storage)
    initial = np.arange(length, dtype=np.float32)
    store.init_federation(FED, settings='{"k": 1}', initial_model=initial)
    return store, initial


def test_rounds_and_models_survive_a_reopen(storage: str) -> None:
    store, initial = started(storage)
    start_hash = model_hash(initial)
    store.open_round(FED, 0, start_hash)
    new = initial + 1
    digest = store.complete_round(FED, 0, survivors=["a", "b"], dropped=["c"], new_model=new)
    store.open_round(FED, 1, digest)
    store.abort_round(FED, 1, "too few silos")
    store.open_round(FED, 2, digest)
    store.close()

    again = SQLStore(storage)
    again.init_federation(FED, settings='{"k": 1}', initial_model=initial)  # a restart: no-op
    assert again.abort_open_rounds(FED, "interrupted by a restart") == [2]
    records = again.rounds(FED)
    assert [(r.round, r.status) for r in records] == [
        (0, RoundStatus.COMPLETED),
        (1, RoundStatus.ABORTED),
        (2, RoundStatus.ABORTED),
    ]
    assert records[0].survivors == ("a", "b") and records[0].dropped == ("c",)
    assert records[0].model_hash == start_hash and records[0].new_model_hash == digest
    assert records[1].reason == "too few silos" and records[1].new_model_hash == b""
    for round_ in (1, 2, 3):  # aborted rounds carry the model forward unchanged
        vec, h = again.model(FED, round_)
        assert np.array_equal(vec, new) and h == digest
    assert np.array_equal(again.model(FED, 0)[0], initial)
    assert json_settings(again) == '{"k": 1}'
    again.close()


def json_settings(store: SQLStore) -> str:
    return store.settings(FED)


def test_refusals_change_nothing(storage: str) -> None:
    store, initial = started(storage)
    with pytest.raises(StoreError, match="different settings"):
        store.init_federation(FED, settings='{"k": 2}', initial_model=initial)
    with pytest.raises(StoreError, match="not open"):
        store.complete_round(FED, 0, survivors=[], dropped=[], new_model=initial)
    store.open_round(FED, 0, model_hash(initial))
    with pytest.raises(StoreError, match="store write failed"):
        store.open_round(FED, 0, model_hash(initial))  # a round opens once
    with pytest.raises(NotFound):
        store.model(FED, 5)
    with pytest.raises(NotFound):
        store.settings("other")
    assert [(r.round, r.status) for r in store.rounds(FED)] == [(0, RoundStatus.OPEN)]
    store.close()


def test_the_database_refuses_to_rewrite_models_and_finished_rounds(storage: str) -> None:
    store, initial = started(storage)
    store.open_round(FED, 0, model_hash(initial))
    store.complete_round(FED, 0, survivors=["a"], dropped=[], new_model=initial * 2)
    store.close()
    raw = Database(storage)
    for sql in (
        "UPDATE models SET data = hash",
        "DELETE FROM models",
        "DELETE FROM rounds",
        "UPDATE rounds SET status = 'aborted'",
    ):
        with pytest.raises(raw.errors, match=r"immutable|never deleted"), raw.tx() as db:
            db.execute(sql)
    raw.close()
    again = SQLStore(storage)
    assert np.array_equal(again.model(FED, 1)[0], initial * 2)
    again.close()


def test_a_newer_schema_is_refused_and_an_unversioned_one_is_migrated(storage: str) -> None:
    store, initial = started(storage)
    store.close()
    raw = Database(storage)
    query = "SELECT version FROM schema_versions WHERE component = 'store'"
    assert raw.one(query) == (SCHEMA_VERSION,)
    with raw.tx() as db:  # as written before versions were recorded
        db.execute("DELETE FROM schema_versions WHERE component = 'store'")
    migrated = SQLStore(storage)
    assert np.array_equal(migrated.model(FED, 0)[0], initial)
    migrated.close()
    assert raw.one(query) == (SCHEMA_VERSION,)
    with raw.tx() as db:
        db.execute("UPDATE schema_versions SET version = 99 WHERE component = 'store'")
    with pytest.raises(
        StoreError, match="store schema version 99, newer than this secagg supports"
    ):
        SQLStore(storage)
    assert raw.one(query) == (99,)
    raw.close()


def test_unreachable_postgresql_is_one_line_without_the_password(postgres: object) -> None:
    from tests.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    with pytest.raises(StoreError) as caught:
        SQLStore(postgres.url("missing"))
    message = str(caught.value)
    assert "\n" not in message and postgres.password not in message
    assert message.startswith("cannot open store: cannot open postgresql://secagg:***@")
    assert message.endswith(
        'database "missing" does not exist (create it first: createdb, or CREATE DATABASE '
        "as a user allowed to)"
    )


def test_the_store_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.sqlite"
    first = StoreLock(db)
    with pytest.raises(StoreError, match=r"another coordinator \(pid \d+\) is serving the store"):
        StoreLock(db)
    first.release()
    with StoreLock(db):
        pass


def test_the_store_lock_on_postgresql_is_exclusive_and_released(
    postgres: object,
) -> None:
    from tests.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    url = postgres.new_database()
    first = StoreLock(url)
    assert first.held
    with pytest.raises(StoreError, match="another coordinator is serving the store") as caught:
        StoreLock(url)
    assert postgres.password not in str(caught.value)
    first.release()
    assert not first.held
    with StoreLock(url) as again:
        assert again.held


def test_a_killed_holder_releases_the_store_lock(storage: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from coordinator.store import StoreLock; "
            "lock = StoreLock(sys.argv[1]); print('held', flush=True); time.sleep(120)",
            storage,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match="another coordinator"):
            StoreLock(storage)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 20
        while True:  # PostgreSQL notices the closed connection at once; allow for a slow machine
            try:
                StoreLock(storage).release()
                break
            except StoreError:
                assert time.monotonic() < deadline, "the lock outlived its killed holder"
                time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()


def test_a_leader_that_lost_its_lock_is_fenced_off_and_told(postgres: object) -> None:
    """A partition: the leader's lock session dies but its process and other connections live on."""
    from audits import Event, EventKind, Ledger, LedgerError
    from tests.postgres import PostgresServer

    assert isinstance(postgres, PostgresServer)
    url = postgres.new_database()
    old = StoreLock(url)
    lost = threading.Event()
    old.watch(lost.set, interval=0.2)
    store = SQLStore(url, fence=old.fence)
    initial = np.zeros(4, np.float32)
    store.init_federation(FED, settings="{}", initial_model=initial)
    ledger = Ledger(url, origin="o", fence=old.fence)
    ledger.append(Event(EventKind.ROUND_CLOSED, FED, 0, {}, "2026-01-01T00:00:00Z"))
    admin = Database(postgres.url(url.rsplit("/", 1)[1]))
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'secagg coordinator lock' AND datname = current_database()"
    )
    assert lost.wait(10), "the watchdog did not notice the lost lock"
    new = StoreLock(url, wait=True, poll=0.1)
    assert new.epoch == (old.epoch or 0) + 1
    with pytest.raises(StoreError, match="lost the lead"):
        store.open_round(FED, 0, model_hash(initial))
    with pytest.raises(LedgerError, match="lost the lead"):
        ledger.append(Event(EventKind.ROUND_CLOSED, FED, 1, {}, "2026-01-01T00:00:00Z"))
    assert store.rounds(FED) == []  # reads still work; nothing was written
    successor = SQLStore(url, fence=new.fence)
    successor.open_round(FED, 0, model_hash(initial))
    assert [r.round for r in successor.rounds(FED)] == [0]
    for closable in (store, successor, ledger, admin):
        closable.close()
    new.release()
    old.release()


def test_a_standby_waits_for_the_lock_and_then_leads(storage: str) -> None:
    first = StoreLock(storage)
    waited = threading.Event()
    got: list[StoreLock] = []
    standby = threading.Thread(
        target=lambda: got.append(StoreLock(storage, wait=True, on_wait=waited.set, poll=0.05))
    )
    standby.start()
    assert waited.wait(10)
    assert not got  # still standing by
    first.release()
    standby.join(10)
    assert len(got) == 1 and got[0].held
    got[0].release()
