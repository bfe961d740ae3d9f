"""The workers of a fleet in the state database: joining, heartbeats, reaping the silent and
adopting their work, and what ``status`` shows of them (``docs/design.md``, "A fleet of
workers"). ``pgstate.PgStateStore`` adds the fleet-aware transitions."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pixazo_batch.errors import StateError, UsageError, WorkerFencedError
from pixazo_batch.jobrow import COLUMNS, JobRow, row_from
from pixazo_batch.state import StateStore

#: advisory lock taken by every ``begin_submit`` of the fleet (and by a worker joining)
SUBMIT_LOCK = 7_310_002
#: the database's clock, in seconds since the epoch (heartbeats never use a machine's clock)
NOW = "extract(epoch from clock_timestamp())"


@dataclass(frozen=True, slots=True)
class FleetLook:
    """What a worker reads of the fleet every tenth of a second."""

    #: the end (wall clock) of the latest pause the gateway announced to any worker
    pause_until: float | None
    #: the database's clock, in seconds since the epoch
    db_clock: float


@dataclass(frozen=True, slots=True)
class FleetIdentity:
    """What every worker sharing a database must agree on."""

    manifest: str
    base_url: str
    api_key: str
    max_in_flight: int | None = None
    worker_timeout: float = 60.0


class WorkerRoster(StateStore):
    """The fleet's workers, as one of them (or a command that is none) sees them."""

    #: seconds of silence after which a worker is taken for dead
    worker_timeout: float = 60.0

    def _join(self, fleet: FleetIdentity) -> None:
        """Check this run agrees with the database's manifest and with the living workers'
        gateway and key, then add this worker."""
        worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        with self._transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(?)", (SUBMIT_LOCK,))
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
                f" AND NOT reaped AND heartbeat_at > {NOW} - ?",
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
                f" heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, {NOW})",
                (worker, socket.gethostname(), os.getpid(), fleet.base_url, key_mark, time.time()),
            )
        self.max_in_flight = fleet.max_in_flight
        self.worker_timeout = fleet.worker_timeout
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
                f"UPDATE workers SET heartbeat_at = {NOW} WHERE id = ? AND NOT reaped"  # noqa: S608
                " RETURNING id",
                (self.worker,),
            ).fetchone()
        if found is None:
            raise WorkerFencedError(
                f"the fleet took this worker for dead ({self.worker}, silent past the timeout);"
                " stopping"
            )

    def reap_and_adopt(self, timeout: float) -> list[JobRow]:
        """Reap the workers silent for ``timeout`` seconds (their ``submitting`` jobs become
        uncertain), then hold every submitted job nobody living holds and every completed one
        a dead worker held; returns those jobs, for this worker to poll and download."""
        with self._transaction(full=True):
            dead = [
                worker
                for (worker,) in self.db.execute(
                    f"UPDATE workers SET reaped = TRUE WHERE stopped_at IS NULL AND NOT reaped"  # noqa: S608
                    f" AND heartbeat_at < {NOW} - ? AND id <> ? RETURNING id",
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
            "UPDATE jobs SET held_by = NULL WHERE held_by = ?"
            " AND state IN ('errored', 'uncertain')",
            (worker,),
        )

    def silent_holders(self, silent_for: float) -> int:
        """How many other workers hold jobs and have not beaten their heart for ``silent_for``
        seconds (they may be dead: their jobs wait for the timeout)."""
        (count,) = self.db.execute(
            f"SELECT COUNT(*) FROM workers w WHERE w.stopped_at IS NULL AND NOT w.reaped"  # noqa: S608
            f" AND w.id <> ? AND w.heartbeat_at < {NOW} - ?"
            " AND EXISTS (SELECT 1 FROM jobs j WHERE j.held_by = w.id)",
            (self.worker, silent_for),
        ).fetchone()
        return int(count)

    def others_have_work(self) -> bool:
        """Whether living workers hold jobs still rendering (or waiting for the callback of a
        lost answer), or a video waits for anyone to download it."""
        (found,) = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs j JOIN workers w ON w.id = j.held_by"
            "  WHERE j.state IN ('submitting', 'uncertain', 'submitted') AND w.id <> ?"
            "  AND w.stopped_at IS NULL AND NOT w.reaped)"
            " OR EXISTS (SELECT 1 FROM jobs WHERE state = 'completed' AND held_by IS NULL)",
            (self.worker,),
        ).fetchone()
        return bool(found)

    def look(self, origin: str) -> FleetLook:
        """The fleet's pause for the gateway at ``origin`` and the database's clock, in one
        round trip."""
        until, db_clock = self.db.execute(
            f"SELECT (SELECT until FROM pauses WHERE origin = ?), {NOW}",  # noqa: S608
            (origin,),
        ).fetchone()
        return FleetLook(None if until is None else float(until), float(db_clock))

    def rate_part(self, every: float, idle_weight: float) -> float | None:
        """This worker's part (0 to 1) of the key's rate in the current tick of ``every``
        seconds of the database's clock: one for each job it holds and ``idle_weight``, over
        the same for every living worker. The first worker to ask in a tick works out every
        worker's part from one picture of the fleet and keeps them for the others, so the
        parts in use add up to one; a worker that joined since has none until the next tick.
        None while another worker is working them out (ask again: waiting for its lock would
        stall this worker's event loop, heartbeats included)."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO fleet (name, value) VALUES ('rate_parts', '{}') ON CONFLICT DO NOTHING"
            )
            found = self.db.execute(
                f"SELECT value, floor({NOW} / ?) FROM fleet"  # noqa: S608
                " WHERE name = 'rate_parts' FOR UPDATE SKIP LOCKED",
                (every,),
            ).fetchone()
            if found is None:
                return None
            value, tick = found
            kept: dict[str, Any] = json.loads(value)
            if kept.get("tick") != float(tick):
                workers = self.live_workers()
                total = sum(w["in_flight"] + idle_weight for w in workers)
                parts = {w["worker"]: (w["in_flight"] + idle_weight) / total for w in workers}
                kept = {"tick": float(tick), "parts": parts}
                self.db.execute(
                    "UPDATE fleet SET value = ? WHERE name = 'rate_parts'", (json.dumps(kept),)
                )
        return float(kept["parts"].get(self.worker, 0.0))

    def live_workers(self) -> list[dict[str, Any]]:
        """Every worker neither stopped nor reaped: host, last heartbeat, jobs in flight."""
        rows = self.db.execute(
            f"SELECT w.id, w.host, w.pid, w.heartbeat_at, {NOW} - w.heartbeat_at,"  # noqa: S608
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
        """Whether another worker lives and was heard from within the timeout (it carries on
        with what is left)."""
        return any(
            worker["worker"] != self.worker and worker["silent_s"] < self.worker_timeout
            for worker in self.live_workers()
        )

    def undecided(self, limit: int) -> list[JobRow]:
        """As on a file, leaving out the jobs a living worker (another, when this is one)
        holds: it waits for their callbacks, and they are its to settle."""
        rows = self.db.execute(
            f"SELECT {COLUMNS} FROM jobs j WHERE j.state = 'uncertain' AND NOT EXISTS"  # noqa: S608
            " (SELECT 1 FROM workers w WHERE w.id = j.held_by AND w.stopped_at IS NULL"
            "  AND NOT w.reaped AND w.id IS DISTINCT FROM ?) ORDER BY j.seq LIMIT ?",
            (self.worker, limit),
        ).fetchall()
        return [row_from(found) for found in rows]

    def _leave(self) -> None:
        """Stop as a worker: what this worker held is released for the others at once."""
        try:
            with self._transaction():
                self.db.execute(
                    "UPDATE jobs SET held_by = NULL WHERE held_by = ?"
                    " AND state IN ('uncertain', 'submitted', 'completed', 'errored')",
                    (self.worker,),
                )
                self.db.execute(
                    f"UPDATE workers SET stopped_at = {NOW} WHERE id = ?",  # noqa: S608
                    (self.worker,),
                )
        except StateError:  # the others reap this worker after the timeout instead
            pass
