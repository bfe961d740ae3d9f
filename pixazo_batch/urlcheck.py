"""``validate --check-urls``: ask each image URL with HEAD before a cent is spent.

Reports images that cannot be reached, that are not JPEG, PNG or WebP, or that are larger than
the upstream accepts. Requests carry no key and no cookies; at most ``concurrency`` run at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
import anyio

from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobSpec

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
#: Luma refuses input images above 50 MB (413)
MAX_IMAGE_BYTES = 50 * 1024 * 1024


async def check_image_urls(
    jobs: Iterable[JobSpec], manifest: str, *, concurrency: int = 8, seconds_each: float = 10.0
) -> list[ManifestIssue]:
    """One issue per job field whose image URL looks unusable, in manifest order."""
    wanted: list[tuple[int, str, str]] = []
    for job in jobs:
        wanted.append((job.line, "image_url", job.request.image_url))
        if job.request.end_image_url:
            wanted.append((job.line, "end_image_url", job.request.end_image_url))
    verdicts: dict[str, str | None] = {url: None for _, _, url in wanted}
    limiter = anyio.CapacityLimiter(concurrency)
    client_timeout = aiohttp.ClientTimeout(total=seconds_each)

    async def check(session: aiohttp.ClientSession, url: str) -> None:
        async with limiter:
            verdicts[url] = await _problem(session, url)

    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        anyio.create_task_group() as group,
    ):
        for url in verdicts:
            group.start_soon(check, session, url)
    return [
        ManifestIssue(manifest, line, field, verdict)
        for line, field, url in wanted
        if (verdict := verdicts[url]) is not None
    ]


async def _problem(session: aiohttp.ClientSession, url: str) -> str | None:
    """What is wrong with the image at ``url``, or None."""
    try:
        async with session.head(url, allow_redirects=True) as response:
            status, headers = response.status, response.headers
        if status in (405, 501):  # HEAD not supported: ask for the first byte instead
            async with session.get(url, headers={"Range": "bytes=0-0"}) as response:
                status, headers = response.status, response.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"
    if status >= 400:
        return f"unreachable: HTTP {status}"
    kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind not in IMAGE_TYPES:
        return f"not a JPEG, PNG or WebP image (Content-Type {kind or 'missing'!r})"
    size = headers.get("Content-Range", "").rpartition("/")[2] or headers.get("Content-Length")
    if size and size.isdigit() and int(size) > MAX_IMAGE_BYTES:
        return f"too large: {int(size):,} bytes (the limit is {MAX_IMAGE_BYTES:,})"
    return None
