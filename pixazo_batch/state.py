"""StateStore: the SQLite file that remembers every job, every attempt and every cent.

Each transition is one transaction, checked against ``ALLOWED_TRANSITIONS`` and committed before
the caller acts on it. The file runs in WAL mode with ``synchronous=NORMAL`` (a commit survives the
process being killed at any instant); the transitions that decide whether money may be spent
twice (``submitting``, ``submitted``, ``uncertain``) are committed with ``synchronous=FULL`` so
they also survive a power cut. A run's transitions share commits with those of other jobs ready
at the same moment (``groupcommit.py``), each still committed before its caller acts.
``statefile.py`` finds, checks, creates and locks the file; ``registration.py`` records the
manifest's jobs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pixazo_batch.errors import BudgetReachedError, InvalidTransitionError
from pixazo_batch.groupcommit import SqliteTransactions
from pixazo_batch.jobrow import JobRow
from pixazo_batch.models import ALLOWED_TRANSITIONS, JobState
from pixazo_batch.mp4 import Mp4Info
from pixazo_batch.registration import ManifestRegistry
from pixazo_batch.statefile import locked_connection, read_only_connection
from pixazo_batch.statereader import Connection


class StateStore(SqliteTransactions, ManifestRegistry):
    """Durable job states for one output folder.

    Usage: ``with StateStore.open(path) as store: store.register(spec, run_id)``.

    Raises:
        StateLockedError: from ``open`` when another live run holds the file.
        StateError: from ``open`` when the file is not a usable pixazo-batch state file.
        StateWriteError: from any write the disk refuses (full, failing); nothing of it is kept.
        StateDamagedError: from any write that finds the file damaged.
    """

    #: what the database raises when a row would break a unique constraint
    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    #: what the database raises when it fails (outside the transitions, which translate it)
    database_errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)

    def __init__(self, path: Path | str, db: Connection) -> None:
        self.path = path
        self.db = db
        self.run_id = 0
        #: job rows this connection inserted or changed
        self.job_changes = 0
        #: the row ``deciding`` read, which the transition made in its block starts from
        self._decided: JobRow | None = None

    @classmethod
    @contextmanager
    def open(
        cls, path: Path, *, lock: bool = True, folder: Path | None = None
    ) -> Iterator[StateStore]:
        """Open (creating if needed) and lock the state file for the duration of the block
        (``statefile.py``: a link inside ``folder``, the output folder, is refused).

        With ``lock=False`` the file is opened read-only, without the lock (``status``,
        ``report``, ``--dry-run``): it must exist, and nothing is written.
        """
        if not lock:
            db = read_only_connection(path)
            try:
                yield cls(path, db)
            finally:
                db.close()
            return
        with locked_connection(path, folder=folder) as db:
            yield cls(path, db)

    # --- transitions ---------------------------------------------------------------------------

    @contextmanager
    def deciding(self, job_id: str) -> Iterator[JobRow]:
        """The job as it stands, to decide its transition on: the transition made in the block
        starts from this very row, without reading it again (a database reads it locked, in the
        transaction that commits the transition).

        Raises:
            InvalidTransitionError: no such job (or one another worker of a fleet holds).
        """
        row = self._current(job_id)
        self._decided = row
        try:
            yield row
        finally:
            self._decided = None

    def begin_submit(self, job_id: str, budget_cents: int | None) -> JobRow:
        """``pending|errored -> submitting``, durably, as the POST goes on the wire: one more
        attempt, its price committed. Returns the job as it now stands.

        Raises:
            BudgetReachedError: the job's price would take the committed spend past
                ``budget_cents``; nothing changed.
        """
        with self._transaction(full=True):
            row = self._claim(job_id)
            if budget_cents is not None and self.committed_cents() + row.price_cents > budget_cents:
                raise BudgetReachedError(
                    f"--max-spend reached: {budget_cents / 100:.2f} USD committed or about to be"
                )
            attempt = row.attempts + 1
            self._move(row, JobState.SUBMITTING, attempts=attempt, error=None)
            self.db.execute(
                "INSERT INTO attempts (job_id, n, outcome, price_cents, started_at)"
                " VALUES (?, ?, 'submitting', ?, ?)",
                (job_id, attempt, row.price_cents, time.time()),
            )
        return row._replace(state=JobState.SUBMITTING, attempts=attempt, error=None)

    def submit_accepted(self, job_id: str, request_id: str, polling_url: str | None) -> None:
        """``submitting|uncertain -> submitted``: the gateway gave the job a request_id."""
        with self._transaction(full=True):
            row = self._current(job_id)
            self._move(
                row,
                JobState.SUBMITTED,
                request_id=request_id,
                polling_url=polling_url,
                remote_status="QUEUED",
                submitted_at=time.time(),
                error=None,
            )
            self._end_attempt(row, "accepted", request_id)

    def submit_uncertain(self, job_id: str, reason: str) -> None:
        """``submitting -> uncertain``: the POST may have been accepted and charged."""
        with self._transaction(full=True):
            row = self._current(job_id)
            self._move(row, JobState.UNCERTAIN, error=reason)
            self._end_attempt(row, "uncertain")

    def submit_refused(self, job_id: str, reason: str, *, final: bool) -> None:
        """``submitting -> pending`` (to retry) or ``-> failed`` (``final``): not charged."""
        with self._transaction():
            row = self._current(job_id)
            self._move(row, JobState.FAILED if final else JobState.PENDING, error=reason)
            self._end_attempt(row, "refused")

    def submit_withdrawn(self, job_id: str, reason: str) -> None:
        """``submitting -> pending``, the attempt forgotten: the gateway answered that it did not
        take the job, for reasons not the job's (429, 503, 402, quota, a setting)."""
        with self._transaction(full=True):
            row = self._current(job_id)
            self._move(row, JobState.PENDING, attempts=row.attempts - 1, error=reason)
            self.db.execute(
                "DELETE FROM attempts WHERE job_id = ? AND n = ?", (job_id, row.attempts)
            )

    def remote_finished(
        self,
        job_id: str,
        state: JobState,
        *,
        remote_status: str,
        media_url: str | None = None,
        error: str | None = None,
    ) -> None:
        """``submitted -> completed | failed | errored`` as the status endpoint reported; the
        attempt is charged unless the remote status was ERROR."""
        outcome = {"COMPLETED": "completed", "ERROR": "errored"}.get(remote_status, "failed")
        with self._transaction():
            row = self._current(job_id)
            self._move(
                row,
                state,
                media_url=media_url,
                error=error,
                remote_status=remote_status,
                finished_at=time.time(),
            )
            self._end_attempt(row, outcome, row.request_id)

    def fleet_room(self, *, fresh: bool = False) -> bool:
        """Whether the fleet may have one more job in flight (a state file has no fleet: its
        run's router keeps ``--max-in-flight``); ``fresh`` counts again."""
        return True

    def claim_download(self, job_id: str) -> JobRow | None:
        """Take the completed job's download for this worker: the job as it stands, or None
        when another worker of a fleet has it (a state file has one worker: never None)."""
        return self._read_current(job_id)

    def release(self, job_id: str) -> None:
        """Let go of a job this worker holds, for another worker of a fleet to take (a state
        file has one worker: nothing to hold)."""

    def refresh_media(self, job_id: str, media_url: str) -> None:
        """``completed -> completed`` with a fresh media URL."""
        with self._transaction():
            self._move(self._current(job_id), JobState.COMPLETED, media_url=media_url)

    def downloaded(
        self, job_id: str, size: int, sha256: str, video: Mp4Info | None, mismatch: str | None
    ) -> None:
        """``completed -> downloaded``: the verified file is at its final path; what its
        headers say, and how it differs from the request, are kept with it."""
        with self._transaction():
            self._move(
                self._current(job_id),
                JobState.DOWNLOADED,
                bytes=size,
                sha256=sha256,
                video_seconds=None if video is None else video.duration,
                video_width=None if video is None else video.width,
                video_height=None if video is None else video.height,
                mismatch=mismatch,
            )

    def file_missing(self, job_id: str) -> None:
        """``downloaded -> completed``: the file vanished from disk; fetch it again."""
        with self._transaction():
            self._move(self._current(job_id), JobState.COMPLETED, bytes=None, sha256=None)

    def set_state(self, job_id: str, state: JobState, reason: str | None) -> None:
        """``failed|uncertain -> pending`` (to submit again) or ``-> failed`` (given up), with
        the reason; an uncertain attempt keeps counting as committed spend."""
        with self._transaction(full=True):
            self._move(self._current(job_id), state, error=reason)

    def not_sent(self, job_id: str, reason: str) -> None:
        """``uncertain -> pending``: the operator established that the POST never arrived, so
        its attempt no longer counts as committed spend."""
        with self._transaction(full=True):
            row = self._current(job_id)
            self._move(row, JobState.PENDING, error=reason)
            self._end_attempt(row, "not_sent")

    # --- internals ----------------------------------------------------------------------------

    def _claim(self, job_id: str) -> JobRow:
        """The job about to be sent, inside ``begin_submit``'s transaction."""
        return self._current(job_id)

    def _current(self, job_id: str) -> JobRow:
        """The job a transition starts from: the row ``deciding`` read, once, else read now."""
        decided, self._decided = self._decided, None
        if decided is not None and decided.id == job_id:
            return decided
        return self._read_current(job_id)

    def _read_current(self, job_id: str) -> JobRow:
        row = self.get(job_id)
        if row is None:
            raise InvalidTransitionError(f"unknown job {job_id!r}")
        return row

    def _move(self, row: JobRow, target: JobState, **fields: Any) -> None:
        if target not in ALLOWED_TRANSITIONS[row.state]:
            raise InvalidTransitionError(f"job {row.id!r}: {row.state} -> {target} is not allowed")
        self.job_changes += 1
        fields["state"] = target.value
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?",  # noqa: S608
            [*fields.values(), row.id],
        )

    def _end_attempt(self, row: JobRow, outcome: str, request_id: str | None = None) -> None:
        self.db.execute(
            "UPDATE attempts SET outcome = ?, request_id = COALESCE(?, request_id), ended_at = ?"
            " WHERE job_id = ? AND n = ?",
            (outcome, request_id, time.time(), row.id, row.attempts),
        )
