"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary folder, trust authentication, listening on
127.0.0.1 at a free port, fsync off; stopped and removed at the end.

``python -m tests.server.postgres start FOLDER`` prints its URL (``.ci/run`` exports it as ``WANFLOW_TEST_POSTGRES``
for the whole run) and ``... stop FOLDER`` stops it. Without that variable, the ``postgres`` fixture starts its own.
The binaries are found in ``WANFLOW_PG_BIN``, on the PATH, or in Debian's ``/usr/lib/postgresql/*/bin``. PostgreSQL
refuses to run as root: as root, the server runs as the ``postgres`` user (Debian's package creates it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None."""
    given = os.environ.get("WANFLOW_PG_BIN")
    if given and (Path(given) / "initdb").is_file():
        return Path(given)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    """As root, the command runs as ``postgres`` (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--", *cmd]


def start(folder: Path) -> str:
    """A new cluster in ``folder`` (which must not hold one), started; its URL."""
    bins = bin_dir()
    if bins is None:
        raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql, or set WANFLOW_PG_BIN)")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    _run([str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    _run([str(bins / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start"])
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


def stop(folder: Path) -> None:
    bins = bin_dir()
    if bins is not None and (folder / "data" / "postmaster.pid").exists():
        cmd = [str(bins / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_owner(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def new_database(url: str, name: str) -> str:
    """An empty database ``name`` on the server of ``url``; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(where))
    elif action == "stop":
        stop(where)
    else:
        sys.exit(f"usage: python -m tests.server.postgres start|stop FOLDER (got {action!r})")
