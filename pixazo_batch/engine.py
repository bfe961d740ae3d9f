"""run_batch(): one run of the pipeline, from manifest to verified files, resumable at any instant.

The state file decides what is finished (jobs already submitted are polled, completed ones are
downloaded, never paid for again); the manifest decides what may be (re)submitted. Stages run in
one task group, joined by memory streams of job ids; when the manifest is read through and no job
is moving, the group is cancelled and the summary is derived from the state file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import aiohttp
import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from yarl import URL

from pixazo_batch.config import Settings
from pixazo_batch.context import RunContext, RunObserver, RunView
from pixazo_batch.downloader import Downloader
from pixazo_batch.errors import (
    ManifestError,
    RunStopError,
    StateError,
    StateWriteError,
    UsageError,
)
from pixazo_batch.estimator import CompletionEstimator
from pixazo_batch.fleet import watch_fleet
from pixazo_batch.gateway import GatewayClient
from pixazo_batch.governor import Clock, MonotonicClock, RateGovernor
from pixazo_batch.health import GatewayHealth
from pixazo_batch.images import InputUploader
from pixazo_batch.lifecycle import Hinted
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobState
from pixazo_batch.pgstate import PgStateStore
from pixazo_batch.pgworkers import FleetIdentity
from pixazo_batch.poller import Poller
from pixazo_batch.producer import feed
from pixazo_batch.router import Queues, Router
from pixazo_batch.runscope import open_callbacks, open_storage, write_outputs
from pixazo_batch.state import StateStore
from pixazo_batch.stopping import database_failure, first_of, log_stop, watch_signals, wind_down
from pixazo_batch.storage import Storage
from pixazo_batch.stores import open_store
from pixazo_batch.submitter import Submitter
from pixazo_batch.summary import RunSummary, summarise
from pixazo_batch.webhooks import WebhookReceiver

log = structlog.get_logger(__name__)

#: bytes aiohttp may buffer per media connection before it stops reading the socket; at the
#: default 64 KiB the socket stalls whenever a chunk is being hashed and written
MEDIA_BUFFER = 4 * 1024 * 1024


async def run_batch(
    settings: Settings,
    *,
    handle_signals: bool = False,
    on_issue: Callable[[ManifestIssue], None] | None = None,
    observer: RunObserver | None = None,
    clock: Clock | None = None,
) -> RunSummary:
    """Run the manifest to completion (or to a clean stop) and return the summary.

    ``clock`` paces back-offs, pauses and the outage deadline (tests pass a virtual one).

    Raises:
        StateLockedError: another run holds the state file.
        StateError: the state file cannot be opened, or (``StateWriteError``) its first writes
            are refused by the disk.
        ManifestError: the manifest cannot be read, or ``strict`` and a line is bad.
        UsageError: the webhook listener cannot bind its address.
    """
    if not settings.manifest.is_file():
        if settings.manifest.exists():  # a pipe, a folder: a run reads its manifest twice
            raise ManifestError(f"{settings.manifest}: not a regular file; save it as one first")
        raise ManifestError(f"{settings.manifest}: no such manifest file")
    try:
        settings.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {settings.out_dir}: {exc.strerror or exc}") from None
    with open_store(
        settings.state_location, folder=settings.out_dir, fleet=_fleet(settings)
    ) as store:
        store.begin_run()
        async with open_storage(settings) as storage, open_callbacks(settings, store) as webhooks:
            summary = await _run(
                settings,
                store,
                webhooks,
                storage,
                handle_signals=handle_signals,
                on_issue=on_issue,
                observer=observer,
                clock=clock or MonotonicClock(),
            )
            await write_outputs(settings, store, storage)
        try:
            store.end_run(summary.exit_code)
        except StateError as exc:  # the disk that stopped the run, most likely
            log.error("run_end_not_recorded", error=str(exc))
        log.info("summary", **dataclasses.asdict(summary))
        return summary


def _fleet(settings: Settings) -> FleetIdentity | None:
    """What this worker must share with the others on a state database (None for a file)."""
    if settings.state_url is None:
        return None
    return FleetIdentity(
        manifest=settings.manifest.name,
        base_url=str(URL(settings.base_url).origin()),
        api_key=settings.api_key.get_secret_value(),
        max_in_flight=settings.max_in_flight,
        worker_timeout=settings.worker_timeout,
    )


@contextlib.asynccontextmanager
async def one_off_client(settings: Settings) -> AsyncIterator[GatewayClient]:
    """A gateway client for one command outside a run (``resolve``), paced like a run's."""
    clock = MonotonicClock()
    health = GatewayHealth(outage_deadline=settings.outage_deadline, clock=clock)
    governor = RateGovernor(settings.rps, clock=clock)
    key = settings.api_key.get_secret_value()
    async with GatewayClient(
        settings.base_url, key, governor, health, retry_after_cap=settings.retry_after_cap
    ) as gateway:
        yield gateway


async def _run(
    settings: Settings,
    store: StateStore,
    webhooks: WebhookReceiver | None,
    storage: Storage | None,
    *,
    handle_signals: bool,
    on_issue: Callable[[ManifestIssue], None] | None,
    observer: RunObserver | None,
    clock: Clock,
) -> RunSummary:
    issues: list[str] = []
    stopped_by: RunStopError | None = None
    governor = RateGovernor(settings.rps, clock=clock)
    health = GatewayHealth(outage_deadline=settings.outage_deadline, clock=clock)
    origin = str(URL(settings.base_url).origin())
    _honour_earlier_pause(store, governor, origin)
    submit_send, submit_receive = anyio.create_memory_object_stream[str](math.inf)
    poll_send, poll_receive = anyio.create_memory_object_stream[str](math.inf)
    download_send, download_receive = anyio.create_memory_object_stream[str](math.inf)
    gateway = GatewayClient(
        settings.base_url,
        settings.api_key.get_secret_value(),
        governor,
        health,
        concurrency=settings.concurrency,
        submit_timeout=settings.submit_timeout,
        retry_after_cap=settings.retry_after_cap,
        on_pause=lambda until: _remember_pause(store, origin, until),
    )
    router = Router(
        store, Queues(submit_send, poll_send, download_send), max_in_flight=settings.max_in_flight
    )
    async with (
        gateway,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(sock_read=settings.download_stall, connect=30),
            read_bufsize=MEDIA_BUFFER,
        ) as media,
        submit_send,
        poll_send,
        download_send,
    ):
        ctx = RunContext(
            settings=settings,
            store=store,
            gateway=gateway,
            media=media,
            router=router,
            health=health,
            clock=clock,
            webhooks=webhooks,
            bucket=settings.bucket,
            storage=storage,
            uploader=_uploader(settings, store, storage, clock),
        )
        estimator = _learned_estimator(settings, store, origin)
        # The signal watcher lives outside the pipeline's scope, so it still hears a second
        # signal while the first one's cancellation waits for POSTs on the wire.
        async with anyio.create_task_group() as guard:
            pipeline = anyio.CancelScope()
            if handle_signals:
                guard.start_soon(watch_signals, ctx, pipeline)
            downloader = Downloader(ctx)
            if observer is not None:
                guard.start_soon(observer.watch, _view(ctx, governor, estimator, downloader))
            try:
                # The engine, not the stages, owns the receive ends: a stage that fails must not
                # close its queue under a sender and bury the real error under a broken stream.
                with pipeline, submit_receive, poll_receive, download_receive:
                    async with anyio.create_task_group() as group:
                        for _ in range(settings.concurrency):
                            group.start_soon(Submitter(ctx).run, submit_receive)
                        group.start_soon(Poller(ctx, estimator=estimator).run, poll_receive)
                        downloader.start(group, download_receive)
                        if webhooks is not None:
                            group.start_soon(webhooks.adopt_hinted, partial(_adopt, ctx))
                        if isinstance(store, PgStateStore) and store.worker is not None:
                            idle = partial(_idle_receivers, download_send)
                            group.start_soon(watch_fleet, ctx, store, governor, origin, idle)
                        group.start_soon(feed, ctx, issues, on_issue)
                        await router.settled.wait()
                        group.cancel_scope.cancel()
            except* RunStopError as group_error:
                stopped_by = first_of(group_error, RunStopError)
                log_stop(stopped_by, ctx)
            except* store.database_errors as group_error:
                failed = first_of(group_error, Exception)
                stopped_by = database_failure(store, failed)
                log_stop(stopped_by, ctx)
            finally:
                guard.cancel_scope.cancel()
    await wind_down(store, router, origin, estimator)
    if isinstance(stopped_by, ManifestError):
        raise stopped_by
    return summarise(ctx.store, ctx.flags, issues, stopped_by)


def _idle_receivers(stream: MemoryObjectSendStream[str]) -> int:
    """How many of a stage's workers wait for a job with none queued."""
    statistics = stream.statistics()
    return max(0, statistics.tasks_waiting_receive - statistics.current_buffer_used)


def _view(
    ctx: RunContext, governor: RateGovernor, estimator: CompletionEstimator, downloader: Downloader
) -> RunView:
    """What an observer of this run may read."""

    def outages() -> list[GatewayHealth]:  # the media hosts and buckets waited for
        gates = downloader.gates()
        if ctx.uploader is not None:
            gates.append(ctx.uploader.bucket)
        return [gate for gate in gates if not gate.sound]

    return RunView(ctx.settings, ctx.store, ctx.gateway, governor, ctx.health, estimator, outages)


def _uploader(
    settings: Settings, store: StateStore, storage: Storage | None, clock: Clock
) -> InputUploader | None:
    """What uploads local images and signs their URLs, when an inputs bucket is known."""
    where = settings.inputs_bucket
    if storage is None or where is None:
        return None
    return InputUploader(
        storage, where, store.input_path, settings.job_deadline,
        outage_deadline=settings.outage_deadline, clock=clock,
    )  # fmt: skip


async def _adopt(ctx: RunContext, job_id: str) -> None:
    """Take in an uncertain job a callback named a request for while this run goes on."""
    row = ctx.store.get(job_id)
    if row is not None and row.state is JobState.UNCERTAIN:
        await ctx.router.admit(row, Hinted())


def _honour_earlier_pause(store: StateStore, governor: RateGovernor, origin: str) -> None:
    """Wait out what is left of a pause the gateway announced to an earlier run."""
    until = store.pause_until(origin)
    left = 0.0 if until is None else until - time.time()
    if left > 0:
        log.warning("waiting_retry_after", wait_s=round(left, 1), reason="announced earlier")
        governor.hold(left)


def _remember_pause(store: StateStore, origin: str, until: float) -> None:
    try:
        store.remember_pause(origin, until)
    except StateWriteError as exc:  # the pause itself is honoured; only later runs miss it
        log.warning("pause_not_recorded", error=str(exc))


def _learned_estimator(settings: Settings, store: StateStore, origin: str) -> CompletionEstimator:
    """An estimator that starts from what earlier runs learned of this gateway's speed."""
    return CompletionEstimator(settings.poll_interval, store.speed_scales(origin))
