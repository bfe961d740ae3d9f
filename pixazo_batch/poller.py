"""Poller: follows submitted jobs to a terminal status, polling as rarely as the answer allows.

The first status request of a job is timed for when jobs like it have been seen to finish, later
ones are spaced by the estimator (see ``estimator.py``), with jitter. Status reads cost nothing,
so network and 5xx trouble is retried with back-off until the job's deadline.

Callbacks are hints, never the source of truth (``docs/design.md``, section "Webhooks"): a
terminal callback only brings the next poll forward, and the job is settled from that status
answer; an uncertain job (its POST's answer lost) takes the request a callback names only once a
status request for it succeeds.
"""

from __future__ import annotations

import random
import time
from functools import partial

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from pixazo_batch.context import RunContext
from pixazo_batch.errors import HttpStatusError, RequestError, SubmitStopError
from pixazo_batch.estimator import CompletionEstimator
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import (
    Action,
    CallbackNamed,
    NoCallback,
    Outcome,
    RemoteEnded,
    Stalled,
    UnknownRequest,
)
from pixazo_batch.models import JobState, RemoteStatus, StatusResponse
from pixazo_batch.webhooks import FALLBACK_POLL_FACTOR

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
    """Tracks every job it receives until the gateway reports a terminal status."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        estimator: CompletionEstimator | None = None,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.ctx = ctx
        self.estimator = estimator or CompletionEstimator(ctx.settings.poll_interval)
        # A failed status read is retried on the scale of the poll interval: reads are free.
        base = max(0.05, ctx.settings.poll_interval)
        self.backoff = backoff or BackoffPolicy(base=base, cap=60.0)
        self._rng = random.Random()

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Track each job id received, concurrently, until the run ends (the engine owns the
        stream)."""
        async with anyio.create_task_group() as group:
            async for job_id in jobs:
                group.start_soon(self.track, job_id)

    async def track(self, job_id: str) -> None:
        """Follow one job to an outcome and hand it to the router."""
        ctx = self.ctx
        row = ctx.store.get(job_id)
        assert row is not None
        if row.state is JobState.UNCERTAIN:
            outcome: Outcome = await self._await_callback(row)
        else:
            outcome = await self._poll_until_terminal(row)
        step = await ctx.router.settle(job_id, outcome)
        if ctx.webhooks is not None and step.action not in (Action.POLL, Action.AWAIT_CALLBACK):
            ctx.webhooks.box.forget(job_id)

    async def _poll_until_terminal(self, row: JobRow) -> Outcome:
        ctx = self.ctx
        assert row.request_id is not None
        assert row.submitted_at is not None
        kind = job_kind(row)
        delay = self.estimator.first_poll(kind, time.time() - row.submitted_at)
        failures = 0
        last_miss: float | None = None  # seconds after submit of the last poll that saw no end
        while True:
            await self._wait(row, delay)
            if time.time() - row.submitted_at > ctx.settings.job_deadline:
                ctx.flags.stalled.append(row.id)
                log.warning("stalled", job_id=row.id, request_id=row.request_id, state="submitted")
                return Stalled(f"no terminal status in {ctx.settings.job_deadline:g} s")
            try:
                status = await ctx.gateway.status(row.request_id, row.polling_url)
            except SubmitStopError as exc:  # a quota answer: no request gets through
                ctx.flags.stop(str(exc), exc.exit_code)
                return Stalled(str(exc))
            except HttpStatusError as exc:
                if exc.status == 404 and exc.body.from_gateway:
                    return UnknownRequest(f"the gateway does not know {row.request_id}: {exc}")
                failures += 1
                delay = self._retry(row, failures, exc)
                continue
            except RequestError as exc:
                failures += 1
                delay = self._retry(row, failures, exc)
                continue
            failures = 0
            if status.status.is_terminal:
                elapsed = time.time() - row.submitted_at
                self.estimator.observe(kind, _time_to_finish(status, elapsed, last_miss))
                # A failure must reach even a --quiet log: it is a job lost (and maybe paid).
                report = log.info if status.status is RemoteStatus.COMPLETED else log.warning
                report(
                    "remote_finished",
                    job_id=row.id,
                    request_id=row.request_id,
                    remote_status=status.status.value,
                    attempt=row.attempts,
                    error=status.error,
                )
                left = row.attempts < ctx.settings.max_attempts
                return RemoteEnded(status.status, status.media_url, status.error, left)
            last_miss = time.time() - row.submitted_at
            delay = self.estimator.later_poll(kind) * self._rng.uniform(1.0, 1.25)

    def _retry(self, row: JobRow, failures: int, exc: Exception) -> float:
        log.info("poll_retry", job_id=row.id, request_id=row.request_id, error=str(exc))
        return self.backoff.delay(failures, self._rng)

    async def _wait(self, row: JobRow, seconds: float) -> None:
        """Wait until the next poll is due; with webhooks, a poll further off, unless a callback
        reports the request finished first."""
        hooks = self.ctx.webhooks
        if hooks is None:
            await self.ctx.clock.sleep(max(0.0, seconds))
            return
        request_id = row.request_id

        def terminal(status: StatusResponse) -> bool:
            return status.request_id == request_id and status.status.is_terminal

        await hooks.box.wait(row.id, terminal, seconds * FALLBACK_POLL_FACTOR)

    async def _await_callback(self, row: JobRow) -> Outcome:
        """An uncertain job cannot be polled: find the request a callback named for it (kept in
        the state file, or delivered while this run waits) and confirm it with the gateway."""
        ctx = self.ctx
        earlier = set(ctx.store.request_ids(row.id))
        tried: set[str] = set()
        deadline = anyio.current_time() + ctx.settings.uncertain_wait
        failures = 0
        while True:
            named = [*ctx.store.callback_hints(row.id)]
            if ctx.webhooks is not None:
                named += ctx.webhooks.box.request_ids(row.id)
            for request_id in dict.fromkeys(named):
                if request_id in earlier or request_id in tried:
                    continue
                confirmed = await self._confirm(row, request_id)
                if confirmed is True:
                    return CallbackNamed(request_id)
                if confirmed is False:
                    tried.add(request_id)
                else:
                    failures += 1
            patience = deadline - anyio.current_time()
            if patience <= 0 or ctx.webhooks is None:
                log.warning("uncertain_unresolved", job_id=row.id, state="uncertain")
                return NoCallback()
            if failures:
                patience = min(patience, self.backoff.delay(failures, self._rng))
            seen = frozenset(named) | tried | earlier
            await ctx.webhooks.box.wait(row.id, partial(_unseen, seen), patience)

    async def _confirm(self, row: JobRow, request_id: str) -> bool | None:
        """Whether the gateway knows ``request_id`` (and no other job of ours has it); None
        when it cannot tell now."""
        owner = self.ctx.store.owner_of(request_id)
        if owner is not None and owner != row.id:
            log.warning("callback_refused", job_id=row.id, request_id=request_id, owner=owner)
            return False
        try:
            status = await self.ctx.gateway.status(request_id)
        except HttpStatusError as exc:
            if exc.status == 404 and exc.body.from_gateway:
                log.warning("callback_refused", job_id=row.id, request_id=request_id, error=exc)
                return False
            return None
        except (RequestError, SubmitStopError):
            return None
        if status.request_id != request_id:
            return False
        log.warning("uncertain_resolved", job_id=row.id, request_id=request_id, state="submitted")
        return True


def _unseen(seen: frozenset[str], status: StatusResponse) -> bool:
    return status.request_id not in seen


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
