"""ManifestRegistry: how the state store records the manifest's jobs (``docs/design.md``, "The
manifest"): new jobs 256 at a time in one transaction, known ones looked up together, and the
digest of each line that alone makes its job kept for later runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pixazo_batch.jobrow import JobRow
from pixazo_batch.models import JobSpec, JobState
from pixazo_batch.runmemory import RunMemory
from pixazo_batch.seenindex import parent_folders


class ManifestRegistry(RunMemory):
    """The registration of manifest jobs, for a store that provides the transactions
    (``StateStore`` on SQLite, ``pgstate.PgStateStore`` on PostgreSQL)."""

    #: what the database raises when a row would break a unique constraint
    integrity_errors: tuple[type[Exception], ...]
    #: what the database raises when it fails (outside the transitions, which translate it)
    database_errors: tuple[type[Exception], ...]
    #: job rows this connection inserted or changed
    job_changes: int

    def register(self, spec: JobSpec) -> JobRow | str:
        """Record a manifest job (new ones as ``pending``). Returns its row, or why it conflicts
        with what earlier runs recorded (an id whose request changed, an output path in use or
        needed as a folder), in a sentence starting with the field it concerns."""
        row = self.get(spec.id)
        if row is not None:
            return _recorded(spec, row, spec.request_hash)
        conflict = self._folder_conflict(spec.output)
        if conflict is not None:
            return conflict
        try:
            with self._transaction():
                self._insert(spec, time.time())
        except self.integrity_errors:
            if self.get(spec.id) is not None:  # another worker recorded it just now
                return self.register(spec)
            other = self.db.execute(
                "SELECT id FROM jobs WHERE output = ?", (spec.output,)
            ).fetchone()
            return f"output {spec.output!r} is already the output of job {other[0]!r}"
        self.job_changes += 1
        row = self.get(spec.id)
        assert row is not None
        return row

    def register_many(self, specs: list[JobSpec]) -> Iterator[JobRow | str]:
        """``register`` each job, in order, with one lookup for those already recorded (a
        manifest run again is mostly those) and one transaction for those that are not; each
        is yielded only once it is recorded, and a line's digest is kept with its job
        (``JobSpec.digest``) whether the job is new or recorded with the same request."""
        known = self.get_many([spec.id for spec in specs])
        added = self._register_together([spec for spec in specs if spec.id not in known])
        recorded = {
            spec.id: _recorded(spec, row, spec.request_hash)
            for spec in specs
            if (row := known.get(spec.id)) is not None
        }
        unchanged = [spec for spec in specs if isinstance(recorded.get(spec.id), JobRow)]
        if any(spec.digest is not None for spec in unchanged):
            with self._transaction():
                self._remember_lines(unchanged)
        for spec in specs:
            if (found := recorded.get(spec.id)) is not None:
                yield found
            elif (new := added.get(spec.id)) is not None:
                yield new
            else:
                yield self.register(spec)

    def keeps_lines(self) -> bool:
        """Whether the state keeps manifest lines' digests (``recorded_lines``): a state file
        of an earlier version opened read-only does not."""
        try:
            self.db.execute("SELECT line_digest FROM jobs LIMIT 0").fetchall()
        except self.database_errors:
            return False
        return True

    def _register_together(self, specs: list[JobSpec]) -> dict[str, JobRow]:
        """Record new jobs in one transaction (a commit a job cost 200 us) and return their
        rows; when any of them conflicts, nothing is recorded and ``register`` takes each
        alone, naming the conflict."""
        if len(specs) < 2:
            return {}
        try:
            with self._transaction():
                rows = self._insert_all(specs, time.time())
        except _ConflictError:
            return {}
        except self.integrity_errors:
            return {}
        self.job_changes += len(specs)
        return {row.id: row for row in rows}

    def _insert_all(self, specs: list[JobSpec], now: float) -> list[JobRow]:
        """Insert new jobs in one statement; returns their rows.

        Raises:
            _ConflictError: an output of the batch is a file another output (of the batch or
                recorded) needs as a folder.
        """
        if self._outputs_conflict([spec.output for spec in specs]):
            raise _ConflictError
        rows = [_new_row(spec, now) for spec in specs]
        self.db.executemany(
            _INSERT_JOB,
            [_inserted(row, spec.digest) for row, spec in zip(rows, specs, strict=True)],
        )
        return rows

    def _outputs_conflict(self, outputs: list[str]) -> bool:
        """Whether one of ``outputs`` would have to be both a file and a folder, beside the
        others or beside a recorded output (``_folder_conflict``, a few queries for a batch)."""
        parents = {parent for output in outputs for parent in parent_folders(output)}
        if parents & set(outputs) or self._recorded_output_among(sorted(parents)) is not None:
            return True
        for chunk in _chunks(outputs):
            values = ", ".join(["(?)"] * len(chunk))
            # "/" sorts just before "0": the range holds exactly the paths below an output. A
            # correlated EXISTS, since PostgreSQL plans the plain join as a scan of every job.
            found = self.db.execute(
                f"WITH batch(output) AS (VALUES {values}) SELECT 1 FROM batch WHERE EXISTS"  # noqa: S608
                " (SELECT 1 FROM jobs WHERE jobs.output >= batch.output || '/'"
                " AND jobs.output < batch.output || '0') LIMIT 1",
                chunk,
            ).fetchone()
            if found is not None:
                return True
        return False

    def _recorded_output_among(self, paths: list[str]) -> tuple[str, str] | None:
        """A recorded job (id, output) whose output is one of ``paths``, if any."""
        for chunk in _chunks(paths):
            marks = ", ".join("?" * len(chunk))
            found = self.db.execute(
                f"SELECT id, output FROM jobs WHERE output IN ({marks}) LIMIT 1",  # noqa: S608
                chunk,
            ).fetchone()
            if found is not None:
                return found[0], found[1]
        return None

    def _remember_lines(self, specs: list[JobSpec]) -> None:
        """Keep the digest of each line that alone makes its (recorded) job, for later runs."""
        lines = [(spec.digest, spec.id) for spec in specs if spec.digest is not None]
        if lines:
            self.db.executemany("UPDATE jobs SET line_digest = ? WHERE id = ?", lines)

    def _insert(self, spec: JobSpec, now: float) -> JobRow:
        """Insert a new job; returns its row (as a read would find it: reading back every job a
        manifest adds cost a fifth of recording it)."""
        row = _new_row(spec, now)
        self.db.execute(_INSERT_JOB, _inserted(row, spec.digest))
        return row

    def _folder_conflict(self, output: str) -> str | None:
        """Why ``output`` cannot coexist with a recorded output: one of them would have to be
        both a file and a folder."""
        found = self._recorded_output_among(parent_folders(output))
        if found is not None:
            return f"output {found[1]!r} of job {found[0]!r} cannot also be a folder"
        # "/" sorts just before "0": the range holds exactly the paths below ``output``.
        found = self.db.execute(
            "SELECT id FROM jobs WHERE output >= ? AND output < ? LIMIT 1",
            (output + "/", output + "0"),
        ).fetchone()
        if found is not None:
            return f"output {output!r} is a folder of job {found[0]!r}'s output"
        return None


#: the most values one statement binds (SQLite's oldest limit is 999)
_CHUNK = 500
_INSERT_JOB = (
    "INSERT INTO jobs (id, request_hash, request_json, price_cents, output, state,"
    " created_at, updated_at, line_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _new_row(spec: JobSpec, now: float) -> JobRow:
    """The row of a manifest job recorded now as ``pending``."""
    return JobRow(
        spec.id, spec.request_hash, spec.request_json, spec.price_cents, spec.output,
        JobState.PENDING, 0, None, None, None, None, None, None, None, now, now, None, None,
    )  # fmt: skip


def _inserted(row: JobRow, digest: bytes | None) -> tuple[object, ...]:
    """The values ``_INSERT_JOB`` records for a new job's row."""
    return (*row[:5], row.state.value, row.created_at, row.updated_at, digest)


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class _ConflictError(Exception):
    """A job of a batch conflicts with a recorded one: the batch is recorded job by job."""


def _recorded(spec: JobSpec, row: JobRow, request_hash: str) -> JobRow | str:
    """The recorded row of a manifest job, or why the manifest's line no longer matches it."""
    if row.request_hash != request_hash:
        return (
            f"id {spec.id!r} was first recorded with a different request; give the "
            "changed job a new id (the old one may already be paid for)"
        )
    if row.output != spec.output:
        return f"output {row.output!r} was recorded for id {spec.id!r}, not {spec.output!r}"
    return row
