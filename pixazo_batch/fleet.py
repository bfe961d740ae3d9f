"""The fleet: what a worker does beside its stages when several share one state database.

While the run goes on it beats its heart, takes over the work of workers gone silent past
``--worker-timeout`` (``pgstate.PgStateStore.reap_and_adopt``), shares the key's request rate
with the living (each takes ``--rps`` divided by their number) and honours at once a pause
any of them was told (a 429's Retry-After, kept in ``pauses``). See ``docs/design.md``, "A
fleet of workers".
"""

from __future__ import annotations

import time

import structlog

from pixazo_batch.context import RunContext
from pixazo_batch.governor import RateGovernor
from pixazo_batch.lifecycle import Resumed
from pixazo_batch.pgstate import PgStateStore

log = structlog.get_logger(__name__)

#: how often a worker looks for a pause another worker was told (seconds)
PAUSE_LOOK = 0.1
#: heartbeats a worker beats within the timeout
BEATS_PER_TIMEOUT = 5


def fleet_store(ctx: RunContext) -> PgStateStore | None:
    """The run's state database when this run is a worker of a fleet, else None."""
    store = ctx.store
    return store if isinstance(store, PgStateStore) and store.worker is not None else None


def beat_interval(ctx: RunContext) -> float:
    """Seconds between two heartbeats."""
    return ctx.settings.worker_timeout / BEATS_PER_TIMEOUT


async def adopt_orphans(ctx: RunContext, store: PgStateStore) -> int:
    """Reap silent workers and take in the submitted and completed jobs nobody living holds;
    returns how many were taken in."""
    rows = store.reap_and_adopt(ctx.settings.worker_timeout)
    for row in rows:
        await ctx.router.admit(row, Resumed(file_present=False))
    if rows:
        log.warning("jobs_adopted", count=len(rows), worker=store.worker)
    return len(rows)


async def wait_for_silent_workers(ctx: RunContext, store: PgStateStore) -> None:
    """Before this worker's intake closes: wait while another worker holding jobs is silent
    (dead or not, the timeout tells), taking in its jobs if it is declared dead."""
    interval = beat_interval(ctx)
    while store.silent_holders(2 * interval):
        log.info("waiting_for_silent_worker", timeout_s=ctx.settings.worker_timeout)
        await ctx.clock.sleep(interval)
        await adopt_orphans(ctx, store)


async def watch_fleet(
    ctx: RunContext, store: PgStateStore, governor: RateGovernor, origin: str
) -> None:
    """Heartbeats, adoption, the rate share and shared pauses, until the run ends.

    Raises:
        WorkerFencedError: the fleet took this worker for dead (the run must stop).
    """
    interval = beat_interval(ctx)
    next_beat = 0.0
    while True:
        now = ctx.clock.now()
        if now >= next_beat:
            store.heartbeat()
            await adopt_orphans(ctx, store)
            living = max(1, len(store.live_workers()))
            governor.share(ctx.settings.rps / living)
            next_beat = now + interval
        until = store.pause_until(origin)
        left = 0.0 if until is None else until - time.time()
        if left > 0 and governor.clock.now() + left > governor.paused_until + 0.01:
            log.info("fleet_pause", wait_s=round(left, 2))
            governor.hold(left)
        await ctx.clock.sleep(PAUSE_LOOK)
