"""A video on its way to the output folder: its ``.part`` file, the checks, and the final rename.

The downloader streams bytes into ``<output>.part`` through ``PartFile`` (sha256 as it goes,
never through a symlink); ``commit`` then proves the file whole before it may take its final
name: the announced length, an MP4 whose top-level boxes add up to that length (``mp4.py``),
and, for a file assembled from more than one answer, the CDN's MD5 ETag (a single answer is
whole by TCP's own checks; a resume is where two versions of an object could be spliced). The
file and its folder are fsynced around an atomic rename, so a final path never holds a partial
or wrong video.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from pixazo_batch.errors import MediaError
from pixazo_batch.mp4 import Mp4Error, Mp4Info, inspect
from pixazo_batch.safefs import SHARED, open_nofollow

CHUNK = 1 << 20
_PLAIN_MD5 = re.compile(r'^"?([0-9a-f]{32})"?$')


@dataclass
class PartFile:
    """The bytes saved so far in a ``.part`` file and their running sha256.

    Usage: ``with PartFile.resume(path) as part: part.append(chunk)``.
    """

    path: Path
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    #: True once the bytes came from more than one answer (a ``Range`` resume)
    resumed: bool = False
    _fd: int | None = None

    @classmethod
    def resume(cls, path: Path) -> PartFile:
        """What ``path`` already holds (nothing when it does not exist), read without following
        a symlink.

        Raises:
            UnsafePathError: the part is a symbolic link.
        """
        part = cls(path)
        try:
            fd = open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return part
        with os.fdopen(fd, "rb") as saved:
            while piece := saved.read(CHUNK):
                part.sha256.update(piece)
                part.size += len(piece)
        return part

    def restart(self) -> None:
        """Forget what was saved: the next bytes start the file again."""
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.resumed = False

    def __enter__(self) -> Self:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.size else os.O_TRUNC)
        self._fd = open_nofollow(self.path, flags, SHARED)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, chunk: bytes) -> None:
        """Write ``chunk`` at the end of the file and fold it into the hash."""
        assert self._fd is not None
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.sha256.update(chunk)
        self.size += len(chunk)


def commit(
    part: PartFile, final: Path, total: int, etag: str | None, durable: bool = True
) -> Mp4Info:
    """Check that ``part`` is the whole video and move it to ``final``, all or nothing (and,
    when ``durable``, on disk before the call returns). Returns what its headers say. Runs in
    a worker thread (it reads and fsyncs).

    Raises:
        MediaError: the file is short, not a whole MP4, or does not match the ETag.
    """
    if part.size != total:
        raise MediaError(f"got {part.size} of {total} bytes")
    try:
        fd = open_nofollow(part.path, os.O_RDONLY)
    except OSError as exc:
        raise MediaError(f"cannot read {part.path.name}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as saved:
        try:
            info = inspect(saved, total)
        except Mp4Error as exc:
            raise MediaError(str(exc), discard_part=True) from exc
        match = _PLAIN_MD5.match(etag or "")
        if part.resumed and match is not None and _md5(saved) != match.group(1):
            raise MediaError("resumed content does not match the CDN's ETag", discard_part=True)
        try:
            if durable:
                os.fsync(saved.fileno())
            os.replace(part.path, final)
            if durable:
                _fsync_folder(final.parent)
        except OSError as exc:
            raise MediaError(f"cannot move {part.path.name} into place: {exc.strerror}") from exc
    return info


def saved_video(path: Path) -> tuple[int, str, Mp4Info]:
    """Size, sha256 and headers of a whole video saved earlier. Runs in a worker thread.

    Raises:
        MediaError: the file cannot be read or is not a whole MP4 (it is to be fetched again).
    """
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except OSError as exc:
        raise MediaError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as saved:
        size = os.fstat(fd).st_size
        try:
            info = inspect(saved, size)
        except Mp4Error as exc:
            raise MediaError(str(exc), discard_part=True) from exc
        saved.seek(0)
        digest = hashlib.sha256()
        while piece := saved.read(CHUNK):
            digest.update(piece)
    return size, digest.hexdigest(), info


def _md5(saved: BinaryIO) -> str:
    saved.seek(0)
    digest = hashlib.md5(usedforsecurity=False)
    while piece := saved.read(CHUNK):
        digest.update(piece)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
