"""Videos into a bucket: fetched and verified as for a folder, then put whole with their
sha256 in the object's metadata (``docs/design.md``, "Object storage").

A video is downloaded into the spool folder beside the state (``SPOOL``) exactly as into an
output folder: a ``.part`` resumed with ``Range``, its length, sha256 and MP4 structure checked
before it is renamed whole. Only then is it uploaded, with its sha256 known before the first
byte goes, so the object is written once at its final key: a multipart upload is completed (and
the object appears) only when every part is in. Uploads a killed run left unfinished are
aborted first; a final object already in place with its sha256 is taken as it is (the run died
between the upload and its record); a whole spooled video is uploaded without being fetched
again. The spool holds at most twice ``--downloads`` videos (those coming in, those going out).
A bucket that refuses connections is waited for (``BucketHealth``), as the gateway is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.errors import ServiceUnreachableError
from pixazo_batch.governor import Clock
from pixazo_batch.health import GatewayHealth
from pixazo_batch.jobrow import JobRow
from pixazo_batch.mp4 import Mp4Info
from pixazo_batch.storage import Storage, storage_errors

#: the local folder (below the state's folder) videos wait in on their way to a bucket
SPOOL = ".pixazo-batch-spool"
#: the key a probe of a bucket out of reach asks for (a HEAD: nothing is ever written there)
PROBE_KEY = ".pixazo-batch-probe"

T = TypeVar("T")


class BucketHealth(GatewayHealth):
    """Shared by every call a run's downloader makes to its bucket: a connection the bucket
    refuses pauses them until it answers again, without spending a video's tries (the video
    waits whole in the spool), and past ``--outage-deadline`` stops the run (exit 3); the next
    run puts the spooled videos in (``docs/design.md``, "Outages")."""

    service = "bucket"
    outage_error = ServiceUnreachableError

    def __init__(
        self, storage: Storage, where: BucketPath, *, outage_deadline: float, clock: Clock
    ) -> None:
        super().__init__(outage_deadline=outage_deadline, clock=clock)
        self._storage, self._where = storage, where

    async def reaching(self, call: Callable[[], Awaitable[T]]) -> T:
        """What ``call`` returns once the bucket took its connection; called again while the
        bucket takes none.

        Raises:
            ServiceUnreachableError: the bucket stayed out of reach past the deadline.
        """
        while True:
            await self.ready(self._probe)
            try:
                result = await call()
            except _unreachable() as exc:
                self.unreachable(str(exc))
                continue
            self.answered()
            return result

    async def _probe(self) -> None:
        try:
            await self._storage.exists(self._where, PROBE_KEY)
        except _unreachable() as exc:
            self.unreachable(str(exc))
            return
        except storage_errors():
            pass  # an answer, even a refusal: the bucket takes connections again
        self.answered()


def _unreachable() -> type[Exception]:
    """What a storage call raises when no connection to the bucket could be made."""
    from botocore.exceptions import ConnectionError as NoConnection  # noqa: PLC0415

    refused: type[Exception] = NoConnection  # endpoint refused, connect timeout, proxy
    return refused


async def already_published(
    storage: Storage, where: BucketPath, row: JobRow
) -> tuple[int, str, Mp4Info] | None:
    """The video a run published before it could record it, if it is there whole."""
    found = await storage.exists(where, row.output)
    if found is None or "sha256" not in found:
        return None
    info = Mp4Info(
        duration=float(found.get("seconds", 0) or 0),
        width=int(found.get("width", 0) or 0),
        height=int(found.get("height", 0) or 0),
    )
    return int(found["size"]), found["sha256"], info


async def publish(
    storage: Storage, where: BucketPath, row: JobRow, spooled: Path, *, sha256: str, info: Mp4Info
) -> None:
    """Put the verified video at ``spooled`` at the job's key, then drop it from the spool."""
    metadata = {
        "sha256": sha256,
        "seconds": f"{info.duration:.3f}",
        "width": str(info.width),
        "height": str(info.height),
    }
    await storage.abort_unfinished(where, row.output)
    await storage.upload_file(where, row.output, spooled, metadata)
    await anyio.Path(spooled).unlink(missing_ok=True)
