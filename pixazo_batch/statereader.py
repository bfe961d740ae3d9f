"""StateReader: the queries over the state file that change nothing.

``status``, ``report`` and the run's own summaries read through these; ``StateStore`` adds the
writes. Every listing streams in batches, so a state file of any size is read in constant memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from pixazo_batch.jobrow import COLUMNS as _COLUMNS
from pixazo_batch.jobrow import JobRow, row_from
from pixazo_batch.models import JobState

_STATES = {state.value: state for state in JobState}
#: attempt outcomes that may have cost money (in flight, unknown, or known charged)
CHARGEABLE = ("submitting", "accepted", "uncertain", "failed", "completed")


class Cursor(Protocol):
    """What a query returns (a ``sqlite3.Cursor`` or a psycopg one)."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the state store uses, with ``?`` placeholders (a
    ``sqlite3.Connection``, or ``pgstate.PgConnection`` in front of PostgreSQL)."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object: ...
    @property
    def in_transaction(self) -> bool: ...
    def close(self) -> None: ...


class StateReader:
    """Read-only queries over an open state file (or state database)."""

    db: Connection
    #: this process's name among the workers sharing a state database (None: the only one)
    worker: str | None = None

    def get(self, job_id: str) -> JobRow | None:
        """The job's row, or None."""
        found = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
        return None if found is None else row_from(found)

    def get_many(self, job_ids: list[str]) -> dict[str, JobRow]:
        """The rows of those of ``job_ids`` the state holds, by id (one query; a few hundred
        ids at most)."""
        if not job_ids:
            return {}
        marks = ", ".join("?" * len(job_ids))
        query = f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({marks})"  # noqa: S608
        return {row.id: row for row in map(row_from, self.db.execute(query, job_ids))}

    def request_ids(self, job_id: str) -> list[str]:
        """The request_id of every attempt of the job the gateway answered, oldest first."""
        rows = self.db.execute(
            "SELECT request_id FROM attempts WHERE job_id = ? AND request_id IS NOT NULL"
            " ORDER BY n",
            (job_id,),
        ).fetchall()
        return [request_id for (request_id,) in rows]

    def iter_jobs(
        self, *states: JobState, batch: int = 1000, held: bool = False
    ) -> Iterator[JobRow]:
        """Jobs in ``states`` (all when none given), in insertion order, in constant memory;
        with ``held``, only those this worker holds (every job, when there is one worker)."""
        last = 0
        where = ""
        params: list[Any] = []
        if states:
            where = f" AND state IN ({', '.join('?' * len(states))})"
            params = [s.value for s in states]
        if held and self.worker is not None:
            where += " AND held_by = ?"
            params.append(self.worker)
        query = f"SELECT rowid, {_COLUMNS} FROM jobs WHERE rowid > ?{where} ORDER BY rowid LIMIT ?"  # noqa: S608
        while True:
            rows = self.db.execute(query, [last, *params, batch]).fetchall()
            for found in rows:
                yield row_from(found[1:])
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def iter_mismatched(self) -> Iterator[JobRow]:
        """Downloaded jobs whose video differs from the request."""
        query = f"SELECT {_COLUMNS} FROM jobs WHERE mismatch IS NOT NULL ORDER BY rowid"  # noqa: S608
        for found in self.db.execute(query):
            yield row_from(found)

    def iter_ledger(self, batch: int = 1000) -> Iterator[tuple[JobRow, list[str], int]]:
        """Every job with all its request_ids and what it may have cost, in insertion order,
        in constant memory and one query per ``batch`` jobs."""
        marks = ", ".join("?" * len(CHARGEABLE))
        columns = ", ".join(f"j.{name}" for name in JobRow._fields)
        query = (
            f"SELECT j.rowid, {columns},"  # noqa: S608
            " (SELECT group_concat(request_id, ' ') FROM (SELECT request_id FROM attempts a"
            "   WHERE a.job_id = j.id AND a.request_id IS NOT NULL ORDER BY a.n) AS ids),"
            " (SELECT COALESCE(SUM(price_cents), 0) FROM attempts a"
            f"   WHERE a.job_id = j.id AND a.outcome IN ({marks}))"
            " FROM jobs j WHERE j.rowid > ? ORDER BY j.rowid LIMIT ?"
        )
        last = 0
        while True:
            rows = self.db.execute(query, [*CHARGEABLE, last, batch]).fetchall()
            for found in rows:
                request_ids = found[-2].split(" ") if found[-2] else []
                yield row_from(found[1:-2]), request_ids, int(found[-1])
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def iter_outputs(self, state: JobState) -> Iterator[tuple[str, str]]:
        """(id, output) of every job in ``state``: a light read for checking files on disk."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT rowid, id, output FROM jobs WHERE state = ? AND rowid > ?"
                " ORDER BY rowid LIMIT 5000",
                (state.value, last),
            ).fetchall()
            yield from ((job_id, output) for _, job_id, output in rows)
            if len(rows) < 5000:
                return
            last = rows[-1][0]

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {JobState(state): n for state, n in rows}

    def committed_cents(self) -> int:
        """Money that may have been taken: attempts in flight, uncertain, or known charged."""
        marks = ", ".join("?" * len(CHARGEABLE))
        (total,) = self.db.execute(
            f"SELECT COALESCE(SUM(price_cents), 0) FROM attempts WHERE outcome IN ({marks})",  # noqa: S608
            CHARGEABLE,
        ).fetchone()
        return int(total)

    def spent_cents(self) -> int:
        """Money known to be charged: accepted attempts not refunded by a remote ERROR."""
        (total,) = self.db.execute(
            "SELECT COALESCE(SUM(price_cents), 0) FROM attempts"
            " WHERE outcome IN ('accepted', 'failed', 'completed')"
        ).fetchone()
        return int(total)

    def knows_manifest(self, digest: str) -> bool:
        """Whether this exact manifest was registered before and the state file holds its jobs
        and no others (so the file need not be read again)."""
        found = self.db.execute("SELECT jobs FROM manifests WHERE digest = ?", (digest,)).fetchone()
        if found is None:
            return False
        (total,) = self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return bool(found[0] == total)

    def recorded_lines(self, job_ids: list[str]) -> dict[str, tuple[bytes, str, JobState]]:
        """For those of ``job_ids`` whose line an earlier run kept, the line's digest
        (``manifest.line_digest``), the job's output and its state: one query, a few hundred
        ids at most."""
        if not job_ids:
            return {}
        marks = ", ".join("?" * len(job_ids))
        found = self.db.execute(
            "SELECT id, line_digest, output, state FROM jobs"  # noqa: S608
            f" WHERE id IN ({marks}) AND line_digest IS NOT NULL",
            job_ids,
        )
        return {job_id: (digest, output, _STATES[state]) for job_id, digest, output, state in found}

    def webhook_secrets(self, *, newer_than: float = 0.0) -> dict[int, str]:
        """The webhook signing secrets of runs started after ``newer_than``, by run id."""
        rows = self.db.execute(
            "SELECT w.run_id, w.secret FROM webhook_secrets w JOIN runs r ON r.id = w.run_id"
            " WHERE r.started_at > ?",
            (newer_than,),
        ).fetchall()
        return dict(rows)

    def previous_run_ended(self, run_id: int) -> bool:
        """Whether the run before ``run_id`` came to its end (so wrote ``results.jsonl``)."""
        found = self.db.execute(
            "SELECT ended_at FROM runs WHERE id < ? ORDER BY id DESC LIMIT 1", (run_id,)
        ).fetchone()
        return found is not None and found[0] is not None

    def pause_until(self, origin: str) -> float | None:
        """The end (wall clock) of the latest pause the gateway at ``origin`` announced."""
        found = self.db.execute("SELECT until FROM pauses WHERE origin = ?", (origin,)).fetchone()
        return None if found is None else float(found[0])

    def input_path(self, key: str) -> Path | None:
        """The local file of an input image, by its key in the inputs bucket."""
        found = self.db.execute("SELECT path FROM input_files WHERE key = ?", (key,)).fetchone()
        return None if found is None else Path(found[0])

    def speed_scales(self, origin: str) -> list[float]:
        """What earlier runs learned of the speed of the gateway at ``origin``, oldest first."""
        rows = self.db.execute(
            "SELECT scale FROM speed_samples WHERE origin = ? ORDER BY n", (origin,)
        ).fetchall()
        return [float(scale) for (scale,) in rows]

    def callback_hints(self, job_id: str) -> list[str]:
        """Request ids that callbacks named for the job, oldest first (hints, not yet believed)."""
        rows = self.db.execute(
            "SELECT request_id FROM callback_hints WHERE job_id = ? ORDER BY received_at",
            (job_id,),
        ).fetchall()
        return [request_id for (request_id,) in rows]

    def owner_of(self, request_id: str) -> str | None:
        """The job whose attempt has ``request_id``, if any."""
        found = self.db.execute(
            "SELECT job_id FROM attempts WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if found is None else str(found[0])

    def last_post(self, job_id: str) -> float | None:
        """When the job's latest attempt went on the wire (wall clock)."""
        found = self.db.execute(
            "SELECT started_at FROM attempts WHERE job_id = ? ORDER BY n DESC LIMIT 1", (job_id,)
        ).fetchone()
        return None if found is None else float(found[0])

    def live_workers(self) -> list[dict[str, Any]]:
        """The workers sharing this state (none for a state file, which has one at a time):
        each with its host, last heartbeat and jobs in flight."""
        return []

    def others_working(self) -> bool:
        """Whether other workers share this state and are alive (never, for a state file)."""
        return False

    def undecided(self, limit: int) -> list[JobRow]:
        """Up to ``limit`` uncertain jobs nobody is settling, oldest first: the ones a person
        must decide."""
        return list(itertools.islice(self.iter_jobs(JobState.UNCERTAIN), limit))
