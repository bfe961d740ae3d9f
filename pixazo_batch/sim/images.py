"""The simulated model reads its input images, as the real one does: each image URL of an
accepted job is fetched, and a job whose image cannot be read (not reachable, not 200, not a
JPEG, PNG or WebP) ends FAILED with the model's own message."""

from __future__ import annotations

import asyncio

import aiohttp

from pixazo_batch.images import image_kind
from pixazo_batch.models import RemoteStatus
from pixazo_batch.sim.jobs import UNREADABLE_FRAME_REASON, SimJob
from pixazo_batch.sim.state import SimState


class ImageFetcher:
    """Fetches accepted jobs' images in the background."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, job: SimJob) -> None:
        """Read ``job``'s images; fail it if one cannot be read."""
        task = asyncio.get_running_loop().create_task(self._fetch_all(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every fetch and release the HTTP session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _fetch_all(self, job: SimJob) -> None:
        for url in (job.request.image_url, job.request.end_image_url):
            if url and not await self._readable(url):
                self.state.stats.image_fetch_failures += 1
                job.outcome, job.error = RemoteStatus.FAILED, UNREADABLE_FRAME_REASON
                return

    async def _readable(self, url: str) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.state.stats.image_fetches += 1
        try:
            async with self._session.get(url) as response:
                head = await response.content.read(16)
                return response.status == 200 and image_kind(head) is not None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
