"""Poller: submitted -> completed | failed | errored, polling as rarely as the answer allows.

The first status request of a job is timed for when jobs like it (same resolution and duration)
have been seen to finish, later ones are spaced by the estimator (see ``estimator.py``), with
jitter. Status reads cost nothing, so network and 5xx trouble is retried with back-off until the
job's deadline.

With webhooks, a callback's terminal status settles the job and polls are a fallback, further
apart; an uncertain job (its POST's answer lost) waits here for the callback that names its
request, since it has nothing to poll.
"""

from __future__ import annotations

import random
import time

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from pixazo_batch.context import RunContext
from pixazo_batch.errors import AuthRefusedError, GatewayError, HttpStatusError, QuotaExhaustedError
from pixazo_batch.estimator import CompletionEstimator
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.jobrow import JobRow
from pixazo_batch.models import JobState, RemoteStatus, StatusResponse
from pixazo_batch.planning import Action, decide
from pixazo_batch.webhooks import FALLBACK_POLL_FACTOR, resolve_uncertain

log = structlog.get_logger(__name__)

#: a job found finished at its first poll finished at some unknown earlier time: learn a bit less
CENSORED_SHRINK = 0.8
#: the mean of what a timestamp truncated to whole seconds leaves out
TRUNCATED_SECOND = 0.5


def job_kind(row: JobRow) -> tuple[str, str]:
    """The (resolution, duration) pair completion times are learned per."""
    request = row.request
    return request.resolution.value, request.duration.value


class Poller:
    """Tracks every submitted job until the gateway reports a terminal status."""

    def __init__(self, ctx: RunContext, *, estimator: CompletionEstimator | None = None) -> None:
        self.ctx = ctx
        self.estimator = estimator or CompletionEstimator(ctx.settings.poll_interval)
        self.backoff = BackoffPolicy(base=1.0, cap=60.0)
        self._rng = random.Random()

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Track each job id received, concurrently, until the run ends (the engine owns the
        stream)."""
        async with anyio.create_task_group() as group:
            async for job_id in jobs:
                group.start_soon(self.track, job_id)

    async def track(self, job_id: str) -> None:
        """Poll one job to a terminal status (or its deadline) and hand it on."""
        ctx = self.ctx
        try:
            row, status = await self._poll_until_terminal(job_id)
        finally:
            # Free the slot before handing on: a resubmission may need it.
            ctx.in_flight.release_on_behalf_of(job_id)
            if ctx.webhooks is not None:
                ctx.webhooks.box.forget(job_id)
        if status is None:
            ctx.ledger.leave()
        else:
            await self._settle(row, status)

    async def _poll_until_terminal(self, job_id: str) -> tuple[JobRow, StatusResponse | None]:
        """The terminal status, or None once the job was stalled, found unknown, or (uncertain)
        never named by a callback."""
        ctx = self.ctx
        row = ctx.store.get(job_id)
        assert row is not None
        if row.state is JobState.UNCERTAIN:
            resolved = await self._await_callback(row)
            if resolved is None:
                return row, None
            row = resolved
        assert row.request_id is not None
        assert row.submitted_at is not None
        kind = job_kind(row)
        delay = self.estimator.first_poll(kind, time.time() - row.submitted_at)
        failures = 0
        last_miss: float | None = None  # seconds after submit of the last poll that saw no end
        while True:
            status = await self._wait(row, delay)
            if status is None and time.time() - row.submitted_at > ctx.settings.job_deadline:
                ctx.flags.stalled.append(job_id)
                log.warning("stalled", job_id=job_id, request_id=row.request_id, state="submitted")
                return row, None
            if status is None:
                try:
                    status = await ctx.gateway.status(row.request_id, row.polling_url)
                except (AuthRefusedError, QuotaExhaustedError):
                    raise
                except GatewayError as exc:
                    if isinstance(exc, HttpStatusError) and exc.status == 404:
                        error = f"the gateway does not know request {row.request_id}: {exc}"
                        self._record(row, JobState.FAILED, "NOT_FOUND", error=error)
                        return row, None
                    failures += 1
                    log.info("poll_retry", job_id=job_id, request_id=row.request_id, error=str(exc))
                    delay = self.backoff.delay(failures, self._rng)
                    continue
            failures = 0
            if status.status.is_terminal:
                elapsed = time.time() - row.submitted_at
                self.estimator.observe(kind, _time_to_finish(status, elapsed, last_miss))
                return row, status
            last_miss = time.time() - row.submitted_at
            delay = self.estimator.later_poll(kind) * self._rng.uniform(1.0, 1.25)

    async def _wait(self, row: JobRow, seconds: float) -> StatusResponse | None:
        """Wait until the next poll is due; with webhooks, a poll further off, unless a callback
        brings the job's terminal status first (then returned)."""
        hooks = self.ctx.webhooks
        if hooks is None:
            await anyio.sleep(max(0.0, seconds))
            return None
        request_id = row.request_id

        def terminal(status: StatusResponse) -> bool:
            return status.request_id == request_id and status.status.is_terminal

        return await hooks.box.wait(row.id, terminal, seconds * FALLBACK_POLL_FACTOR)

    async def _await_callback(self, row: JobRow) -> JobRow | None:
        """An uncertain job (its POST's answer was lost) cannot be polled: wait for a callback
        that names its request. The job as now submitted, or None if none came in time."""
        ctx = self.ctx
        assert ctx.webhooks is not None
        earlier = set(ctx.store.request_ids(row.id))
        status = await ctx.webhooks.box.wait(
            row.id, lambda s: s.request_id not in earlier, ctx.settings.uncertain_wait
        )
        if status is not None:
            resolve_uncertain(ctx.store, row.id, status)  # unless the receiver already did
        fresh = ctx.store.get(row.id)
        assert fresh is not None
        if fresh.state is JobState.SUBMITTED:
            return fresh
        log.warning(
            "uncertain_unresolved",
            job_id=row.id,
            state=fresh.state.value,
            waited_s=ctx.settings.uncertain_wait,
        )
        return None

    async def _settle(self, row: JobRow, status: StatusResponse) -> None:
        """Record the terminal status and send the job on: to download, to resubmit, or to rest."""
        ctx = self.ctx
        remote = status.status
        if remote is RemoteStatus.COMPLETED and status.media_url:
            self._record(row, JobState.COMPLETED, remote.value, media_url=status.media_url)
            await ctx.queues.download.send(row.id)
            return
        error = status.error or (
            "COMPLETED without a media URL" if remote is RemoteStatus.COMPLETED else remote.value
        )
        if remote is not RemoteStatus.ERROR:
            self._record(row, JobState.FAILED, remote.value, error=error)
            ctx.ledger.leave()
            return
        # A remote ERROR is not charged: submit again while attempts remain.
        self._record(row, JobState.ERRORED, remote.value, error=error)
        errored = ctx.store.get(row.id)
        assert errored is not None
        decision = decide(ctx.settings, errored)
        if decision.action is Action.GIVE_UP:
            ctx.store.give_up(row.id, decision.reason or error)
        if decision.action is not Action.REQUEUE or ctx.flags.stop_submitting:
            ctx.ledger.leave()
            return
        ctx.store.requeue(row.id, reason=decision.reason)
        await ctx.queues.submit.send(row.id)

    def _record(
        self,
        row: JobRow,
        state: JobState,
        remote: str,
        *,
        media_url: str | None = None,
        error: str | None = None,
    ) -> None:
        self.ctx.store.remote_finished(
            row.id, state, media_url=media_url, error=error, remote_status=remote
        )
        log.info(
            "remote_finished",
            job_id=row.id,
            request_id=row.request_id,
            state=state.value,
            attempt=row.attempts,
            error=error,
        )


def _time_to_finish(status: StatusResponse, elapsed: float, last_miss: float | None) -> float:
    """How long the job took. The gateway's own timestamps say it best; failing that, our polls
    only bracket it (it ended after the last miss and before the hit), and learning the hit time
    itself would push every estimate upwards, one poll at a time."""
    if status.created_at is not None and status.completed_at is not None:
        seconds = (status.completed_at - status.created_at).total_seconds()
        if status.completed_at.microsecond == 0:
            # Whole seconds (the gateway's "YYYY-MM-DD HH:MM:SS"): the job ended somewhere in
            # that second, on average half-way; read as its start, every sample runs early.
            seconds += TRUNCATED_SECOND
        if seconds > 0:
            return seconds
    if last_miss is None:
        return CENSORED_SHRINK * elapsed  # it was done by the first poll: maybe much earlier
    return (last_miss + elapsed) / 2
