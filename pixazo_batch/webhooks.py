"""Webhooks: the gateway calls us back when a job moves, so polling becomes a slow fallback.

Each submit carries ``X-Webhook-URL``: the operator's public URL (which must reach the listener)
with our job id, the run and a signature in its query string. The signature is an HMAC of the job
id under a secret made for each run and kept in the state file, so a callback for a job
submitted by an earlier run is still recognised, and a callback that names a job it was not
issued for is refused. The gateway may deliver a callback more than once; a repeat of the status
already seen for a request changes nothing.

A callback names both our job and the gateway's request_id. That is what lets it resolve an
**uncertain** job (a POST whose answer was lost) without paying for it again: the request it
names is kept in the state file as a hint before the callback is answered, and the poller
attaches it to the job once a status request confirms it (``docs/design.md``, "Webhooks").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import anyio
import structlog
from pydantic import ValidationError
from yarl import URL

from pixazo_batch.errors import StateError, UsageError
from pixazo_batch.gateway import usable_request_id
from pixazo_batch.listener import BoundedListener
from pixazo_batch.models import JobState, StatusResponse
from pixazo_batch.state import StateStore

if TYPE_CHECKING:
    from aiohttp import web

log = structlog.get_logger(__name__)

#: with webhooks on, polls are this many times further apart: a fallback, not the main path
FALLBACK_POLL_FACTOR = 4.0
#: the largest callback body read (a status answer is a few hundred bytes)
MAX_BODY = 64 << 10
#: seconds a callback may take to send its body
BODY_SECONDS = 10.0
#: requests held per job, and statuses held in all, before callbacks are refused (429)
MAX_PER_JOB = 8
MAX_HELD = 10_000


def new_secret() -> str:
    """A fresh per-run signing secret."""
    return secrets.token_urlsafe(32)


def signature(secret: str, job_id: str) -> str:
    """The signature that proves a callback URL was issued for ``job_id``."""
    return hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class _Mailbox:
    """The latest status delivered for each request of one job, and an event that fires on
    each new one."""

    statuses: dict[str, StatusResponse] = field(default_factory=dict)
    arrived: anyio.Event = field(default_factory=anyio.Event)


class Delivery(Enum):
    """What became of a delivered status."""

    #: kept, and the job's tracker woken
    NEW = "new"
    #: a repeat of the status already held for that request: nothing changed
    DUPLICATE = "duplicate"
    #: refused: the box holds as much as it may
    FULL = "full"


class CallbackBox:
    """Statuses delivered by callbacks, waiting for the job's tracker to read them; bounded
    per job and in all, so callbacks cannot fill memory."""

    def __init__(self, *, per_job: int = MAX_PER_JOB, total: int = MAX_HELD) -> None:
        self._boxes: dict[str, _Mailbox] = {}
        self._per_job, self._total = per_job, total
        self._held = 0
        #: told of each new status as it is kept (the poll scheduler brings that poll forward)
        self.on_delivery: Callable[[str, StatusResponse], None] | None = None

    def deliver(self, job_id: str, status: StatusResponse) -> Delivery:
        """Keep ``status`` as the latest of its request and wake the job's tracker."""
        box = self._boxes.get(job_id)
        held = None if box is None else box.statuses.get(status.request_id)
        if held is not None and held.status is status.status:
            return Delivery.DUPLICATE
        if held is None and (
            self._held >= self._total or (box is not None and len(box.statuses) >= self._per_job)
        ):
            return Delivery.FULL
        box = self._boxes.setdefault(job_id, _Mailbox())
        self._held += held is None
        box.statuses[status.request_id] = status
        box.arrived.set()
        box.arrived = anyio.Event()
        if self.on_delivery is not None:
            self.on_delivery(job_id, status)
        return Delivery.NEW

    async def wait(
        self, job_id: str, wanted: Callable[[StatusResponse], bool], patience: float
    ) -> StatusResponse | None:
        """The first delivered status of the job that is ``wanted``, waiting up to ``patience``
        seconds for one; None when the time is up."""
        box = self._boxes.setdefault(job_id, _Mailbox())
        with anyio.move_on_after(max(0.0, patience)):
            while True:
                for status in box.statuses.values():
                    if wanted(status):
                        return status
                await box.arrived.wait()
        return None

    def delivered(self, job_id: str, request_id: str) -> StatusResponse | None:
        """The latest status a callback delivered for the job's request, if any."""
        box = self._boxes.get(job_id)
        return None if box is None else box.statuses.get(request_id)

    def request_ids(self, job_id: str) -> list[str]:
        """Every request a callback has named for the job, in arrival order."""
        box = self._boxes.get(job_id)
        return [] if box is None else list(box.statuses)

    def forget(self, job_id: str) -> None:
        """Drop what is held for a job that has left the poller."""
        box = self._boxes.pop(job_id, None)
        if box is not None:
            self._held -= len(box.statuses)


class WebhookReceiver:
    """Issues callback URLs and listens for the gateway's callbacks during one run.

    Usage: ``async with WebhookReceiver(store, url, "127.0.0.1:8787", "terminal") as hooks:``
    then ``hooks.url_for(job_id)`` for each submission.

    Raises:
        UsageError: from ``__aenter__`` when the listen address cannot be bound.
    """

    def __init__(
        self,
        store: StateStore,
        public_url: str,
        listen: str,
        mode: str,
        *,
        secret_ttl: float = 7 * 86400,
    ) -> None:
        self.store = store
        self.public_url = URL(public_url)
        self.mode = mode
        self.box = CallbackBox()
        host, _, port = listen.rpartition(":")
        self._host, self._port = host.strip("[]") or "127.0.0.1", int(port)
        self._run_id = store.run_id
        self._secret = new_secret()
        # The secrets of earlier runs still recognise their late callbacks, for a while only.
        self._secrets = store.webhook_secrets(newer_than=time.time() - secret_ttl)
        self._runner: web.AppRunner | None = None
        self._listener: BoundedListener | None = None

    async def __aenter__(self) -> WebhookReceiver:
        from aiohttp import web  # noqa: PLC0415  (a server only for runs that ask for callbacks)

        #: ids of uncertain jobs a callback named a request for (the engine adopts them)
        self.hints, self._hint_reader = anyio.create_memory_object_stream[str](1000)
        self.store.add_webhook_secret(self._secret)
        self._secrets[self._run_id] = self._secret
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/{tail:.*}", self._callback)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            self._listener = await BoundedListener(
                self._runner, self._host, self._port
            ).__aenter__()
        except OSError as exc:
            await self._runner.cleanup()
            self.hints.close()
            self._hint_reader.close()
            taken = ""
            if exc.errno == errno.EADDRINUSE:
                taken = " (another run listens there: each worker of a fleet needs its own)"
            raise UsageError(f"--webhook-listen {self._host}:{self._port}: {exc}{taken}") from exc
        log.info("webhooks_listening", host=self._host, port=self._port, mode=self.mode)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.hints.close()
        self._hint_reader.close()
        if self._listener is not None:
            await self._listener.__aexit__(None, None, None)
        if self._runner is not None:
            with anyio.CancelScope(shield=True):
                await self._runner.cleanup()

    async def adopt_hinted(self, adopt: Callable[[str], Awaitable[object]]) -> None:
        """Pass each uncertain job a callback named a request for to ``adopt``, until the run
        ends."""
        async for job_id in self._hint_reader:
            await adopt(job_id)

    def url_for(self, job_id: str) -> str:
        """The ``X-Webhook-URL`` for one job's submission."""
        query = {"job": job_id, "run": str(self._run_id), "sig": signature(self._secret, job_id)}
        return str(self.public_url.update_query(query))

    async def _callback(self, request: web.Request) -> web.Response:
        from aiohttp import web  # noqa: PLC0415  (loaded by __aenter__ already)

        job_id = request.query.get("job", "")
        run = _int_or_none(request.query.get("run"))
        secret = None if run is None else self._secrets.get(run)
        offered = request.query.get("sig", "").encode()
        if secret is None or not hmac.compare_digest(offered, signature(secret, job_id).encode()):
            log.warning("webhook_refused", job_id=job_id or None, http_status=403)
            return web.Response(status=403, text="unknown signature")
        try:
            with anyio.fail_after(BODY_SECONDS):
                body = await request.read()
            status = StatusResponse.model_validate_json(body)
        except TimeoutError:
            log.warning("webhook_too_slow", job_id=job_id, http_status=408)
            return web.Response(status=408, text="too slow")
        except web.HTTPRequestEntityTooLarge:
            log.warning("webhook_too_large", job_id=job_id, http_status=413)
            return web.Response(status=413, text="too large")
        except (ValidationError, web.HTTPException) as exc:
            log.warning("webhook_unreadable", job_id=job_id, error=str(exc).splitlines()[0])
            return web.Response(status=400, text="not a status body")
        if not usable_request_id(status.request_id):
            log.warning("webhook_unreadable", job_id=job_id, error="not a request id")
            return web.Response(status=400, text="not a request id")
        delivery = self.box.deliver(job_id, status)
        if delivery is Delivery.FULL:
            log.warning("webhook_overflow", job_id=job_id, http_status=429)
            return web.Response(status=429, text="too many callbacks held")
        if delivery is Delivery.DUPLICATE:
            return web.Response(text="duplicate")
        log.info(
            "webhook",
            job_id=job_id,
            request_id=status.request_id,
            remote_status=status.status.value,
        )
        return self._keep_if_uncertain(job_id, status.request_id)

    def _keep_if_uncertain(self, job_id: str, request_id: str) -> web.Response:
        """Keep a callback that names a request for an uncertain job, durably, before the 200:
        once answered, the gateway may never say it again."""
        from aiohttp import web  # noqa: PLC0415  (loaded by __aenter__ already)

        row = self.store.get(job_id)
        if row is None or row.state is not JobState.UNCERTAIN:
            return web.Response(text="ok")
        try:
            self.store.keep_callback(job_id, request_id)
        except StateError as exc:
            log.error("callback_not_kept", job_id=job_id, request_id=request_id, error=str(exc))
            return web.Response(status=503, text="try again")
        log.info("callback_kept", job_id=job_id, request_id=request_id)
        with contextlib.suppress(anyio.WouldBlock):
            self.hints.send_nowait(job_id)  # when full, the next run adopts it
        return web.Response(text="ok")


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return None
