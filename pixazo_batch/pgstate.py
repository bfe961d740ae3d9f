"""PgStateStore: the state in PostgreSQL, shared by the workers of a fleet.

The same tables, transitions and guarantees as the SQLite file (``state.py``), on a database
several ``run`` processes share (``docs/design.md``, "A fleet of workers"). What the fleet adds:

- every worker has a row in ``workers`` and beats its heart on the database's clock;
- a job being sent, polled or downloaded is held by one worker (``jobs.held_by``); a worker
  that finds a job of its own held by another was taken for dead and stops
  (``WorkerFencedError``), so two workers never write one video;
- ``begin_submit`` runs under one fleet-wide lock: the claim (``FOR UPDATE SKIP LOCKED``), the
  fleet's ``--max-in-flight`` and ``--max-spend`` are checked in the transaction that writes
  ``submitting``;
- a worker silent past the timeout is reaped by another: its ``submitting`` jobs become
  uncertain (never sent again by themselves), its other jobs are released for the living.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from pixazo_batch.errors import (
    FleetFullError,
    JobTakenError,
    StateError,
    StateWriteError,
    UsageError,
    WorkerFencedError,
)
from pixazo_batch.jobrow import COLUMNS, JobRow, row_from
from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore

SCHEMES = ("postgresql://", "postgres://")
SCHEMA = resources.files("pixazo_batch").joinpath("schema_pg.sql").read_text(encoding="utf-8")
#: the version ``schema_pg.sql`` brings a database to (raise it with each change there)
SCHEMA_VERSION = 1
#: advisory lock keys: schema changes, and every ``begin_submit`` of the fleet
_SCHEMA_LOCK = 7_310_001
_SUBMIT_LOCK = 7_310_002
#: states in which a job is held by the worker that moved it there
_HELD = frozenset({JobState.SUBMITTING, JobState.SUBMITTED, JobState.COMPLETED, JobState.ERRORED})
_NOW = "extract(epoch from clock_timestamp())"
#: seconds a count of the fleet's jobs in flight is reused by ``fleet_room``
ROOM_LOOK = 0.1


def is_database_url(location: object) -> bool:
    """Whether a ``--state`` value names a PostgreSQL database rather than a file."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password or query (safe to print)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """The store's SQLite-flavoured SQL as PostgreSQL reads it."""
    sql = sql.replace("?", "%s").replace("group_concat(", "string_agg(")
    return re.sub(r"\browid\b", "seq", sql)


class PgConnection:
    """A psycopg connection behind the interface the store uses (``?`` placeholders, ``rowid``,
    ``group_concat``), so the SQLite store's queries run unchanged."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        """Run one statement; returns its cursor."""
        return self.conn.execute(_dialect(sql), parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object:
        """Run one statement for each row."""
        with self.conn.cursor() as cursor:
            cursor.executemany(_dialect(sql), list(rows))
        return None

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        from psycopg.pq import TransactionStatus  # noqa: PLC0415

        return bool(self.conn.info.transaction_status != TransactionStatus.IDLE)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@dataclass(frozen=True, slots=True)
class FleetIdentity:
    """What every worker sharing a database must agree on."""

    manifest: str
    base_url: str
    api_key: str
    max_in_flight: int | None = None
    worker_timeout: float = 60.0


class PgStateStore(StateStore):
    """Durable job states in PostgreSQL, for one worker of a fleet (or for ``status``,
    ``report`` and ``resolve``, which are not workers).

    Usage: ``with PgStateStore.open_database(url, fleet=identity) as store: ...``.
    """

    def __init__(self, url: str, db: PgConnection) -> None:
        super().__init__(redacted(url), db)
        import psycopg  # noqa: PLC0415

        self.integrity_errors = (psycopg.errors.UniqueViolation,)
        self.database_errors = (psycopg.Error,)
        self._operational = (psycopg.OperationalError,)
        self.max_in_flight: int | None = None
        self._room, self._room_counted_at = True, -ROOM_LOOK

    @classmethod
    @contextmanager
    def open_database(
        cls, url: str, *, fleet: FleetIdentity | None = None
    ) -> Iterator[PgStateStore]:
        """Connect (creating the tables if needed) and, with ``fleet``, join as a worker for
        the duration of the block.

        Raises:
            UsageError: the database cannot be reached or refuses us, or it holds another
                fleet's jobs (another manifest, gateway or key).
        """
        try:
            import psycopg  # noqa: PLC0415
        except ImportError:
            raise UsageError("a PostgreSQL state needs: pip install 'pixazo-batch[pg]'") from None
        where = redacted(url)
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--state {where}: cannot use the database: {detail}") from None
        store = cls(url, PgConnection(conn))
        try:
            store._migrate()
            if fleet is not None:
                store._join(fleet)
            yield store
        except psycopg.errors.InsufficientPrivilege as exc:
            raise UsageError(f"--state {where}: {exc}") from None
        finally:
            if store.worker is not None:
                store._leave()
            conn.close()

    def _migrate(self) -> None:
        """Create or bring the tables up to ``SCHEMA_VERSION``, once: a schema change takes
        locks that running workers' transactions would deadlock with, so a current database
        is only read."""
        if self._schema_version() == SCHEMA_VERSION:
            return
        db = self.db
        assert isinstance(db, PgConnection)
        with db.conn.transaction():
            db.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if self._schema_version() != SCHEMA_VERSION:
                db.conn.execute(SCHEMA)
                db.execute(
                    "INSERT INTO fleet (name, value) VALUES ('schema', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )

    def _schema_version(self) -> int:
        (exists,) = self.db.execute("SELECT to_regclass('fleet') IS NOT NULL").fetchone()
        if not exists:
            return 0
        found = self.db.execute("SELECT value FROM fleet WHERE name = 'schema'").fetchone()
        return 0 if found is None else int(found[0])

    # --- the fleet ----------------------------------------------------------------------------

    def _join(self, fleet: FleetIdentity) -> None:
        """Check this run agrees with the database's manifest and with the living workers'
        gateway and key, then add this worker."""
        worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        with self._transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(?)", (_SUBMIT_LOCK,))
            recorded = self._fleet_value("manifest", fleet.manifest)
            if recorded != fleet.manifest:
                raise UsageError(
                    f"--state {self.path}: the database holds the jobs of manifest {recorded!r}, "
                    f"not {fleet.manifest!r} (use another database)"
                )
            salt = self._fleet_value("salt", secrets.token_hex(16))
            key = hmac.new(bytes.fromhex(salt), fleet.api_key.encode(), hashlib.sha256)
            key_mark = key.hexdigest()
            for base_url, other_key in self.db.execute(
                f"SELECT base_url, key_mark FROM workers WHERE stopped_at IS NULL"  # noqa: S608
                f" AND NOT reaped AND heartbeat_at > {_NOW} - ?",
                (fleet.worker_timeout,),
            ).fetchall():
                if base_url != fleet.base_url or other_key != key_mark:
                    differs = f"gateway ({base_url})" if base_url != fleet.base_url else "API key"
                    raise UsageError(
                        f"--state {self.path}: a running worker uses another {differs}; the "
                        "workers of one fleet share the base URL and key"
                    )
            self.db.execute(
                f"INSERT INTO workers (id, host, pid, base_url, key_mark, started_at,"  # noqa: S608
                f" heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, {_NOW})",
                (worker, socket.gethostname(), os.getpid(), fleet.base_url, key_mark, time.time()),
            )
        self.max_in_flight = fleet.max_in_flight
        self.worker = worker

    def _fleet_value(self, name: str, proposed: str) -> str:
        self.db.execute(
            "INSERT INTO fleet (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, proposed)
        )
        (value,) = self.db.execute("SELECT value FROM fleet WHERE name = ?", (name,)).fetchone()
        return str(value)

    def heartbeat(self) -> None:
        """Tell the fleet this worker lives.

        Raises:
            WorkerFencedError: the fleet took this worker for dead meanwhile.
        """
        with self._transaction():
            found = self.db.execute(
                f"UPDATE workers SET heartbeat_at = {_NOW} WHERE id = ? AND NOT reaped"  # noqa: S608
                " RETURNING id",
                (self.worker,),
            ).fetchone()
        if found is None:
            raise WorkerFencedError(f"the fleet took worker {self.worker} for dead; stopping")

    def reap_and_adopt(self, timeout: float) -> list[JobRow]:
        """Reap the workers silent for ``timeout`` seconds (their ``submitting`` jobs become
        uncertain), then hold every submitted job nobody living holds and every completed one
        a dead worker held; returns those jobs, for this worker to poll and download."""
        with self._transaction(full=True):
            dead = [
                worker
                for (worker,) in self.db.execute(
                    f"UPDATE workers SET reaped = TRUE WHERE stopped_at IS NULL AND NOT reaped"  # noqa: S608
                    f" AND heartbeat_at < {_NOW} - ? AND id <> ? RETURNING id",
                    (timeout, self.worker),
                ).fetchall()
            ]
            for worker in dead:
                self._reap(worker)
            # Completed jobs nobody holds are claimed by idle downloaders (``claim_completed``).
            rows = self.db.execute(
                f"UPDATE jobs SET held_by = ? WHERE state IN ('submitted', 'completed')"  # noqa: S608
                " AND (held_by IN (SELECT id FROM workers WHERE reaped OR stopped_at IS NOT NULL)"
                "  OR (held_by IS NULL AND state = 'submitted'))"
                f" RETURNING {COLUMNS}",
                (self.worker,),
            ).fetchall()
        return [row_from(found) for found in rows]

    def _reap(self, worker: str) -> None:
        reason = f"worker {worker} went silent while this job's POST may have been on the wire"
        sending = self.db.execute(
            "SELECT id, attempts FROM jobs WHERE held_by = ? AND state = 'submitting'", (worker,)
        ).fetchall()
        for job_id, attempt in sending:
            self.db.execute(
                "UPDATE jobs SET state = 'uncertain', error = ?, held_by = NULL, updated_at = ?"
                " WHERE id = ?",
                (reason, time.time(), job_id),
            )
            self.db.execute(
                "UPDATE attempts SET outcome = 'uncertain', ended_at = ?"
                " WHERE job_id = ? AND n = ?",
                (time.time(), job_id, attempt),
            )
        self.db.execute(
            "UPDATE jobs SET held_by = NULL WHERE held_by = ? AND state = 'errored'", (worker,)
        )

    def silent_holders(self, silent_for: float) -> int:
        """How many other workers hold jobs and have not beaten their heart for ``silent_for``
        seconds (they may be dead: their jobs wait for the timeout)."""
        (count,) = self.db.execute(
            f"SELECT COUNT(*) FROM workers w WHERE w.stopped_at IS NULL AND NOT w.reaped"  # noqa: S608
            f" AND w.id <> ? AND w.heartbeat_at < {_NOW} - ?"
            " AND EXISTS (SELECT 1 FROM jobs j WHERE j.held_by = w.id)",
            (self.worker, silent_for),
        ).fetchone()
        return int(count)

    def others_have_work(self) -> bool:
        """Whether living workers hold jobs still rendering, or a video waits for anyone to
        download it."""
        (found,) = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs j JOIN workers w ON w.id = j.held_by"
            "  WHERE j.state IN ('submitting', 'submitted') AND w.id <> ?"
            "  AND w.stopped_at IS NULL AND NOT w.reaped)"
            " OR EXISTS (SELECT 1 FROM jobs WHERE state = 'completed' AND held_by IS NULL)",
            (self.worker,),
        ).fetchone()
        return bool(found)

    def live_workers(self) -> list[dict[str, Any]]:
        """Every worker neither stopped nor reaped: host, last heartbeat, jobs in flight."""
        rows = self.db.execute(
            f"SELECT w.id, w.host, w.pid, w.heartbeat_at, {_NOW} - w.heartbeat_at,"  # noqa: S608
            " (SELECT COUNT(*) FROM jobs j WHERE j.held_by = w.id)"
            " FROM workers w WHERE w.stopped_at IS NULL AND NOT w.reaped ORDER BY w.started_at"
        ).fetchall()
        return [
            {
                "worker": worker,
                "host": host,
                "pid": int(pid),
                "heartbeat_at": float(beat),
                "silent_s": round(float(silent), 1),
                "in_flight": int(held),
            }
            for worker, host, pid, beat, silent, held in rows
        ]

    def others_working(self) -> bool:
        """Whether another worker lives (it carries on with what is left)."""
        return any(worker["worker"] != self.worker for worker in self.live_workers())

    def _leave(self) -> None:
        """Stop as a worker: what this worker held is released for the others at once."""
        try:
            with self._transaction():
                self.db.execute(
                    "UPDATE jobs SET held_by = NULL WHERE held_by = ?"
                    " AND state IN ('submitted', 'completed', 'errored')",
                    (self.worker,),
                )
                self.db.execute(
                    f"UPDATE workers SET stopped_at = {_NOW} WHERE id = ?",  # noqa: S608
                    (self.worker,),
                )
        except StateError:  # the others reap this worker after the timeout instead
            pass

    # --- the transitions, fleet-aware ---------------------------------------------------------

    @contextmanager
    def _transaction(self, *, full: bool = False) -> Iterator[None]:
        db = self.db
        assert isinstance(db, PgConnection)
        try:
            with db.conn.transaction():
                yield
        except self._operational as exc:
            raise StateWriteError(f"cannot write the state database {self.path}: {exc}") from exc

    def _claim(self, job_id: str) -> JobRow:
        """The job, locked for this worker, inside the fleet-wide submit lock."""
        self.db.execute("SELECT pg_advisory_xact_lock(?)", (_SUBMIT_LOCK,))
        found = self.db.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE id = ? AND state IN ('pending', 'errored')"  # noqa: S608
            " AND (held_by IS NULL OR held_by = ?) FOR UPDATE SKIP LOCKED",
            (job_id, self.worker),
        ).fetchone()
        if found is None:
            raise JobTakenError(f"job {job_id!r} is held by another worker")
        self._room_counted_at = -ROOM_LOOK  # the count that decides is never a cached one
        if not self.fleet_room():
            raise FleetFullError(f"the fleet has {self.max_in_flight} jobs in flight")
        return row_from(found)

    def fleet_room(self) -> bool:
        """Whether the fleet has fewer than ``--max-in-flight`` jobs in flight (counted at
        most every ``ROOM_LOOK`` seconds: every submitter of a full fleet asks, and the
        count in ``begin_submit`` is the one that decides)."""
        if self.max_in_flight is None:
            return True
        now = time.monotonic()
        if now - self._room_counted_at >= ROOM_LOOK:
            (flying,) = self.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('submitting', 'submitted')"
            ).fetchone()
            self._room, self._room_counted_at = bool(flying < self.max_in_flight), now
        return self._room

    def _current(self, job_id: str) -> JobRow:
        found = self.db.execute(
            f"SELECT {COLUMNS}, held_by FROM jobs WHERE id = ? FOR UPDATE",  # noqa: S608
            (job_id,),
        ).fetchone()
        if found is None:
            return super()._current(job_id)  # raises: unknown job
        holder = found[-1]
        if self.worker is not None and holder not in (None, self.worker):
            raise WorkerFencedError(
                f"job {job_id!r} is now held by worker {holder}: the fleet took this worker "
                "for dead; stopping"
            )
        return row_from(found[:-1])

    def _move(self, row: JobRow, target: JobState, **fields: Any) -> None:
        # A job that just completed is anyone's to download (``claim_download``); a worker
        # refreshing the media URL of its download keeps it.
        up_for_grabs = target is JobState.COMPLETED and row.state is not JobState.COMPLETED
        fields["held_by"] = self.worker if target in _HELD and not up_for_grabs else None
        super()._move(row, target, **fields)

    def claim_download(self, job_id: str) -> bool:
        """Take the completed job's download, unless another worker has it."""
        if self.worker is None:
            return True
        with self._transaction():
            found = self.db.execute(
                "UPDATE jobs SET held_by = ? WHERE id = ? AND state = 'completed'"
                " AND (held_by IS NULL OR held_by = ?) RETURNING id",
                (self.worker, job_id, self.worker),
            ).fetchone()
        return found is not None

    def release(self, job_id: str) -> None:
        """Let go of a job this worker holds, for any worker to take."""
        with self._transaction():
            self.db.execute(
                "UPDATE jobs SET held_by = NULL WHERE id = ? AND held_by = ?", (job_id, self.worker)
            )

    def claim_completed(self, limit: int) -> list[JobRow]:
        """Take up to ``limit`` completed jobs nobody downloads yet, oldest first."""
        with self._transaction():
            rows = self.db.execute(
                f"UPDATE jobs SET held_by = ? WHERE id IN (SELECT id FROM jobs"  # noqa: S608
                " WHERE state = 'completed' AND held_by IS NULL ORDER BY seq LIMIT ?"
                f" FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}",
                (self.worker, limit),
            ).fetchall()
        return [row_from(found) for found in rows]
