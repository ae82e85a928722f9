"""Persistence of rounds and global models behind one interface; SQLite is the embedded default."""

from coordinator.store.lock import StoreLock
from coordinator.store.sqlite import RoundRecord, SQLiteStore, Store

__all__ = ["RoundRecord", "SQLiteStore", "Store", "StoreLock"]
