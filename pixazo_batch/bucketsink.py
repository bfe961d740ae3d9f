"""Videos straight into a bucket: streamed from the media CDN, verified on the way, and visible
only once whole (``docs/design.md``, "Object storage").

The body streams into a multipart upload of a staging key while its sha256, length and MP4
structure are checked (``mp4.Mp4Stream``); nothing is held but one part. A body that fails a
check aborts the upload, so no partial object and no orphaned upload remain. A whole one is
completed, copied server-side to its final key with its sha256 (and what its headers say) in
the metadata, and the staging object deleted. A try that a killed run left half done is cleaned
up before the next try starts; a final object already in place with its sha256 is taken as it
is (the run died between the copy and its record).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import anyio

from pixazo_batch.errors import MediaError
from pixazo_batch.jobrow import JobRow
from pixazo_batch.mp4 import Mp4Error, Mp4Info, Mp4Stream
from pixazo_batch.storage import STAGING, BucketPath, Storage

CHUNK = 1 << 20
#: the media body's read buffer for a bucket (it waits while a part is sent)
BUCKET_READ_BUFFER = 1 << 20
#: a piece this small is hashed on the event loop; a larger one in a worker thread
INLINE_CHUNK = 64 << 10


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


async def save_to_bucket(
    storage: Storage,
    where: BucketPath,
    row: JobRow,
    response: aiohttp.ClientResponse,
    total: int,
) -> tuple[int, str, Mp4Info]:
    """Stream ``response`` (whose whole length is ``total``) to the job's object; returns its
    size, sha256 and headers.

    Raises:
        MediaError: the body is short, not a whole MP4, or broke off.
    """
    staging = f"{STAGING}/{row.id}.mp4"
    await storage.abort_leftovers(where, staging)
    digest = hashlib.sha256()
    check = Mp4Stream(total)

    async def checked() -> AsyncIterator[bytes]:
        async for chunk in response.content.iter_chunked(CHUNK):
            if len(chunk) <= INLINE_CHUNK:
                digest.update(chunk)
            else:
                await anyio.to_thread.run_sync(digest.update, chunk)
            try:
                check.feed(chunk)
            except Mp4Error as exc:
                raise MediaError(str(exc), final=False) from exc
            yield chunk

    upload = await storage.stream_upload(where, staging, checked())
    try:
        info = check.finish()  # the whole length, and an MP4 throughout
    except Mp4Error as exc:
        await upload.abort()
        raise MediaError(str(exc)) from exc
    await upload.complete()
    sha256 = digest.hexdigest()
    metadata = {
        "sha256": sha256,
        "seconds": f"{info.duration:.3f}",
        "width": str(info.width),
        "height": str(info.height),
    }
    await storage.publish(where, staging, row.output, metadata)
    return total, sha256, info
