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
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import structlog
from pydantic import ValidationError
from yarl import URL

from pixazo_batch.errors import UsageError
from pixazo_batch.models import JobState, StatusResponse
from pixazo_batch.state import StateStore

if TYPE_CHECKING:
    from aiohttp import web

log = structlog.get_logger(__name__)

#: with webhooks on, polls are this many times further apart: a fallback, not the main path
FALLBACK_POLL_FACTOR = 4.0


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


class CallbackBox:
    """Statuses delivered by callbacks, waiting for the job's tracker to read them."""

    def __init__(self) -> None:
        self._boxes: dict[str, _Mailbox] = {}

    def deliver(self, job_id: str, status: StatusResponse) -> bool:
        """Keep ``status`` as the latest of its request and wake the job's tracker. Returns
        False (and does nothing) for a repeat of the status already held for that request."""
        box = self._boxes.setdefault(job_id, _Mailbox())
        held = box.statuses.get(status.request_id)
        if held is not None and held.status is status.status:
            return False
        box.statuses[status.request_id] = status
        box.arrived.set()
        box.arrived = anyio.Event()
        return True

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

    def request_ids(self, job_id: str) -> list[str]:
        """Every request a callback has named for the job, in arrival order."""
        box = self._boxes.get(job_id)
        return [] if box is None else list(box.statuses)

    def forget(self, job_id: str) -> None:
        """Drop what is held for a job that has left the poller."""
        self._boxes.pop(job_id, None)


class WebhookReceiver:
    """Issues callback URLs and listens for the gateway's callbacks during one run.

    Usage: ``async with WebhookReceiver(store, url, "127.0.0.1:8787", "terminal") as hooks:``
    then ``hooks.url_for(job_id)`` for each submission.

    Raises:
        UsageError: from ``__aenter__`` when the listen address cannot be bound.
    """

    def __init__(self, store: StateStore, public_url: str, listen: str, mode: str) -> None:
        self.store = store
        self.public_url = URL(public_url)
        self.mode = mode
        self.box = CallbackBox()
        host, _, port = listen.rpartition(":")
        self._host, self._port = host.strip("[]") or "127.0.0.1", int(port)
        self._run_id = store.run_id
        self._secret = new_secret()
        self._secrets = store.webhook_secrets()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> WebhookReceiver:
        from aiohttp import web  # noqa: PLC0415  (a server only for runs that ask for callbacks)

        #: ids of uncertain jobs a callback named a request for (the engine adopts them)
        self.hints, self._hint_reader = anyio.create_memory_object_stream[str](1000)
        self.store.add_webhook_secret(self._secret)
        self._secrets[self._run_id] = self._secret
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/{tail:.*}", self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self.hints.close()
            self._hint_reader.close()
            raise UsageError(f"--webhook-listen {self._host}:{self._port}: {exc}") from exc
        log.info("webhooks_listening", host=self._host, port=self._port, mode=self.mode)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.hints.close()
        self._hint_reader.close()
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
            status = StatusResponse.model_validate_json(await request.read())
        except ValidationError as exc:
            log.warning("webhook_unreadable", job_id=job_id, error=str(exc).splitlines()[0])
            return web.Response(status=400, text="not a status body")
        if not self.box.deliver(job_id, status):
            return web.Response(text="duplicate")
        log.info(
            "webhook",
            job_id=job_id,
            request_id=status.request_id,
            remote_status=status.status.value,
        )
        row = self.store.get(job_id)
        if row is not None and row.state is JobState.UNCERTAIN:
            # Durable before the 200: once answered, the gateway may never say it again.
            self.store.keep_callback(job_id, status.request_id)
            log.info("callback_kept", job_id=job_id, request_id=status.request_id)
            with contextlib.suppress(anyio.WouldBlock):
                self.hints.send_nowait(job_id)  # when full, the next run adopts it
        return web.Response(text="ok")


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return None
