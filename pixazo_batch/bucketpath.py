"""Where in object storage: a bucket and a key prefix, from ``s3://bucket/prefix`` (a value,
read from the settings without the storage client; ``storage.py`` talks to the bucket)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pixazo_batch.errors import UsageError


@dataclass(frozen=True, slots=True)
class BucketPath:
    """A bucket and a key prefix, from ``s3://bucket/prefix``."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str, setting: str) -> BucketPath:
        """The bucket path of ``url``.

        Raises:
            UsageError: not an ``s3://bucket[/prefix]`` URL (the message names ``setting``).
        """
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"{setting}: must be s3://bucket/prefix, not {url!r}")
        prefix = parts.path.strip("/")
        if ".." in prefix.split("/"):
            raise UsageError(f"{setting}: the prefix may not contain '..'")
        return cls(parts.netloc, prefix)

    def key(self, relative: str) -> str:
        """The object key of ``relative`` below the prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def url(self, relative: str = "") -> str:
        """``s3://bucket/prefix/relative``."""
        return f"s3://{self.bucket}/{self.key(relative)}".rstrip("/")
