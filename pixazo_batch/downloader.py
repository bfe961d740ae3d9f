"""Downloader: fetches completed jobs' videos. A final path only ever holds a whole, verified video.

Bytes stream into ``<output>.part`` while being hashed (sha256, recorded); an interrupted
``.part`` is resumed with ``Range``. Before the rename the file must have the announced length and
start with an MP4 ``ftyp`` box, and a file assembled from more than one answer must match the
CDN's ETag where that is a plain MD5 (a single answer is already whole by TCP's checks; a resume
is where two versions of an object could be spliced, so only then is the MD5 worth its cost).
The media host never sees the API key: this stage has its own HTTP session that carries none.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from pixazo_batch.context import RunContext
from pixazo_batch.errors import MediaError, RequestError, SubmitStopError
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import Action, Downloaded, DownloadFailed, MediaRefreshed, Outcome
from pixazo_batch.models import RemoteStatus

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
#: a piece this small is written and hashed on the event loop (microseconds into the page
#: cache), where a hand-off to a worker thread would cost more than the work
INLINE_CHUNK = 64 << 10
#: bytes at the start of a file that hold its ``ftyp`` box header
_HEAD = 12
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_PLAIN_MD5 = re.compile(r'^"?([0-9a-f]{32})"?$')


def confined_path(root: Path, relative: str) -> Path:
    """``root / relative``, refusing any path that leaves ``root`` (a resolved folder) through
    a symlink.

    Raises:
        ValueError: the resolved location is outside the output folder.
    """
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"{relative!r} resolves outside the output folder ({target})")
    return target


@dataclass
class _Progress:
    """Bytes saved so far, their running sha256, their first bytes (where an MP4 has its
    ``ftyp`` box), and whether they came in more than one answer."""

    sha256: hashlib._Hash
    size: int = 0
    head: bytes = b""
    resumed: bool = False

    def append(self, sink: BinaryIO, chunk: bytes) -> None:
        """Write ``chunk`` to ``sink`` and fold it into the hash."""
        sink.write(chunk)
        self.sha256.update(chunk)
        if len(self.head) < _HEAD:
            self.head += chunk[: _HEAD - len(self.head)]
        self.size += len(chunk)


class Downloader:
    """Fetches completed jobs' videos into the output folder."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.backoff = BackoffPolicy(base=0.5, cap=30.0)
        self._rng = random.Random()
        self._root = ctx.settings.out_dir.resolve()

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Download each job id received until the run ends (the engine owns the stream)."""
        async for job_id in jobs:
            await self.download(job_id)

    async def download(self, job_id: str) -> None:
        """Try the job's video until the router takes it elsewhere (or to rest)."""
        tries = 0
        while True:
            tries += 1
            row = self.ctx.store.get(job_id)
            assert row is not None
            outcome = await self.attempt(row, tries)
            step = await self.ctx.router.settle(job_id, outcome)
            if step.action is not Action.RETRY:
                return
            if isinstance(outcome, DownloadFailed):
                await self.ctx.clock.sleep(self.backoff.delay(tries, self._rng))

    async def attempt(self, row: JobRow, tries: int) -> Outcome:
        """One try at bringing the job's video to its final path, and how it went."""
        left = tries < self.ctx.settings.download_tries
        try:
            final = confined_path(self._root, row.output)
            final.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as exc:
            log.error("download_refused", job_id=row.id, error=str(exc))
            return DownloadFailed(str(exc), tries_left=False)
        part = final.with_name(final.name + ".part")
        try:
            size, sha256 = await self._fetch(row, part)
            await _commit_file(part, final)
        except MediaError as exc:
            log.warning("download_retry", job_id=row.id, attempt=tries, error=str(exc))
            if exc.discard_part:
                part.unlink(missing_ok=True)
            if exc.expired:
                return await self._refresh_url(row, str(exc), tries_left=left)
            if not left:
                log.error("download_gave_up", job_id=row.id, tries=tries)
            return DownloadFailed(str(exc), tries_left=left)
        log.info(
            "downloaded", job_id=row.id, request_id=row.request_id, bytes=size, state="downloaded"
        )
        return Downloaded(size, sha256)

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

    async def _fetch(self, row: JobRow, part: Path) -> tuple[int, str]:
        assert row.media_url is not None
        progress = _Progress(hashlib.sha256())
        try:
            # One stat on the loop costs less than a thread hop; only a resume reads the part.
            if part.exists():  # noqa: ASYNC240
                progress = await anyio.to_thread.run_sync(_hash_existing, part)
        except OSError as exc:
            raise MediaError(f"cannot read {part.name}: {exc}", discard_part=True) from exc
        headers = {"Range": f"bytes={progress.size}-"} if progress.size else {}
        try:
            async with self.ctx.media.get(row.media_url, headers=headers) as response:
                total, etag = self._check_answer(response, progress.size)
                if response.status == 200 and progress.size:
                    progress = _Progress(hashlib.sha256())
                progress.resumed = progress.size > 0
                await _save(response, part, progress)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MediaError(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise MediaError(f"cannot write {part.name}: {exc.strerror or exc}") from exc
        await _check_whole(part, progress, total, etag)
        return progress.size, progress.sha256.hexdigest()

    @staticmethod
    def _check_answer(response: aiohttp.ClientResponse, offset: int) -> tuple[int, str | None]:
        """The full file size and ETag the answer announces, or why this try cannot go on."""
        status = response.status
        if status in (403, 404, 410):
            raise MediaError(f"media URL answered {status}", expired=True)
        if status == 416:
            raise MediaError("the saved part no longer fits the file", discard_part=True)
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise MediaError("unexpected Content-Range", discard_part=True)
            return int(match.group(3)), response.headers.get("ETag")
        if status == 200 and response.content_length is not None:
            return response.content_length, response.headers.get("ETag")
        raise MediaError(f"media URL answered {status}")


async def _save(response: aiohttp.ClientResponse, part: Path, progress: _Progress) -> None:
    """Append the body to ``part``, hashing as it goes."""
    # A plain file opened and closed on the loop cannot leak when the task is cancelled
    # (aiofiles' threaded open/close can); a large piece is written and hashed in a worker
    # thread that a cancellation waits for, so a piece is never half-recorded.
    with open(part, "ab" if progress.size else "wb") as sink:  # noqa: ASYNC230
        async for chunk in response.content.iter_chunked(CHUNK):
            if len(chunk) <= INLINE_CHUNK:
                progress.append(sink, chunk)
            else:
                await anyio.to_thread.run_sync(progress.append, sink, chunk)


async def _check_whole(part: Path, progress: _Progress, total: int, etag: str | None) -> None:
    """Raise unless the saved file is the whole video: its announced length, an MP4, and (when
    assembled from more than one answer) the CDN's MD5."""
    if progress.size != total:
        raise MediaError(f"got {progress.size} of {total} bytes")
    if progress.head[4:8] != b"ftyp":
        raise MediaError("not an MP4 file (no ftyp box)", discard_part=True)
    match = _PLAIN_MD5.match(etag or "")
    if progress.resumed and match is not None:
        try:
            md5 = await anyio.to_thread.run_sync(_md5_of, part)
        except OSError as exc:
            raise MediaError(f"cannot read {part.name}: {exc.strerror or exc}") from exc
        if md5 != match.group(1):
            raise MediaError("resumed content does not match the CDN's ETag", discard_part=True)


def _hash_existing(part: Path) -> _Progress:
    """What is already saved in ``part``: its size, sha256 and first bytes (none when the part
    has gone meanwhile)."""
    progress = _Progress(hashlib.sha256())
    try:
        with open(part, "rb") as saved:
            while piece := saved.read(CHUNK):
                progress.sha256.update(piece)
                if not progress.head:
                    progress.head = piece[:_HEAD]
                progress.size += len(piece)
    except FileNotFoundError:
        pass
    return progress


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as saved:
        while piece := saved.read(CHUNK):
            digest.update(piece)
    return digest.hexdigest()


async def _commit_file(part: Path, final: Path) -> None:
    """Move the verified part into place, all or nothing."""
    try:
        await anyio.to_thread.run_sync(_fsync_and_rename, part, final)
    except OSError as exc:
        raise MediaError(f"cannot move {part.name} into place: {exc.strerror or exc}") from exc


def _fsync_and_rename(part: Path, final: Path) -> None:
    """fsync the part, rename it over the final path, fsync the folder."""
    with open(part, "rb") as saved:
        os.fsync(saved.fileno())
    os.replace(part, final)
    folder = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
