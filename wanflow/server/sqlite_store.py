"""The job store in one SQLite file: the default, nothing to install. One machine: the API server's own worker, or
workers on the same machine (``wanflow worker --queue sqlite:///PATH``), which find new jobs by polling."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from wanflow.server.store import ADDED_COLUMNS, SCHEMA, JobStore, Tx


class SqliteStore(JobStore):
    """All job state in one SQLite file (WAL), one connection guarded by a lock."""

    NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # seconds since the epoch, to the millisecond
    ENGINE = "sqlite"

    def __init__(self, path: str | Path, max_attempts: int = 2):
        self.max_attempts = max_attempts
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"))
        self._migrate()

    def _migrate(self) -> None:
        have = {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind.format(real='REAL')}")
        self.db.execute("UPDATE jobs SET model = task WHERE model IS NULL")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self, fn: Callable[[Tx], object], write: bool = True) -> object:
        with self.lock:
            tx = Tx(self.db.execute, self.NOW)
            if not write:
                return fn(tx)  # one statement at a time, each consistent on its own
            self.db.execute("BEGIN IMMEDIATE")  # the write lock now: no other process claims between read and write
            try:
                result = fn(tx)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            return result
