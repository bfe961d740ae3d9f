"""Poller: follows submitted jobs to a terminal status, polling as rarely as the answer allows.

One scheduler holds every waiting job in a timer queue keyed by when its next status request is
due: the first at the speed model's expected completion time (``estimator.py``), later ones a
fraction of it apart, with jitter. Whenever what the model learned moves its scale (the run's
first finished job, then any move beyond a few percent), every job still waiting is re-planned.
Status reads cost nothing, so network and 5xx trouble is retried with back-off until the job's
deadline.

Callbacks are hints, never the source of truth (``docs/design.md``, "Webhooks"): a terminal
callback only brings the job's next poll forward, and the job is settled from that status
answer; an uncertain job takes the request a callback names only once a status request for it
succeeds (``uncertain.py``).
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from pixazo_batch.context import RunContext
from pixazo_batch.errors import HttpStatusError, RequestError, SubmitStopError
from pixazo_batch.estimator import CompletionEstimator, Kind
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import Action, Outcome, RemoteEnded, Stalled, UnknownRequest
from pixazo_batch.models import JobState, RemoteStatus, StatusResponse
from pixazo_batch.uncertain import await_callback
from pixazo_batch.webhooks import FALLBACK_POLL_FACTOR

log = structlog.get_logger(__name__)

#: a job found finished at its first poll finished at some unknown earlier time: learn a bit less
CENSORED_SHRINK = 0.8
#: the mean of what a timestamp truncated to whole seconds leaves out
TRUNCATED_SECOND = 0.5
#: jobs of a run that scout (poll on the scouting schedule too) until one of its jobs finishes
SCOUTS = 2


def job_kind(row: JobRow) -> Kind:
    """The (resolution, duration) pair that shapes a job's expected time."""
    request = row.request
    return request.resolution.value, request.duration.value


@dataclass
class _Watch:
    """One job waiting for its next status request."""

    row: JobRow
    kind: Kind
    #: loop-clock instant the job was submitted (from its recorded wall-clock time)
    submitted: float
    #: seconds after submission of the last poll that found it unfinished
    last_miss: float | None = None
    failures: int = 0
    jitter: float = 1.0
    due: float = 0.0
    polling: bool = False
    #: the next poll was set by a back-off or a callback, not by the plan
    pinned: bool = False
    #: polls on the scouting schedule too, while this run has learned nothing
    scout: bool = False
    #: how much further apart than planned polls are (callbacks report the job)
    stretch: float = 1.0
    seq: int = field(default=0)


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
        self._stretch = FALLBACK_POLL_FACTOR if ctx.webhooks is not None else 1.0
        self._watches: dict[str, _Watch] = {}
        self._queue: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._planned_version = self.estimator.version
        self._scouts_left = SCOUTS
        if ctx.webhooks is not None:
            ctx.webhooks.box.on_delivery = self._callback_arrived

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Track each job id received until the run ends (the engine owns the stream)."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._schedule, group)
            async for job_id in jobs:
                row = self.ctx.store.get(job_id)
                assert row is not None
                if row.state is JobState.UNCERTAIN:
                    group.start_soon(self._settle_uncertain, row)
                else:
                    self._add(row)

    # --- the timer queue --------------------------------------------------------------------

    def _add(self, row: JobRow) -> None:
        assert row.submitted_at is not None
        clock = self.ctx.clock
        submitted = clock.now() - max(0.0, time.time() - row.submitted_at)
        watch = _Watch(row, job_kind(row), submitted, jitter=self._rng.uniform(1.0, 1.25))
        if row.id not in self.ctx.called_back_elsewhere:
            watch.stretch = self._stretch
        if self._scouts_left and not self._learned_this_run:
            watch.scout = True
            self._scouts_left -= 1
        self._watches[row.id] = watch
        hooks = self.ctx.webhooks
        ended = None if hooks is None else hooks.box.delivered(row.id, row.request_id or "")
        if ended is not None and ended.status.is_terminal:
            # Its callback came first (while the job was uncertain, or before this run took
            # the job in): the fallback plan would leave a finished job waiting for minutes.
            watch.pinned = True
            self._push(watch, clock.now())
            return
        self._push(watch, self._planned(watch))

    def _planned(self, watch: _Watch) -> float:
        """When the plan says the job's next poll is due (never past its deadline)."""
        estimator = self.estimator
        if watch.last_miss is None:
            after = estimator.first_poll(watch.kind)
        else:
            after = estimator.later_poll(watch.kind, watch.last_miss) * watch.jitter
        if watch.scout and not self._learned_this_run:
            after = min(after, estimator.scout_poll(watch.last_miss))
        deadline = watch.submitted + self.ctx.settings.job_deadline
        return min(watch.submitted + after * watch.stretch, deadline)

    @property
    def _learned_this_run(self) -> bool:
        return self.estimator.version > 0

    def _push(self, watch: _Watch, due: float) -> None:
        watch.due = due
        watch.seq = next(self._seq)
        heapq.heappush(self._queue, (due, watch.seq, watch.row.id))
        if self._queue[0][1] == watch.seq:
            self._wake.set()

    def _replan(self) -> None:
        """The model's scale moved: every waiting job gets a new plan."""
        self._planned_version = self.estimator.version
        self._queue = []
        for watch in self._watches.values():
            if not watch.polling:
                due = watch.due if watch.pinned else self._planned(watch)
                watch.due, watch.seq = due, next(self._seq)
                self._queue.append((due, watch.seq, watch.row.id))
        heapq.heapify(self._queue)

    def _callback_arrived(self, job_id: str, status: StatusResponse) -> None:
        """A callback says the job may be finished: poll it now."""
        watch = self._watches.get(job_id)
        if watch is None or watch.polling or not status.status.is_terminal:
            return
        if status.request_id == watch.row.request_id:
            watch.pinned = True
            self._push(watch, self.ctx.clock.now())

    async def _schedule(self, group: anyio.abc.TaskGroup) -> None:
        """Start each job's poll when it is due."""
        clock = self.ctx.clock
        while True:
            if self.estimator.version != self._planned_version:
                self._replan()
            if not self._queue:
                await self._sleep(None)
                continue
            due, seq, job_id = self._queue[0]
            watch = self._watches.get(job_id)
            if watch is None or watch.seq != seq or watch.polling:
                heapq.heappop(self._queue)  # superseded by a later plan
                continue
            now = clock.now()
            if due > now:
                await self._sleep(due - now)
                continue
            heapq.heappop(self._queue)
            watch.polling = True
            group.start_soon(self._poll, watch)

    async def _sleep(self, seconds: float | None) -> None:
        """Wait ``seconds`` (for ever when None), or until something changes the plan."""
        with anyio.move_on_after(seconds if seconds is not None else float("inf")):
            await self._wake.wait()
        self._wake = anyio.Event()

    # --- one status request -----------------------------------------------------------------

    async def _poll(self, watch: _Watch) -> None:
        outcome = await self._ask(watch)
        watch.polling = False
        if outcome is None:
            return
        self._watches.pop(watch.row.id, None)
        step = await self.ctx.router.settle(watch.row.id, outcome)
        hooks = self.ctx.webhooks
        if hooks is not None and step.action not in (Action.POLL, Action.AWAIT_CALLBACK):
            hooks.box.forget(watch.row.id)

    async def _ask(self, watch: _Watch) -> Outcome | None:
        """One status request: the outcome when the job is done (or stalled), else None with
        the next poll planned."""
        ctx, row = self.ctx, watch.row
        assert row.request_id is not None
        assert row.submitted_at is not None
        since_submit = time.time() - row.submitted_at
        if since_submit > ctx.settings.job_deadline:
            ctx.flags.stalled.append(row.id)
            log.warning("stalled", job_id=row.id, request_id=row.request_id, state="submitted")
            return Stalled(f"no terminal status in {ctx.settings.job_deadline:g} s")
        try:
            status = await ctx.gateway.status(row.request_id, row.polling_url)
        except SubmitStopError as exc:  # a quota answer: no request gets through
            ctx.flags.stop(str(exc), exc.exit_code)
            return Stalled(str(exc))
        except RequestError as exc:
            if isinstance(exc, HttpStatusError) and exc.status == 404 and exc.body.from_gateway:
                return UnknownRequest(f"the gateway does not know {row.request_id}: {exc}")
            watch.failures += 1
            watch.pinned = True
            log.info("poll_retry", job_id=row.id, request_id=row.request_id, error=str(exc))
            self._push(watch, ctx.clock.now() + self.backoff.delay(watch.failures, self._rng))
            return None
        watch.failures, watch.pinned = 0, False
        if not status.status.is_terminal:
            watch.last_miss = time.time() - row.submitted_at
            self._push(watch, self._planned(watch))
            return None
        self.estimator.observe(watch.kind, _time_to_finish(status, since_submit, watch.last_miss))
        self._wake.set()
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

    async def _settle_uncertain(self, row: JobRow) -> None:
        outcome = await await_callback(self.ctx, row, self.backoff, self._rng)
        step = await self.ctx.router.settle(row.id, outcome)
        hooks = self.ctx.webhooks
        if hooks is not None and step.action not in (Action.POLL, Action.AWAIT_CALLBACK):
            hooks.box.forget(row.id)


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
