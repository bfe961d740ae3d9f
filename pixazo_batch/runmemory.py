"""RunMemory: what the state keeps besides the jobs' transitions: runs, webhook secrets, local
inputs, manifests read through, callback hints, the gateway's speed and its pauses.

Each write is one transaction of the store that inherits it (``StateStore``, the SQLite file,
or ``pgstate.PgStateStore``); the SQL is the same for both.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from pathlib import Path

from pixazo_batch.statereader import StateReader


class RunMemory(StateReader):
    """The writes of everything a later run or a command reads back, bar the jobs."""

    #: the current run's id (``begin_run``)
    run_id: int = 0

    def _transaction(self, *, full: bool = False) -> AbstractContextManager[None]:
        raise NotImplementedError

    def begin_run(self) -> int:
        """Record a new run; returns its id."""
        with self._transaction():
            (self.run_id,) = self.db.execute(
                "INSERT INTO runs (pid, started_at) VALUES (?, ?) RETURNING id",
                (os.getpid(), time.time()),
            ).fetchone()
        return self.run_id

    def end_run(self, exit_code: int) -> None:
        """Record how the current run ended."""
        with self._transaction():
            self.db.execute(
                "UPDATE runs SET ended_at = ?, exit_code = ? WHERE id = ?",
                (time.time(), exit_code, self.run_id),
            )

    def add_webhook_secret(self, secret: str) -> None:
        """Keep the current run's webhook signing secret."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO webhook_secrets (run_id, secret) VALUES (?, ?)"
                " ON CONFLICT (run_id) DO UPDATE SET secret = excluded.secret",
                (self.run_id, secret),
            )

    def keep_inputs(self, inputs: dict[str, Path]) -> None:
        """Remember where the local images of a job are (by their key in the inputs bucket)."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO input_files (key, path) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET path = excluded.path",
                [(key, str(path)) for key, path in inputs.items()],
            )

    def remember_manifest(self, digest: str, jobs: int) -> None:
        """Note that a manifest with this digest was registered in full, without a bad line."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO manifests (digest, jobs, registered_at) VALUES (?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET jobs = excluded.jobs,"
                " registered_at = excluded.registered_at",
                (digest, jobs, time.time()),
            )

    def keep_callback(self, job_id: str, request_id: str) -> None:
        """Remember, durably, that a callback named ``request_id`` for an uncertain job (a hint,
        confirmed by a status request before it is believed)."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO callback_hints (job_id, request_id, received_at)"
                " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (job_id, request_id, time.time()),
            )

    def keep_speed(self, origin: str, scales: list[float]) -> None:
        """Keep what this run knows of the gateway's speed for the next run (workers of a
        fleet keeping theirs at once: the samples of the last to write win, row by row)."""
        with self._transaction():
            self.db.execute(
                "DELETE FROM speed_samples WHERE origin = ? AND n >= ?", (origin, len(scales))
            )
            self.db.executemany(
                "INSERT INTO speed_samples (origin, n, scale) VALUES (?, ?, ?)"
                " ON CONFLICT (origin, n) DO UPDATE SET scale = excluded.scale",
                [(origin, n, scale) for n, scale in enumerate(scales)],
            )

    def remember_pause(self, origin: str, until: float) -> None:
        """Keep the end (wall clock) of a pause the gateway announced, for later runs."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO pauses (origin, until) VALUES (?, ?) ON CONFLICT (origin)"
                " DO UPDATE SET until = CASE WHEN excluded.until > pauses.until"
                " THEN excluded.until ELSE pauses.until END",
                (origin, until),
            )
