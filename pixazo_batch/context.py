"""What the pipeline stages share during one run: store, client, queues and flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import anyio
from anyio.streams.memory import MemoryObjectSendStream

from pixazo_batch.config import Settings
from pixazo_batch.gateway import GatewayClient
from pixazo_batch.state import StateStore
from pixazo_batch.webhooks import WebhookReceiver


class Ledger:
    """Counts the jobs still moving through this run.

    A job enters when it is sent to a stage and leaves when it comes to rest for this run
    (downloaded, failed, held uncertain, stalled, or stopped). ``settled`` fires once the
    manifest has been read through and nothing is moving: the run's work is done.
    """

    def __init__(self) -> None:
        self.moving = 0
        self.intake_closed = False
        self.settled = anyio.Event()

    def enter(self) -> None:
        """A job starts moving."""
        self.moving += 1

    def leave(self) -> None:
        """A job comes to rest."""
        self.moving -= 1
        self._check()

    def close_intake(self) -> None:
        """No more jobs will enter."""
        self.intake_closed = True
        self._check()

    def _check(self) -> None:
        if self.intake_closed and self.moving == 0:
            self.settled.set()


@dataclass
class RunFlags:
    """Why the run stopped early, if it did."""

    #: set when no more jobs may be submitted (402, quota, budget, signal), with the reason
    stop_submitting: str | None = None
    interrupted: bool = False
    stalled: list[str] = field(default_factory=list)

    def stop(self, reason: str) -> None:
        """Stop submitting; the first reason given is kept."""
        if self.stop_submitting is None:
            self.stop_submitting = reason


@dataclass
class Queues:
    """Send ends of the stage queues; each carries job ids."""

    submit: MemoryObjectSendStream[str]
    poll: MemoryObjectSendStream[str]
    download: MemoryObjectSendStream[str]


@dataclass
class RunContext:
    """Everything a stage needs; built by the engine, one per run."""

    settings: Settings
    store: StateStore
    gateway: GatewayClient
    media: aiohttp.ClientSession
    queues: Queues
    ledger: Ledger = field(default_factory=Ledger)
    flags: RunFlags = field(default_factory=RunFlags)
    in_flight: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))
    #: cancel scopes of POSTs in flight; a signal gives them a deadline instead of cancelling them
    open_posts: set[anyio.CancelScope] = field(default_factory=set)
    #: the callback listener, when ``--webhook-url`` is set
    webhooks: WebhookReceiver | None = None
