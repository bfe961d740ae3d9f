"""What the pipeline stages share during one run: store, clients, router, clock and stop flags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import anyio

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.config import Settings
from pixazo_batch.errors import EXIT_INCOMPLETE
from pixazo_batch.estimator import CompletionEstimator
from pixazo_batch.gateway import GatewayClient
from pixazo_batch.governor import Clock, RateGovernor
from pixazo_batch.health import GatewayHealth
from pixazo_batch.images import InputUploader
from pixazo_batch.router import Router
from pixazo_batch.state import StateStore
from pixazo_batch.storage import Storage
from pixazo_batch.webhooks import WebhookReceiver


@dataclass
class StopFlags:
    """Why the run stops early, if it does."""

    #: set when no more jobs may be submitted (402, quota, budget, a setting, a signal)
    stop_submitting: str | None = None
    #: the exit code the reason for stopping calls for
    stop_exit_code: int = EXIT_INCOMPLETE
    interrupted: bool = False
    stalled: list[str] = field(default_factory=list)

    def stop(self, reason: str, exit_code: int = EXIT_INCOMPLETE) -> bool:
        """Stop submitting; the first reason given is kept. Returns True the first time."""
        if self.stop_submitting is not None:
            return False
        self.stop_submitting = reason
        self.stop_exit_code = exit_code
        return True


@dataclass
class RunContext:
    """Everything a stage needs; built by the engine, one per run."""

    settings: Settings
    store: StateStore
    gateway: GatewayClient
    media: aiohttp.ClientSession
    router: Router
    health: GatewayHealth
    clock: Clock
    flags: StopFlags = field(default_factory=StopFlags)
    #: cancel scopes of POSTs on the wire: from their write-ahead until their outcome is
    #: recorded (the price they commit may yet be freed); a signal gives them the stop deadline
    posts_on_wire: set[anyio.CancelScope] = field(default_factory=set)
    #: the callback listener, when ``--webhook-url`` is set
    webhooks: WebhookReceiver | None = None
    #: jobs whose callbacks go to another worker's listener (adopted from a dead worker of a
    #: fleet): polled on the usual plan, not the slower fallback one
    called_back_elsewhere: set[str] = field(default_factory=set)
    #: the bucket videos go to (``--out s3://...``), with its client
    bucket: BucketPath | None = None
    storage: Storage | None = None
    #: turns local images into presigned URLs just before a POST (``--inputs``)
    uploader: InputUploader | None = None
    _post_ended: anyio.Event = field(default_factory=anyio.Event)

    def post_ended(self, scope: anyio.CancelScope) -> None:
        """A POST's outcome (answered, lost or refused) is recorded."""
        self.posts_on_wire.discard(scope)
        self._post_ended.set()
        self._post_ended = anyio.Event()

    async def next_post_end(self) -> None:
        """Wait until the outcome of some POST now on the wire is recorded."""
        await self._post_ended.wait()


@dataclass(frozen=True)
class RunView:
    """What an observer (the progress display) may read while a run goes on; it writes
    nothing."""

    settings: Settings
    store: StateStore
    gateway: GatewayClient
    governor: RateGovernor
    health: GatewayHealth
    estimator: CompletionEstimator
    #: the other services (media hosts, buckets) the run is waiting for, as it goes
    outages: Callable[[], list[GatewayHealth]] = list


class RunObserver(Protocol):
    """Something that watches a run from the side (a progress display)."""

    async def watch(self, view: RunView) -> None:
        """Observe until cancelled."""
        ...
