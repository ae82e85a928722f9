"""Backup and restore on both databases: an online backup restores to the same rounds, models and ledger;
a restore never overwrites, refuses a damaged backup, and leaves nothing behind when it refuses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from audits import CheckpointSigner, Event, EventKind, Ledger
from coordinator.common import model_hash
from coordinator.errors import StoreError
from coordinator.store import SQLStore, StoreLock
from coordinator.store.backup import backup_store, restore_store

FED = "fed-1"
ORIGIN = "secagg/federation/fed-1"


def populated(target: str) -> tuple[SQLStore, Ledger]:
    store = SQLStore(target)
    initial = np.arange(16, dtype=np.float32)
    store.init_federation(FED, settings="{}", initial_model=initial)
    ledger = Ledger(target, origin=ORIGIN)
    for round_ in range(3):
        _, digest = store.model(FED, round_)
        store.open_round(FED, round_, digest)
        store.complete_round(
            FED, round_, survivors=["a", "b", "c"], dropped=[], new_model=initial + round_ + 1
        )
        ledger.append(Event(EventKind.ROUND_CLOSED, FED, round_, {}, "2026-01-01T00:00:00Z"))
    ledger.checkpoint(CheckpointSigner.generate(key_name=ORIGIN))
    store.open_round(FED, 3, model_hash(initial + 3))  # a round open while the backup runs
    return store, ledger


def fresh_target(storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if storage.startswith("postgresql://"):
        return str(request.getfixturevalue("postgres").new_database())
    (tmp_path / "restored").mkdir(exist_ok=True)
    return str(tmp_path / "restored" / "coordinator.sqlite")


def snapshot(target: str) -> tuple[object, ...]:
    store = SQLStore(target)
    ledger = Ledger(target, origin=ORIGIN)
    try:
        rounds = store.rounds(FED)
        models = [store.model(FED, r)[0].tobytes() for r in range(4)]
        return rounds, models, ledger.size, ledger.root(), ledger.latest_checkpoint()
    finally:
        store.close()
        ledger.close()


def test_an_online_backup_restores_everything(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, ledger = populated(storage)
    out = tmp_path / "backup.bin"
    with StoreLock(storage):  # as a serving coordinator holds it: backups do not need it
        backup_store(storage, out)
    store.close()
    ledger.close()
    target = fresh_target(storage, request, tmp_path)
    restore_store(out, target)
    assert snapshot(target) == snapshot(storage)
    with pytest.raises(StoreError, match="exists"):
        backup_store(storage, out)


def test_a_restore_never_overwrites_and_refuses_while_served(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, ledger = populated(storage)
    store.close()
    ledger.close()
    out = tmp_path / "backup.bin"
    backup_store(storage, out)
    with pytest.raises(StoreError, match=r"exists|not empty"):
        restore_store(out, storage)
    target = fresh_target(storage, request, tmp_path)
    with StoreLock(target), pytest.raises(StoreError, match="another coordinator"):
        restore_store(out, target)
    restore_store(out, target)


def test_a_damaged_backup_is_refused_and_leaves_nothing(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    damaged = tmp_path / "damaged.bin"
    damaged.write_bytes(b"not a backup" * 100)
    target = fresh_target(storage, request, tmp_path)
    with pytest.raises(StoreError, match=r"failed|not a SQLite"):
        restore_store(damaged, target)
    if not target.startswith("postgresql://"):
        assert not Path(target).exists()
    with pytest.raises(StoreError, match="no backup"):
        restore_store(tmp_path / "missing.bin", target)


def test_a_backup_with_a_tampered_ledger_is_refused(tmp_path: Path) -> None:
    source = str(tmp_path / "coordinator.sqlite")
    store, ledger = populated(source)
    store.close()
    ledger.close()
    out = tmp_path / "backup.sqlite"
    backup_store(source, out)
    db = sqlite3.connect(out)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute(
        "UPDATE entries SET entry = CAST(replace(CAST(entry AS TEXT), '2026', '2027') AS BLOB)"
    )
    db.commit()
    db.close()
    target = tmp_path / "restored.sqlite"
    with pytest.raises(StoreError, match="the restored ledger does not verify"):
        restore_store(out, str(target))
    assert not target.exists()
