"""Writing inside the output folder only: no symlink is followed, no path leaves the folder.

Every file pixazo-batch writes or locks (videos and their ``.part`` files, ``results.jsonl``, the
state file, its lock, the sandbox's memory) is opened with ``O_NOFOLLOW`` at a location that
resolves inside its folder, so a link planted in the output folder can neither redirect a write
nor truncate a file elsewhere (``docs/design.md``, "Files").
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

#: permissions of files only the job's user should read (state, lock, sandbox memory)
PRIVATE = 0o600
#: permissions of the videos and results, which are meant to be shared
SHARED = 0o644


class UnsafePathError(OSError):
    """A path that would lead a write outside its folder, or through a symbolic link."""


def confined_path(root: Path, relative: str) -> Path:
    """``root / relative`` with every symlink resolved, refusing a location outside ``root``
    (itself resolved).

    Raises:
        UnsafePathError: the resolved location is outside the folder.
    """
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise UnsafePathError(
            errno.EXDEV, f"{relative!r} resolves outside the output folder ({target})"
        )
    return target


def open_nofollow(path: Path, flags: int, mode: int = SHARED) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` itself.

    Raises:
        UnsafePathError: ``path`` is a symbolic link.
        OSError: anything else the open refuses.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                errno.ELOOP, f"{path} is a symbolic link; pixazo-batch does not write through one"
            ) from None
        raise


def refuse_link(path: Path) -> None:
    """Raise if ``path`` exists as a symbolic link (a file about to be opened by a library that
    follows links, such as SQLite).

    Raises:
        UnsafePathError: it is one.
    """
    if path.is_symlink():
        raise UnsafePathError(
            errno.ELOOP, f"{path} is a symbolic link; pixazo-batch does not write through one"
        )


def write_fresh(path: Path, mode: int = SHARED) -> int:
    """A new, empty file at ``path`` opened for writing, whatever was there (a stale temp file,
    or a link someone planted, is removed, never followed)."""
    path.unlink(missing_ok=True)
    return open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)


@contextmanager
def replaced_text(path: Path, writer: str | None = None) -> Iterator[TextIO]:
    """A text file that takes ``path``'s place, durably and at once, when the block ends
    without an error (written beside it, at ``temporary_for(path, writer)``); when it ends with
    one, ``path`` is left as it was and nothing written is left beside it."""
    temporary = temporary_for(path, writer)
    try:
        with os.fdopen(write_fresh(temporary), "w", encoding="utf-8") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, path)
    except BaseException:
        # Most often the disk is full: a half-written copy would only take more of it.
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def temporary_for(path: Path, writer: str | None = None) -> Path:
    """Where ``path`` is written before its atomic rename: ``<name>.tmp``, or, when several
    workers of a fleet share the folder, ``<name>.<writer>.tmp`` (each its own)."""
    return path.with_name(f"{path.name}.{writer}.tmp" if writer else f"{path.name}.tmp")
