"""Opening the state file: found through any symlink the operator gave, locked on the real file,
created private, and refused with one clear line when it is not a usable pixazo-batch state file.

The lock (an ``flock`` on ``<real path>.lock``) is taken on the resolved path, so two names for
one file cannot let two runs write it at once; the kernel drops it when its holder dies, so a
stale lock is taken over without ceremony. The database, its lock and (as SQLite gives them the
database's mode) its WAL and shared-memory files are readable by their owner only: the state
file holds webhook secrets.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from pixazo_batch.errors import StateDamagedError, StateError, UsageError
from pixazo_batch.runlock import take_lock
from pixazo_batch.safefs import PRIVATE, open_nofollow, refuse_link

SCHEMA = resources.files("pixazo_batch").joinpath("schema.sql").read_text(encoding="utf-8")


@contextmanager
def locked_connection(path: Path, *, folder: Path | None = None) -> Iterator[sqlite3.Connection]:
    """A read-write connection to the state file at ``path`` (created if missing), held under
    the run lock for the duration of the block. When ``path`` lies in ``folder`` (the output
    folder), it must not be a symlink nor lead out of it.

    Raises:
        StateLockedError: another live run holds the lock.
        StateDamagedError: the file is not a pixazo-batch state file, or is damaged.
        StateError: the file or its lock cannot be opened (permissions, read-only disk, a link).
    """
    real = path.resolve()
    if folder is not None and _planted_link(path, real, folder):
        raise StateError(f"{path} is a symbolic link; pixazo-batch does not write through one")
    lock_path = real.with_name(real.name + ".lock")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = open_nofollow(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE)
    except OSError as exc:
        raise StateError(f"cannot lock the state file {lock_path}: {exc.strerror or exc}") from None
    with os.fdopen(lock_fd, "r+", encoding="utf-8") as lock_file:
        take_lock(lock_file, lock_path)
        db = _connect(real)
        try:
            yield db
        finally:
            db.close()


def _planted_link(path: Path, real: Path, folder: Path) -> bool:
    """Whether ``path``, inside the output folder, is a link or leads out of the folder."""
    if not path.absolute().is_relative_to(folder.absolute()):
        return False  # a --state path the operator chose elsewhere may be a link on purpose
    return path.is_symlink() or not real.is_relative_to(folder.resolve())


def read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that can only read the existing state file at ``path`` (no lock taken).

    Raises:
        UsageError: there is no file at ``path``.
        StateDamagedError: it is not a pixazo-batch state file, or is damaged.
    """
    real = path.resolve()
    if not real.is_file():
        raise UsageError(f"no state file at {path}")
    try:
        try:
            db = sqlite3.connect(f"{real.as_uri()}?mode=ro", isolation_level=None, uri=True)
            _check_tables(db, real)
        except sqlite3.OperationalError:
            # On a read-only disk SQLite cannot make the WAL's shared-memory file; nothing
            # writes the file there either, so it may be read as it stands.
            db = sqlite3.connect(f"{real.as_uri()}?immutable=1", isolation_level=None, uri=True)
            _check_tables(db, real)
        _check_columns(db, real)
    except sqlite3.DatabaseError as exc:
        raise StateDamagedError(f"cannot read the state file {path}: {exc}") from None
    return db


def _connect(real: Path) -> sqlite3.Connection:
    try:
        for sidecar in ("-wal", "-shm"):
            refuse_link(real.with_name(real.name + sidecar))
        fresh = _create_private(real)
        db = sqlite3.connect(real, isolation_level=None)
    except OSError as exc:
        raise StateError(f"cannot open the state file {real}: {exc.strerror or exc}") from None
    try:
        if not fresh and real.stat().st_size:
            _check_tables(db, real)
        os.chmod(real, PRIVATE)  # older versions created it world-readable; it holds secrets
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        _add_new_columns(db)
    except (sqlite3.OperationalError, OSError) as exc:
        db.close()
        raise StateError(f"cannot open the state file {real}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StateDamagedError(f"the state file {real} is damaged: {exc}") from None
    except StateDamagedError:
        db.close()
        raise
    return db


#: columns later versions added to ``jobs``, with their types (older files gain them on open)
NEW_COLUMNS = {
    "video_seconds": "REAL",
    "video_width": "INTEGER",
    "video_height": "INTEGER",
    "mismatch": "TEXT",
    "line_digest": "BLOB",
}


def _add_new_columns(db: sqlite3.Connection) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for name, kind in NEW_COLUMNS.items():
        if name not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")


def _create_private(real: Path) -> bool:
    """Create an empty state file readable by its owner only; False when one exists."""
    try:
        os.close(open_nofollow(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
    except FileExistsError:
        return False
    return True


def _check_tables(db: sqlite3.Connection, real: Path) -> None:
    found = db.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('jobs', 'attempts')"
    ).fetchone()[0]
    if found != 2:
        raise StateDamagedError(
            f"{real} is not a pixazo-batch state file (its jobs and attempts tables are missing)"
        )


#: the added columns a reader does without (a run's shortcut: ``StateStore.keeps_lines``)
_OPTIONAL_COLUMNS = {"line_digest"}


def _check_columns(db: sqlite3.Connection, real: Path) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if not set(NEW_COLUMNS) - _OPTIONAL_COLUMNS <= present:
        raise StateDamagedError(
            f"{real} was written by an older pixazo-batch: one 'run' brings it up to date"
        )
