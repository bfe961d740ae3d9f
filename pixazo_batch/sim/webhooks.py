"""Webhook delivery of the simulated gateway: ``terminal`` and ``sync`` modes, with duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from pixazo_batch.sim.jobs import SimJob, status_body
from pixazo_batch.sim.outbound import Outbound
from pixazo_batch.sim.state import SimState

#: deliveries to one job stop after this many failed POSTs in a row, as the real queue may
MAX_CONSECUTIVE_FAILURES = 3
#: ``sync`` mode caps the gateway's refresh delay at 15 s (before time scaling)
SYNC_TICK_CAP = 15.0


class WebhookSender(Outbound):
    """Posts status callbacks for jobs submitted with ``X-Webhook-URL``."""

    def __init__(self, state: SimState) -> None:
        super().__init__(timeout=5)
        self.state = state
        self.media_url: Callable[[SimJob], str | None] = lambda job: None

    def schedule(self, job: SimJob) -> None:
        """Start delivering callbacks for ``job`` in the background."""
        if job.webhook_mode == "sync":
            job.tick = min(job.tick, self.state.scenario.seconds(SYNC_TICK_CAP))
        self.start(self._deliver(job))

    async def _deliver(self, job: SimJob) -> None:
        state = self.state
        failures = 0
        while failures < MAX_CONSECUTIVE_FAILURES:
            now = state.now()
            terminal_at = job.visible(job.finished)
            if job.webhook_mode == "sync" and job.tick > 0 and now < terminal_at:
                wake = min(terminal_at, job.visible(now + job.tick / 2))
            else:
                wake = terminal_at
            await asyncio.sleep(max(0.0, wake - now))
            body = status_body(job, state.now(), self.media_url(job))
            copies = (
                2 if state.draw("webhook_duplicate", state.scenario.webhook_duplicate_rate) else 1
            )
            for _ in range(copies):
                failures = 0 if await self._post(job, body) else failures + 1
            if job.status_at(state.now()).is_terminal:
                return

    async def _post(self, job: SimJob, body: dict[str, object]) -> bool:
        assert job.webhook_url is not None
        self.state.stats.webhooks_sent += 1
        try:
            async with self.session.post(job.webhook_url, json=body) as response:
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False
