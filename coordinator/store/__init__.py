"""Persistence of rounds and global models behind one interface: SQLite (embedded default) or PostgreSQL."""

from coordinator.store.lock import StoreLock
from coordinator.store.sql import SCHEMA_VERSION, RoundRecord, SQLStore, Store

SQLiteStore = SQLStore
"""The former name of :class:`SQLStore` (given a file path it is the SQLite store)."""

__all__ = ["SCHEMA_VERSION", "RoundRecord", "SQLStore", "SQLiteStore", "Store", "StoreLock"]
