"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl (Debian's postgresql-15) into a
temporary folder, on a free loopback port, stopped at the end of the session.

PostgreSQL refuses to run as root; under root (CI) the server runs as the ``postgres`` user the
Debian package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{command[-1]}: {exc.stderr.strip()}") from None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its ``postgres`` database (user ``pixazo``, trusted)."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (apt install postgresql-15)")
    folder = Path(tempfile.mkdtemp(prefix="pixazo-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        folder.chmod(0o755)
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    _run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "pixazo", "-A", "trust",
          "-E", "UTF8", "--no-sync"])  # fmt: skip
    options = f"-h 127.0.0.1 -p {port} -k {folder} -F -c max_connections=200"
    _run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options,
          "-l", str(folder / "log"), "-w", "start"])  # fmt: skip
    try:
        yield f"postgresql://pixazo@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; returns its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name
