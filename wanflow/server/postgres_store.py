"""The job store in PostgreSQL (``--queue postgresql://USER@HOST/DB``): API servers and workers on any number of
machines share it. A claim is ``SELECT ... FOR UPDATE SKIP LOCKED``, so workers claiming at once never wait on each
other nor get the same job; ``LISTEN/NOTIFY`` wakes a worker when a job arrives or a client cancels its job; leases
use the database's clock. Needs the ``queue`` extra (``psycopg``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from wanflow.server.store import ADDED_COLUMNS, SCHEMA, JobStore, Tx

log = logging.getLogger(__name__)

CHANNELS = ("wanflow_jobs", "wanflow_cancel")
SCHEMA_LOCK = 7_426_001  # advisory lock id: processes starting at once create the tables one after the other
ADMISSION_LOCK = 7_426_002  # advisory lock id: jobs are added one at a time, so no two servers overfill the queue


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise ValueError(
            "a postgresql:// queue needs psycopg: pip install 'wanflow[queue]' (or 'psycopg[binary]')"
        ) from None
    return psycopg


class PostgresStore(JobStore):
    """One connection per process, guarded by a lock, opened again if the server went away between calls."""

    NOW = "extract(epoch from clock_timestamp())::double precision"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    ENGINE = "postgresql"

    def __init__(self, url: str, max_attempts: int = 2):
        self.url, self.max_attempts = url, max_attempts
        self.lock = threading.Lock()
        self.conn = connect(url)
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in SCHEMA.format(
                id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", real="DOUBLE PRECISION"
            ).split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            for name, kind in ADDED_COLUMNS.items():  # a database made by an earlier release
                self.conn.execute(
                    f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {kind.format(real='DOUBLE PRECISION')}"
                )

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _tx(self, fn: Callable[[Tx], object], write: bool = True) -> object:
        with self.lock:
            if self.conn.closed or self.conn.broken:
                log.warning("reconnecting to the job database")
                self.conn = connect(self.url)
            tx = Tx(lambda sql, args: self.conn.execute(sql.replace("?", "%s"), args), self.NOW)
            if not write:
                return fn(tx)
            with self.conn.transaction():
                return fn(tx)

    def notify(self, tx: Tx, channel: str, payload: str = "") -> None:
        tx.rows("SELECT pg_notify(?, ?) AS sent", (channel, payload))

    def admit(self, tx: Tx) -> None:
        tx.rows("SELECT pg_advisory_xact_lock(?) AS held", (ADMISSION_LOCK,))  # until this transaction ends

    def listener(self) -> Listener:
        return Listener(self.url)


def connect(url: str):
    psycopg = _psycopg()
    from psycopg.rows import dict_row

    try:
        return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ValueError(f"cannot reach the job database {redact(url)}: {str(e).strip().splitlines()[0]}") from None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{auth.split(':')[0]}{at}{host}" if at else url


class Listener:
    """A connection of its own that waits for the store's notifications (new jobs, cancels)."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None

    def _open(self) -> None:
        self.conn = connect(self.url)
        for channel in CHANNELS:
            self.conn.execute(f"LISTEN {channel}")

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """(channel, payload) of what arrived within ``timeout`` seconds (returns at the first)."""
        psycopg = _psycopg()
        try:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self._open()
            return [(n.channel, n.payload) for n in self.conn.notifies(timeout=timeout, stop_after=1)]
        except (psycopg.OperationalError, ValueError) as e:
            log.warning("lost the notification connection (%s); polling until it is back", e)
            self.close()
            time.sleep(timeout)
            return []

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
