"""Local images as inputs: read and fingerprinted from the manifest's folder, uploaded once,
content-addressed, and handed to the gateway as presigned URLs (``docs/design.md``, "Object
storage").

A job whose manifest line names ``image_file`` records its request with a placeholder URL,
``pixazo-input:<sha256>.<ext>``: the request hash then depends on the image's bytes, never on a
signed URL, so a resumed run does not take a re-signed URL for a changed job. Just before a POST,
each placeholder becomes a fresh presigned GET URL of the uploaded object (uploaded first if the
bucket does not hold it yet), valid for the job deadline plus a margin. Presigned URLs are never
logged or stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.models import GenerationRequest
from pixazo_batch.storage import Storage

if TYPE_CHECKING:
    from pixazo_batch.governor import Clock

log = structlog.get_logger(__name__)

INPUT_PREFIX = "pixazo-input:"
#: Luma refuses input images above 50 MB (413)
MAX_IMAGE_BYTES = 50 * 1024 * 1024
#: a presigned URL outlives the job deadline by this much (the job may wait in a queue)
URL_MARGIN_SECONDS = 24 * 3600
#: images fingerprinted per manifest pass before the cache starts again (memory stays flat)
CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class LocalImage:
    """One image file, fingerprinted."""

    path: Path
    sha256: str
    extension: str
    content_type: str

    @property
    def key(self) -> str:
        """Its name in the inputs bucket: its own sha256, so each image is uploaded once."""
        return f"{self.sha256}.{self.extension}"

    @property
    def placeholder(self) -> str:
        """What the recorded request carries instead of a URL."""
        return INPUT_PREFIX + self.key


def image_kind(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) of a JPEG, PNG or WebP by its first bytes, else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg", "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


class ImageReader:
    """Reads the images a manifest names (relative to its folder), each file once a pass."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: dict[Path, LocalImage] = {}

    def read(self, relative: str) -> LocalImage:
        """The fingerprinted image at ``relative``.

        Raises:
            ValueError: absolute, missing, not a file, too large, or not a JPEG, PNG or WebP.
        """
        if Path(relative).is_absolute():
            raise ValueError("must be a path relative to the manifest's folder")
        path = (self.folder / relative).resolve()
        cached = self._seen.get(path)
        if cached is not None:
            return cached
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ValueError(f"{relative!r} is not a file")
            if size > MAX_IMAGE_BYTES:
                raise ValueError(f"{relative!r} is {size} bytes, over the 50 MB the model takes")
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                head = source.read(16)
                kind = image_kind(head)
                if kind is None:
                    raise ValueError(f"{relative!r} is not a JPEG, PNG or WebP image")
                digest.update(head)
                while piece := source.read(1 << 20):
                    digest.update(piece)
        except OSError as exc:
            raise ValueError(f"{relative!r}: {exc.strerror or exc}") from None
        image = LocalImage(path, digest.hexdigest(), *kind)
        if len(self._seen) >= CACHE_LIMIT:
            self._seen.clear()
        self._seen[path] = image
        return image


def placeholder_key(url: str) -> str | None:
    """The inputs-bucket key a placeholder URL names, or None for a real URL."""
    return url.removeprefix(INPUT_PREFIX) if url.startswith(INPUT_PREFIX) else None


class InputUploader:
    """Turns a recorded request's placeholders into presigned URLs, uploading each image the
    bucket does not hold yet (once a run: what it has seen there is remembered)."""

    def __init__(
        self,
        storage: Storage,
        where: BucketPath,
        find: Callable[[str], Path | None],
        valid_for: float,
        *,
        outage_deadline: float,
        clock: Clock,
    ) -> None:
        self.storage = storage
        self.where = where
        self.find = find
        self.seconds = int(valid_for) + URL_MARGIN_SECONDS
        self._present: set[str] = set()
        self._uploading: dict[str, anyio.Lock] = {}
        # A bucket refusing connections is waited for, as the output bucket is (imported here:
        # reading a manifest, ``validate`` included, needs none of a run's network stack).
        from pixazo_batch.bucketsink import BucketHealth  # noqa: PLC0415

        #: the inputs bucket's reachability (``bucketsink.BucketHealth``)
        self.bucket = BucketHealth(storage, where, outage_deadline=outage_deadline, clock=clock)

    async def sendable(self, request: GenerationRequest) -> GenerationRequest:
        """The request as it may be sent: real URLs in place of placeholders (once the bucket
        takes connections).

        Raises:
            ValueError: an image is gone from the disk or changed since the manifest was read.
            ServiceUnreachableError: the bucket took no connection for the outage deadline.
            Exception: what the storage raises (``storage.storage_errors``).
        """
        return await self.bucket.reaching(partial(self._sendable, request))

    async def _sendable(self, request: GenerationRequest) -> GenerationRequest:
        changes: dict[str, str] = {}
        for field in ("image_url", "end_image_url"):
            key = placeholder_key(getattr(request, field))
            if key is not None:
                await self._ensure_uploaded(key)
                changes[field] = await self.storage.presign_get(self.where, key, self.seconds)
        return request.model_copy(update=changes) if changes else request

    async def _ensure_uploaded(self, key: str) -> None:
        # Two jobs with one image, submitted at once, upload it once.
        async with self._uploading.setdefault(key, anyio.Lock()):
            if key not in self._present:
                await self._upload_unless_there(key)
                self._present.add(key)
        self._uploading.pop(key, None)

    async def _upload_unless_there(self, key: str) -> None:
        if await self.storage.exists(self.where, key) is None:
            path = self.find(key)
            if path is None:
                raise ValueError(f"no local file is known for input {key}")
            data = await anyio.to_thread.run_sync(path.read_bytes)  # up to 50 MB: off the loop
            sha256 = await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
            if f"{sha256}." != key[: len(sha256) + 1]:
                raise ValueError(f"{path} changed since the manifest was read")
            kind = image_kind(data[:16])
            content_type = kind[1] if kind else "application/octet-stream"
            await self.storage.put_small(self.where, key, data, content_type, sha256)
            log.info("input_uploaded", key=key, bytes=len(data))
