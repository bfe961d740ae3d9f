"""Downloader: fetches completed jobs' videos. A final path only ever holds a whole, verified video.

Bytes stream into ``<output>.part`` while being hashed (sha256, recorded); an interrupted
``.part`` is resumed with ``Range``; ``mediafile.commit`` proves the file whole before the
rename. A body is bounded: one announcing or bringing more than ``--max-video-mb`` is refused,
and one that stalls (fewer than ``STALL_MIN_BYTES`` in ``--download-stall`` seconds) is cut and
resumed. The media host never sees the API key: this stage has its own HTTP session that carries
none.
"""

from __future__ import annotations

import random
import re
from functools import partial
from pathlib import Path

import aiohttp
import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from yarl import URL

from pixazo_batch.bucketsink import SPOOL, BucketHealth, already_published, publish
from pixazo_batch.context import RunContext
from pixazo_batch.errors import MediaError, RequestError, SubmitStopError
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.health import GatewayHealth, MediaHostHealth
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import (
    Action,
    Downloaded,
    DownloadFailed,
    MediaRefreshed,
    Outcome,
    TakenElsewhere,
)
from pixazo_batch.mediafile import CHUNK, PartFile, commit, saved_video
from pixazo_batch.models import RemoteStatus
from pixazo_batch.mp4 import Mp4Info, mismatch
from pixazo_batch.safefs import UnsafePathError, confined_path
from pixazo_batch.storage import storage_errors

log = structlog.get_logger(__name__)

#: a piece this small is written and hashed on the event loop (microseconds into the page
#: cache), where a hand-off to a worker thread would cost more than the work
INLINE_CHUNK = 64 << 10
#: a body bringing fewer bytes than this in a stall window is cut (and resumed later)
STALL_MIN_BYTES = 16 << 10
#: the media body's read buffer on its way to a bucket (a file's is the session's)
SPOOL_READ_BUFFER = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class Downloader:
    """Fetches completed jobs' videos into the output folder."""

    def __init__(self, ctx: RunContext, *, backoff: BackoffPolicy | None = None) -> None:
        self.ctx = ctx
        # Into a bucket: how many videos come in from the CDN at once, and how many go out.
        self._fetching = anyio.CapacityLimiter(ctx.settings.downloads)
        self._uploading = anyio.CapacityLimiter(ctx.settings.downloads)
        # Twice the workers into a bucket, and parts in memory: a smaller read buffer each.
        self._read_buffer = SPOOL_READ_BUFFER if ctx.bucket else None
        self.backoff = backoff or BackoffPolicy(base=0.5, cap=30.0)
        self._rng = random.Random()
        self._root = ctx.settings.out_dir.resolve()
        self._limit = ctx.settings.max_video_mb << 20
        deadline = ctx.settings.outage_deadline
        #: by media host: one out of reach holds only its own downloads
        self._media_hosts: dict[str, MediaHostHealth] = {}
        self._bucket: BucketHealth | None = None
        if ctx.bucket is not None and ctx.storage is not None:
            self._bucket = BucketHealth(
                ctx.storage, ctx.bucket, outage_deadline=deadline, clock=ctx.clock
            )

    def gates(self) -> list[GatewayHealth]:
        """What the downloads wait behind when a service is out of reach: one per media host
        met so far, and the bucket's."""
        gates: list[GatewayHealth] = list(self._media_hosts.values())
        if self._bucket is not None:
            gates.append(self._bucket)
        return gates

    def start(self, group: TaskGroup, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Start ``--downloads`` workers taking jobs from ``jobs`` (into a bucket, twice as many:
        a video's upload does not keep the next one from coming in)."""
        for _ in range(self.ctx.settings.downloads * (2 if self.ctx.bucket else 1)):
            group.start_soon(self.run, jobs)

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Download each job id received until the run ends (the engine owns the stream)."""
        async for job_id in jobs:
            await self.download(job_id)

    async def download(self, job_id: str) -> None:
        """Try the job's video until the router takes it elsewhere (or to rest)."""
        row = self.ctx.store.claim_download(job_id)
        if row is None:  # a fleet: another worker has it
            await self.ctx.router.settle(job_id, TakenElsewhere("another worker downloads it"))
            return
        tries = 0
        while True:
            tries += 1
            if tries > 1:  # the media URL may have been refreshed meanwhile
                row = self.ctx.store.get(job_id)
                assert row is not None
            outcome = await self.attempt(row, tries)
            step = await self.ctx.router.settle(job_id, outcome)
            if step.action is not Action.RETRY:
                return
            if isinstance(outcome, DownloadFailed):
                await self.ctx.clock.sleep(self.backoff.delay(tries, self._rng))

    async def attempt(self, row: JobRow, tries: int) -> Outcome:
        """One try at bringing the job's video to its final place, and how it went."""
        left = tries < self.ctx.settings.download_tries
        part: Path | None = None
        try:
            into_bucket = self.ctx.bucket is not None
            relative = f"{SPOOL}/{row.id}.mp4" if into_bucket else row.output
            final = confined_path(self._root, relative)
            final.parent.mkdir(parents=True, exist_ok=True)
            part = final.with_name(final.name + ".part")
            if into_bucket:
                size, sha256, video = await self._to_bucket(row, part, final)
            else:
                size, sha256, video = await self._fetch(row, part, final)
        except UnsafePathError as exc:
            log.error("download_refused", job_id=row.id, error=str(exc))
            return DownloadFailed(str(exc), tries_left=False)
        except OSError as exc:
            if part is None:  # the folder could not be made: no later try will do better
                log.error("download_refused", job_id=row.id, error=str(exc))
                return DownloadFailed(str(exc), tries_left=False)
            raise
        except MediaError as exc:
            log.warning("download_retry", job_id=row.id, attempt=tries, error=str(exc))
            if exc.discard_part and part is not None:
                part.unlink(missing_ok=True)
            if exc.expired:
                return await self._refresh_url(row, str(exc), tries_left=left)
            left = left and not exc.final
            if not left:
                log.error("download_gave_up", job_id=row.id, tries=tries, error=str(exc))
            return DownloadFailed(str(exc), tries_left=left)
        log.info(
            "downloaded", job_id=row.id, request_id=row.request_id, bytes=size, state="downloaded"
        )
        request = row.request
        differs = mismatch(
            video, seconds=request.duration.seconds, aspect_ratio=request.aspect_ratio.value
        )
        if differs is not None:
            log.warning("video_mismatch", job_id=row.id, request_id=row.request_id, error=differs)
        return Downloaded(size, sha256, video, differs)

    async def _to_bucket(self, row: JobRow, part: Path, spooled: Path) -> tuple[int, str, Mp4Info]:
        """The video fetched into the spool, verified, then put into the bucket (``bucketsink``)."""
        ctx, bucket = self.ctx, self._bucket
        assert ctx.bucket is not None
        assert ctx.storage is not None
        assert bucket is not None
        try:
            published = await bucket.reaching(
                partial(already_published, ctx.storage, ctx.bucket, row)
            )
            if published is not None:
                return published
            if spooled.is_file():  # noqa: ASYNC240  (a killed run's whole video: one stat)
                size, sha256, video = await anyio.to_thread.run_sync(saved_video, spooled)
            else:
                async with self._fetching:
                    size, sha256, video = await self._fetch(row, part, spooled, durable=False)
            async with self._uploading:
                await bucket.reaching(
                    partial(
                        publish, ctx.storage, ctx.bucket, row, spooled, sha256=sha256, info=video
                    )
                )
        except storage_errors() as exc:
            raise MediaError(f"the bucket refused the video: {exc}") from exc
        except (MediaError, OSError) as exc:
            # Whatever is wrong with a spooled video, the next try fetches it again.
            spooled.unlink(missing_ok=True)  # noqa: ASYNC240
            if isinstance(exc, MediaError):
                raise
            raise MediaError(f"cannot upload {spooled.name}: {exc.strerror or exc}") from exc
        return size, sha256, video

    async def _refresh_url(self, row: JobRow, reason: str, *, tries_left: bool) -> Outcome:
        """Ask the status endpoint for a fresh media URL (the old one expired)."""
        assert row.request_id is not None
        try:
            status = await self.ctx.gateway.status(row.request_id, row.polling_url)
        except (RequestError, SubmitStopError) as exc:
            log.warning("media_refresh_failed", job_id=row.id, error=str(exc))
            return DownloadFailed(f"{reason}; no fresh URL: {exc}", tries_left=tries_left)
        if status.status is RemoteStatus.COMPLETED and status.media_url and tries_left:
            return MediaRefreshed(status.media_url)
        return DownloadFailed(reason, tries_left=tries_left)

    async def _fetch(
        self, row: JobRow, part_path: Path, final: Path, *, durable: bool = True
    ) -> tuple[int, str, Mp4Info]:
        """Bring the body into the part file and commit it (``durable``: synced to disk);
        (size, sha256, its headers)."""
        assert row.media_url is not None
        try:
            # One stat on the loop costs less than a thread hop; only a resume reads the part.
            if part_path.is_symlink() or part_path.exists():  # noqa: ASYNC240
                part = await anyio.to_thread.run_sync(PartFile.resume, part_path)
            else:
                part = PartFile(part_path)
        except UnsafePathError as exc:
            raise MediaError(str(exc), discard_part=True) from exc
        except OSError as exc:
            raise MediaError(f"cannot read {part_path.name}: {exc}", discard_part=True) from exc
        url = row.media_url
        host = self._media_host(url)
        while True:
            headers = {"Range": f"bytes={part.size}-"} if part.size else {}
            try:
                get = self.ctx.media.get(url, headers=headers, read_bufsize=self._read_buffer)
                async with get as response:
                    host.answered()
                    total, etag = self._check_answer(response, part.size)
                    if response.status == 200 and part.size:
                        part.restart()
                    part.resumed = part.size > 0
                    await self._save(response, part)
                break
            except host.REFUSED as exc:  # no connection: wait for the host, spend no try
                host.unreachable(f"{type(exc).__name__}: {exc}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise MediaError(f"{type(exc).__name__}: {exc}") from exc
            except UnsafePathError as exc:
                raise MediaError(str(exc), discard_part=True) from exc
            except OSError as exc:
                raise MediaError(f"cannot write {part_path.name}: {exc.strerror or exc}") from exc
            await host.ready(partial(host.probe, url))
        video = await anyio.to_thread.run_sync(commit, part, final, total, etag, durable)
        return part.size, part.sha256.hexdigest(), video

    def _media_host(self, url: str) -> MediaHostHealth:
        name = URL(url).host or ""
        host = self._media_hosts.get(name)
        if host is None:
            deadline, clock = self.ctx.settings.outage_deadline, self.ctx.clock
            host = self._media_hosts[name] = MediaHostHealth(
                self.ctx.media, outage_deadline=deadline, clock=clock
            )
        return host

    def _check_answer(
        self, response: aiohttp.ClientResponse, offset: int
    ) -> tuple[int, str | None]:
        """The full file size and ETag the answer announces, or why this try cannot go on."""
        status = response.status
        if status in (403, 404, 410):
            raise MediaError(f"media URL answered {status}", expired=True)
        if status == 416:
            raise MediaError("the saved part no longer fits the file", discard_part=True)
        total: int | None = None
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise MediaError("unexpected Content-Range", discard_part=True)
            total = int(match.group(3))
        elif status == 200 and response.content_length is not None:
            total = response.content_length
        if total is None:
            raise MediaError(f"media URL answered {status}")
        if total > self._limit:
            raise MediaError(
                f"the video announces {total} bytes, over --max-video-mb "
                f"{self.ctx.settings.max_video_mb}",
                discard_part=True,
                final=True,
            )
        return total, response.headers.get("ETag")

    async def _save(self, response: aiohttp.ClientResponse, part: PartFile) -> None:
        """Append the body to the part file, hashing as it goes; cut a body that stalls or runs
        past what it announced."""
        # A plain file descriptor opened and closed on the loop cannot leak when the task is
        # cancelled (aiofiles' threaded open/close can); a large piece is written and hashed in
        # a worker thread that a cancellation waits for, so a piece is never half-recorded.
        stall = self.ctx.settings.download_stall
        window_start, window_bytes = anyio.current_time(), 0
        with part:
            async for chunk in response.content.iter_chunked(CHUNK):
                if part.size + len(chunk) > self._limit:
                    raise MediaError("the body runs past --max-video-mb", discard_part=True)
                if len(chunk) <= INLINE_CHUNK:
                    part.append(chunk)
                else:
                    await anyio.to_thread.run_sync(part.append, chunk)
                window_bytes += len(chunk)
                now = anyio.current_time()
                if now - window_start >= stall:
                    if window_bytes < STALL_MIN_BYTES:
                        raise MediaError(f"stalled: {window_bytes} bytes in {stall:g} s")
                    window_start, window_bytes = now, 0
