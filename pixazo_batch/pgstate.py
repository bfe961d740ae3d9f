"""PgStateStore: the state in PostgreSQL, shared by the workers of a fleet.

The same tables, transitions and guarantees as the SQLite file (``state.py``), on a database
several ``run`` processes share (``docs/design.md``, "A fleet of workers"). What the fleet adds:

- every worker has a row in ``workers`` and beats its heart on the database's clock;
- a job being sent, polled or downloaded is held by one worker (``jobs.held_by``); a worker
  that finds a job of its own held by another was taken for dead and stops
  (``WorkerFencedError``), so two workers never write one video; a worker the fleet did not
  reap that finds a job held by another (an uncertain job two workers settled from one
  callback) was only beaten to it;
- ``begin_submit`` runs under one fleet-wide lock: the claim (``FOR UPDATE SKIP LOCKED``), the
  fleet's ``--max-in-flight`` and ``--max-spend`` are checked in the transaction that writes
  ``submitting``;
- a worker silent past the timeout is reaped by another: its ``submitting`` jobs become
  uncertain (never sent again by themselves), its other jobs are released for the living
  (``pgworkers.py``; ``pgconn.py`` runs the store's SQL on PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import structlog

from pixazo_batch.errors import (
    FleetFullError,
    InvalidTransitionError,
    JobTakenError,
    StateWriteError,
    UsageError,
    WorkerFencedError,
)
from pixazo_batch.jobrow import COLUMNS, JobRow, row_from
from pixazo_batch.models import JobState
from pixazo_batch.pgconn import PgConnection, connect, redacted
from pixazo_batch.pgworkers import SUBMIT_LOCK, FleetIdentity, WorkerRoster

log = structlog.get_logger(__name__)

SCHEMA = resources.files("pixazo_batch").joinpath("schema_pg.sql").read_text(encoding="utf-8")
#: the version ``schema_pg.sql`` brings a database to (raise it with each change there)
SCHEMA_VERSION = 2
#: advisory lock key of schema changes
_SCHEMA_LOCK = 7_310_001
#: states in which a job is held by the worker that moved it there (an uncertain job while it
#: may wait for its callback: the router lets go of it once it rests, ``release``)
_HELD = frozenset(
    {JobState.SUBMITTING, JobState.UNCERTAIN, JobState.SUBMITTED, JobState.COMPLETED,
     JobState.ERRORED}
)  # fmt: skip
#: seconds a count of the fleet's jobs in flight is reused by ``fleet_room``
ROOM_LOOK = 0.1


class PgStateStore(WorkerRoster):
    """Durable job states in PostgreSQL, for one worker of a fleet (or for ``status``,
    ``report`` and ``resolve``, which are not workers).

    Usage: ``with PgStateStore.open_database(url, fleet=identity) as store: ...``.
    """

    def __init__(self, url: str, db: PgConnection) -> None:
        super().__init__(redacted(url), db)
        self._url = url  # with its password: never logged (``path`` is the redacted one)
        import psycopg  # noqa: PLC0415

        self.integrity_errors = (psycopg.errors.UniqueViolation,)
        self.database_errors = (psycopg.Error,)
        self._operational = (psycopg.OperationalError,)
        self.max_in_flight: int | None = None
        self._room, self._room_counted_at = True, -ROOM_LOOK
        self._joinable = False

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
            conn = connect(url)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--state {where}: cannot use the database: {detail}") from None
        store = cls(url, PgConnection(conn))
        try:
            try:
                store._migrate()
                if fleet is not None:
                    store._join(fleet)
            except psycopg.Error as exc:  # no right to create the tables, tables not ours...
                detail = str(exc).strip().splitlines()[0]
                raise UsageError(f"--state {where}: the database refused us: {detail}") from None
            yield store
        finally:
            if store.worker is not None:
                store._leave()
            store.db.close()  # the connection it holds now (``reconnect_if_lost``)

    def reconnect_if_lost(self) -> None:
        """Connect again when the database closed this store's connection (a restart, a
        session ended by an administrator), so a run it stopped can still record what it was told
        meanwhile and read its summary.

        Raises:
            StateWriteError: the database cannot be reached again.
        """
        import psycopg  # noqa: PLC0415

        db = self.db
        assert isinstance(db, PgConnection)
        if not db.conn.closed:
            return
        try:
            db.conn = connect(self._url)
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StateWriteError(
                f"cannot reach the state database {self.path} again: {detail}"
            ) from None
        log.info("state_database_reconnected", database=self.path)

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

    # --- the transitions, fleet-aware ---------------------------------------------------------

    @contextmanager
    def deciding(self, job_id: str) -> Iterator[JobRow]:
        """As on a file, the row read locked in the transaction the block's transition joins."""
        with self._transaction():
            self._joinable = True
            try:
                with super().deciding(job_id) as row:
                    yield row
            finally:
                self._joinable = False

    @contextmanager
    def _transaction(self, *, full: bool = False) -> Iterator[None]:
        if self._joinable:  # inside ``deciding``: its transaction commits this one's writes
            yield
            return
        db = self.db
        assert isinstance(db, PgConnection)
        try:
            with db.pipelined_transaction():
                yield
        except self._operational as exc:
            raise StateWriteError(f"cannot write the state database {self.path}: {exc}") from exc

    def _claim(self, job_id: str) -> JobRow:
        """The job, locked for this worker, inside the fleet-wide submit lock."""
        self.db.execute("SELECT pg_advisory_xact_lock(?)", (SUBMIT_LOCK,))
        claimed = self.db.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE id = ? AND state IN ('pending', 'errored')"  # noqa: S608
            " AND (held_by IS NULL OR held_by = ?) FOR UPDATE SKIP LOCKED",
            (job_id, self.worker),
        )
        # Sent with the claim (one round trip for both): the count that decides is never a
        # cached one.
        counted = None if self.max_in_flight is None else self._count_in_flight()
        found = claimed.fetchone()
        if found is None:
            raise JobTakenError(f"job {job_id!r} is held by another worker")
        if counted is not None and not self._room_from(counted):
            raise FleetFullError(f"the fleet has {self.max_in_flight} jobs in flight")
        return row_from(found)

    def fleet_room(self, *, fresh: bool = False) -> bool:
        """Whether the fleet has fewer than ``--max-in-flight`` jobs in flight (counted at
        most every ``ROOM_LOOK`` seconds: every submitter of a full fleet asks, and the
        count in ``begin_submit`` is the one that decides)."""
        if self.max_in_flight is None:
            return True
        if fresh or time.monotonic() - self._room_counted_at >= ROOM_LOOK:
            return self._room_from(self._count_in_flight())
        return self._room

    def _count_in_flight(self) -> Any:
        """The fleet's jobs in flight, counted (a cursor: pipelined in a transaction)."""
        return self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('submitting', 'submitted')"
        )

    def _room_from(self, counted: Any) -> bool:
        (flying,) = counted.fetchone()
        assert self.max_in_flight is not None
        self._room, self._room_counted_at = bool(flying < self.max_in_flight), time.monotonic()
        return self._room

    def _read_current(self, job_id: str) -> JobRow:
        found = self.db.execute(
            f"SELECT {COLUMNS}, held_by FROM jobs WHERE id = ? FOR UPDATE",  # noqa: S608
            (job_id,),
        ).fetchone()
        if found is None:
            return super()._read_current(job_id)  # raises: unknown job
        holder = found[-1]
        if self.worker is not None and holder not in (None, self.worker):
            if self._taken_for_dead():
                raise WorkerFencedError(
                    f"job {job_id!r} is now held by worker {holder}: the fleet took this worker "
                    "for dead; stopping"
                )
            # A job this worker did not hold, moved on by another meanwhile (both confirmed
            # the request a callback named for it): news to nobody, not a reason to stop.
            raise InvalidTransitionError(f"job {job_id!r} is held by worker {holder}")
        return row_from(found[:-1])

    def _taken_for_dead(self) -> bool:
        """Whether the fleet reaped this worker (or saw it stop)."""
        found = self.db.execute(
            "SELECT reaped OR stopped_at IS NOT NULL FROM workers WHERE id = ?", (self.worker,)
        ).fetchone()
        return found is None or bool(found[0])

    def _move(self, row: JobRow, target: JobState, **fields: Any) -> None:
        # A job that just completed is anyone's to download (``claim_download``); a worker
        # refreshing the media URL of its download keeps it.
        up_for_grabs = target is JobState.COMPLETED and row.state is not JobState.COMPLETED
        fields["held_by"] = self.worker if target in _HELD and not up_for_grabs else None
        super()._move(row, target, **fields)

    def claim_download(self, job_id: str) -> JobRow | None:
        """Take the completed job's download, unless another worker has it."""
        if self.worker is None:
            return super().claim_download(job_id)
        with self._transaction():
            claimed = self.db.execute(
                f"UPDATE jobs SET held_by = ? WHERE id = ? AND state = 'completed'"  # noqa: S608
                f" AND (held_by IS NULL OR held_by = ?) RETURNING {COLUMNS}",
                (self.worker, job_id, self.worker),
            )
        found = claimed.fetchone()  # read once committed: one round trip in all
        return None if found is None else row_from(found)

    def release(self, job_id: str) -> None:
        """Let go of a job this worker holds, for any worker to take."""
        with self._transaction():
            self.db.execute(
                "UPDATE jobs SET held_by = NULL WHERE id = ? AND held_by = ?", (job_id, self.worker)
            )

    def claim_completed(self, limit: int) -> list[JobRow]:
        """Take up to ``limit`` completed jobs nobody downloads yet, oldest first."""
        with self._transaction():
            claimed = self.db.execute(
                f"UPDATE jobs SET held_by = ? WHERE id IN (SELECT id FROM jobs"  # noqa: S608
                " WHERE state = 'completed' AND held_by IS NULL ORDER BY seq LIMIT ?"
                f" FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}",
                (self.worker, limit),
            )
        return [row_from(found) for found in claimed.fetchall()]
