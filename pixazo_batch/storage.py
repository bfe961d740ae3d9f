"""Object storage: S3 and S3-compatible buckets (R2, MinIO...) for inputs and outputs.

Credentials, region and endpoint come from the standard AWS environment and config files
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
profiles), through aiobotocore; plain http is allowed only on loopback or with
``AWS_ALLOW_HTTP=true``. A video goes into the bucket only once it is whole and verified, with
its sha256 in the object's metadata, and appears whole or not at all (``docs/design.md``,
"Object storage"); uploads a killed run left unfinished are aborted before the next try.
Credentials and presigned URLs are never logged or stored.
"""

from __future__ import annotations

import os
from io import BufferedReader
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
import structlog

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.errors import RunStopError, UsageError
from pixazo_batch.safefs import open_nofollow

log = structlog.get_logger(__name__)

#: a multipart upload's parts (at most 10,000 of them: 50 GiB, well above ``--max-video-mb``);
#: one part a video is in memory at a time
PART_BYTES = 5 << 20
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class StorageRefusedError(RunStopError):
    """The storage refused our credentials (exit 4)."""

    exit_code = 4


def storage_errors() -> tuple[type[Exception], ...]:
    """The exceptions a storage call raises for a refusal or a network failure."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415  (bucket runs)

    return BotoCoreError, ClientError


def endpoint_from_environment() -> str | None:
    """The endpoint URL the AWS environment names (None for AWS itself).

    Raises:
        UsageError: a plain-http endpoint that is not on loopback, unless ``AWS_ALLOW_HTTP``.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"AWS_ENDPOINT_URL: must be an http(s) URL, not {endpoint!r}")
    allowed = os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK and not allowed:
        raise UsageError(
            "AWS_ENDPOINT_URL: plain http is allowed only on loopback or with AWS_ALLOW_HTTP=true"
        )
    return endpoint


def _on_loopback(endpoint: str | None) -> bool:
    return endpoint is not None and urlsplit(endpoint).hostname in _LOOPBACK


class Storage:
    """One S3 client for a run.

    Usage: ``async with Storage() as storage: await storage.check(bucket_path, "--out")``.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._context: Any = None

    async def __aenter__(self) -> Self:
        try:
            from aiobotocore.config import AioConfig  # noqa: PLC0415  (only for bucket runs)
            from aiobotocore.session import get_session  # noqa: PLC0415
        except ImportError:
            raise UsageError("buckets need the s3 extra: pip install 'pixazo-batch[s3]'") from None
        endpoint = endpoint_from_environment()
        config = AioConfig(
            signature_version="s3v4",
            # A part's CRC32 guards it either way; hashing each byte once more with SHA-256
            # for the signature buys nothing when the store is on this machine.
            s3={"payload_signing_enabled": False} if _on_loopback(endpoint) else None,
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        self._context = get_session().create_client("s3", endpoint_url=endpoint, config=config)
        self._client = await self._context.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._context is not None:
            await self._context.__aexit__(exc_type, exc, tb)

    async def check(self, where: BucketPath, setting: str) -> None:
        """Make sure the bucket exists and the credentials may use it.

        Raises:
            UsageError: no such bucket, or the endpoint cannot be reached.
            StorageRefusedError: the credentials are refused.
        """
        try:
            await self._client.head_bucket(Bucket=where.bucket)
        except Exception as exc:  # botocore's tree is dynamic: sorted by its error code
            raise _translate(exc, f"{setting} {where.url()}") from None

    async def exists(self, where: BucketPath, relative: str) -> dict[str, str] | None:
        """The metadata of the object at ``relative``, or None when there is none."""
        try:
            answer = await self._client.head_object(Bucket=where.bucket, Key=where.key(relative))
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return {"size": str(answer["ContentLength"]), **answer.get("Metadata", {})}

    async def put_small(
        self, where: BucketPath, relative: str, data: bytes, content_type: str, sha256: str
    ) -> None:
        """Upload a small object in one request (an input image, a report)."""
        await self._client.put_object(
            Bucket=where.bucket,
            Key=where.key(relative),
            Body=data,
            ContentType=content_type,
            Metadata={"sha256": sha256},
        )

    async def presign_get(self, where: BucketPath, relative: str, seconds: int) -> str:
        """A GET URL of the object, valid for ``seconds`` (never logged, never stored)."""
        url: str = await self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": where.bucket, "Key": where.key(relative)},
            ExpiresIn=seconds,
        )
        return url

    async def abort_unfinished(self, where: BucketPath, relative: str) -> int:
        """Abort every unfinished upload to ``relative`` (a killed run's); returns how many."""
        key = where.key(relative)
        listed = await self._client.list_multipart_uploads(Bucket=where.bucket, Prefix=key)
        aborted = 0
        for upload in listed.get("Uploads", []):
            if upload["Key"] == key:
                await self._client.abort_multipart_upload(
                    Bucket=where.bucket, Key=key, UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted

    async def upload_file(
        self,
        where: BucketPath,
        relative: str,
        path: Path,
        metadata: dict[str, str],
        content_type: str = "video/mp4",
    ) -> None:
        """Put the file at ``path`` at ``relative`` with ``metadata``; the object appears whole
        or not at all (one PUT, or a multipart upload completed only once every part is in),
        and the file is never held whole in memory (one part at a time)."""
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as source:
            await self.upload_from(where, relative, source, metadata, content_type)

    async def upload_from(
        self,
        where: BucketPath,
        relative: str,
        source: BufferedReader,
        metadata: dict[str, str],
        content_type: str,
    ) -> None:
        """``upload_file`` from a file already open, read from its start (whatever happens to
        its path meanwhile)."""
        key = where.key(relative)
        source.seek(0)
        size = os.fstat(source.fileno()).st_size
        if size <= PART_BYTES:
            body = bytearray(size)
            await anyio.to_thread.run_sync(_read_part, source, body)
            await self._client.put_object(
                Bucket=where.bucket, Key=key, Body=body, ContentType=content_type,
                Metadata=metadata,
            )  # fmt: skip
            return
        created = await self._client.create_multipart_upload(
            Bucket=where.bucket, Key=key, ContentType=content_type, Metadata=metadata
        )
        upload = MultipartUpload(self._client, where.bucket, key, created["UploadId"])
        try:
            # One buffer for every part, made here rather than in a worker thread (whose
            # malloc arena would keep it), handed over as the bytearray it is: aiohttp sends
            # it in one write (bytes would become a BytesIO read back 64 KiB at a time).
            part = bytearray(PART_BYTES)
            for offset in range(0, size, PART_BYTES):
                if size - offset < PART_BYTES:
                    del part[size - offset :]
                await anyio.to_thread.run_sync(_read_part, source, part)
                await upload.add_part(part)
            await upload.complete()
        except BaseException:
            await upload.abort()
            raise


def _read_part(source: BufferedReader, part: bytearray) -> None:
    """Fill ``part`` with the next bytes of ``source``.

    Raises:
        OSError: the file ends before it is full (it changed under us).
    """
    if source.readinto(part) != len(part):
        raise OSError(f"{source.name}: shorter than when it was verified")


class MultipartUpload:
    """One multipart upload in progress: parts added, then completed or aborted."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client, self.bucket, self.key, self.upload_id = client, bucket, key, upload_id
        self.parts: list[dict[str, Any]] = []

    async def add_part(self, data: bytearray) -> None:
        """Upload the next part."""
        number = len(self.parts) + 1
        answer = await self._client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        log.debug("upload_part", key=self.key, part=number, bytes=len(data))

    async def complete(self) -> None:
        """Assemble the parts into the object."""
        await self._client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    async def abort(self) -> None:
        """Throw the parts away: nothing of the upload remains."""
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        except Exception as exc:  # the next try aborts what is left
            log.warning("upload_not_aborted", key=self.key, error=_code(exc))


def _code(exc: BaseException) -> str:
    """The S3 error code of a botocore error (its HTTP status when it has no code)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return type(exc).__name__


def _translate(exc: BaseException, where: str) -> Exception:
    code = _code(exc)
    if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
        return StorageRefusedError(f"{where}: the storage refused the credentials ({code})")
    if code in ("404", "NoSuchBucket", "NotFound"):
        return UsageError(f"{where}: no such bucket")
    if code in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        return UsageError(f"{where}: the storage endpoint cannot be reached ({code})")
    if code in ("NoCredentialsError", "PartialCredentialsError"):
        return UsageError(f"{where}: no AWS credentials (AWS_ACCESS_KEY_ID and friends)")
    return UsageError(f"{where}: the storage answered {code}")
