"""The fleet: what a worker does beside its stages when several share one state database.

While the run goes on it beats its heart, takes over the work of workers gone silent past
``--worker-timeout`` (``pgworkers.WorkerRoster.reap_and_adopt``), takes videos nobody downloads
yet when its downloaders are idle, stops waiting for jobs it queued to send that others sent,
shares the key's request rate with the living (in proportion to the jobs each holds) and
honours at once a pause any of them was told (a 429's Retry-After, kept in ``pauses``). See
``docs/design.md``, "A fleet of workers".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from pixazo_batch.context import RunContext
from pixazo_batch.governor import RateGovernor
from pixazo_batch.lifecycle import SENDABLE, Resumed
from pixazo_batch.models import JobState
from pixazo_batch.pgstate import PgStateStore
from pixazo_batch.router import Router
from pixazo_batch.statereader import StateReader

log = structlog.get_logger(__name__)

#: how often a worker looks for a pause another worker was told (seconds)
PAUSE_LOOK = 0.1
#: heartbeats a worker beats within the timeout
BEATS_PER_TIMEOUT = 5
#: how often a worker works out its part of the key's rate again (seconds, on the database's
#: clock: every worker does it at the same instants)
SHARE_EVERY = 1.0
#: how long after a share tick a worker wakes for it (the database's clock read a moment ago)
TICK_SLACK = 0.005
#: a worker's weight in the rate share, beside one per job it holds
IDLE_WEIGHT = 0.02
#: job ids looked up in one query
LOOKUP_BATCH = 500
#: how often a worker with nothing of its own left looks whether the fleet still works
STAY_LOOK = 0.2


def fleet_store(ctx: RunContext) -> PgStateStore | None:
    """The run's state database when this run is a worker of a fleet, else None."""
    store = ctx.store
    return store if isinstance(store, PgStateStore) and store.worker is not None else None


def beat_interval(ctx: RunContext) -> float:
    """Seconds between two heartbeats."""
    return ctx.settings.worker_timeout / BEATS_PER_TIMEOUT


async def adopt_orphans(ctx: RunContext, store: PgStateStore) -> int:
    """Reap silent workers and take in the submitted and completed jobs nobody living holds;
    returns how many were taken in (none once this run has settled: they would not move)."""
    if ctx.router.settled.is_set():
        return 0
    rows = store.reap_and_adopt(ctx.settings.worker_timeout)
    for row in rows:
        ctx.called_back_elsewhere.add(row.id)
        await ctx.router.admit(row, Resumed(file_present=False))
    if rows:
        log.warning("jobs_adopted", count=len(rows), worker=store.worker)
    return len(rows)


async def wait_for_silent_workers(ctx: RunContext, store: PgStateStore) -> None:
    """Before this worker's intake closes: stay while another worker holding jobs is silent
    (dead or not, the timeout tells, and its jobs are taken in if it is dead), and while the
    living ones have jobs rendering or videos nobody downloads yet (this worker's idle
    downloaders take those)."""
    interval = beat_interval(ctx)
    while True:
        silent = store.silent_holders(2 * interval)
        if not silent and not store.others_have_work():
            return
        if silent:
            log.info("waiting_for_silent_worker", timeout_s=ctx.settings.worker_timeout)
        await ctx.clock.sleep(STAY_LOOK)
        await adopt_orphans(ctx, store)


def rate_share(store: PgStateStore, rps: float) -> float | None:
    """This worker's part of the key's rate in this tick of the fleet's clock: in proportion to
    the jobs it holds (each job's polls go through its holder), with a small even part so a
    worker holding none can start. None while another worker works the parts out."""
    part = store.rate_part(SHARE_EVERY, IDLE_WEIGHT)
    return None if part is None else rps * part


def let_go_of_jobs_sent_elsewhere(router: Router, store: StateReader) -> None:
    """Jobs this worker queued to send that another worker has sent: the run stops waiting for
    them (its submitters may wait seconds for a token at a small share of the key's rate
    before they find out). A job being sent (``submitting``) is left: it may be this
    worker's own POST, still on the wire."""
    waiting = router.waiting_to_send()
    for start in range(0, len(waiting), LOOKUP_BATCH):
        chunk = waiting[start : start + LOOKUP_BATCH]
        rows = store.get_many(chunk)
        for job_id in chunk:
            row = rows.get(job_id)
            if row is not None and row.state not in (*SENDABLE, JobState.SUBMITTING):
                router.let_go(job_id)


async def watch_fleet(
    ctx: RunContext,
    store: PgStateStore,
    governor: RateGovernor,
    origin: str,
    idle_downloaders: Callable[[], int],
) -> None:
    """Heartbeats, adoption, the rate share, shared pauses and downloads for idle
    downloaders, until the run ends.

    Raises:
        WorkerFencedError: the fleet took this worker for dead (the run must stop).
    """
    interval = beat_interval(ctx)
    rps = ctx.settings.rps
    # Every worker shares on the same ticks of the database's clock, from one picture of the
    # fleet (``rate_part``): their parts add up to the key's rate, and one that joins waits
    # for the next tick to get a part.
    tick: float | None = store.look(origin).db_clock // SHARE_EVERY
    first = rate_share(store, rps)
    if first is not None:
        governor.share(first)
    else:
        tick = None  # ask again at once; nothing at the whole key's rate meanwhile
        governor.share(0.0)
    next_beat = 0.0
    while True:
        now = ctx.clock.now()
        if now >= next_beat:
            store.heartbeat()
            await adopt_orphans(ctx, store)
            next_beat = now + interval
        seen = store.look(origin)
        this_tick = seen.db_clock // SHARE_EVERY
        if this_tick != tick and (share := rate_share(store, rps)) is not None:
            governor.share(share)
            if tick is not None:
                let_go_of_jobs_sent_elsewhere(ctx.router, store)
            tick = this_tick
        idle = idle_downloaders()
        # Once the run has settled nothing taken in would be downloaded: leave it to others.
        if idle and not ctx.router.settled.is_set():
            for row in store.claim_completed(idle):
                if not await ctx.router.take_over(row):
                    store.release(row.id)
        until = seen.pause_until
        left = 0.0 if until is None else until - time.time()
        if left > 0 and governor.clock.now() + left > governor.paused_until + 0.01:
            log.info("fleet_pause", wait_s=round(left, 2))
            governor.hold(left)
        to_tick = (this_tick + 1) * SHARE_EVERY - seen.db_clock
        if tick != this_tick:  # another worker was working the parts out: ask again soon
            to_tick = 0.0
        await ctx.clock.sleep(min(PAUSE_LOOK, to_tick + TICK_SLACK))
