"""Which engine holds the job store: ``--queue`` read once, at the boundary."""

from __future__ import annotations

from pathlib import Path

from wanflow.server.store import JobStore


def open_store(queue: str | Path, max_attempts: int = 2) -> JobStore:
    """The store of ``queue``: a ``postgresql://`` URL, a ``sqlite:///path`` URL, or the path of a SQLite file."""
    text = str(queue)
    if text.startswith(("postgresql://", "postgres://")):
        from wanflow.server.postgres_store import PostgresStore

        return PostgresStore(text, max_attempts=max_attempts)
    if "://" in text and not text.startswith("sqlite:///"):
        raise ValueError(f"--queue {text!r}: give a postgresql://USER@HOST/DB URL, or a sqlite:///PATH or a file path")
    from wanflow.server.sqlite_store import SqliteStore

    return SqliteStore(text.removeprefix("sqlite:///"), max_attempts=max_attempts)  # sqlite:////abs, sqlite:///rel
