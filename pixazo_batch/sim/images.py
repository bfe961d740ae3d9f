"""The simulated model reads its input images, as the real one does: each image URL of an
accepted job is fetched, and a job whose image cannot be read (not reachable, not 200, not a
JPEG, PNG or WebP) ends FAILED with the model's own message."""

from __future__ import annotations

import aiohttp

from pixazo_batch.images import image_kind
from pixazo_batch.models import RemoteStatus
from pixazo_batch.sim.jobs import UNREADABLE_FRAME_REASON, SimJob
from pixazo_batch.sim.outbound import Outbound
from pixazo_batch.sim.state import SimState


class ImageFetcher(Outbound):
    """Fetches accepted jobs' images in the background."""

    def __init__(self, state: SimState) -> None:
        super().__init__(timeout=10)
        self.state = state

    def schedule(self, job: SimJob) -> None:
        """Read ``job``'s images; fail it if one cannot be read."""
        self.start(self._fetch_all(job))

    async def _fetch_all(self, job: SimJob) -> None:
        for url in (job.request.image_url, job.request.end_image_url):
            if url and not await self._readable(url):
                self.state.stats.image_fetch_failures += 1
                job.outcome, job.error = RemoteStatus.FAILED, UNREADABLE_FRAME_REASON
                return

    async def _readable(self, url: str) -> bool:
        self.state.stats.image_fetches += 1
        try:
            async with self.session.get(url) as response:
                head = await response.content.read(16)
                return response.status == 200 and image_kind(head) is not None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
