"""Checking a manifest for ``validate``, on every core when it is large (``docs/design.md``,
"The manifest").

Judging a line on its own (its JSON, its fields, its image file) is most of the work and needs
nothing from the other lines, so worker processes judge spans of a few MiB (cut at line ends)
while this process checks each span's ids and outputs against the earlier lines, in order,
through the same on-disk index as ``read_manifest``. A worker sends back each good line's
claim and kind, never its job: a job record costs more to send than to build. At most two spans
a worker are out at once, so memory stays flat whatever the manifest's length.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import structlog

from pixazo_batch.errors import PixazoBatchError
from pixazo_batch.images import ImageReader
from pixazo_batch.manifest import Brief, brief, read_lines, read_manifest
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobSpec
from pixazo_batch.seenindex import BATCH, Claim, SeenIndex

log = structlog.get_logger(__name__)

#: a manifest at least this large is checked by worker processes (smaller ones are over
#: before the workers would have started)
PARALLEL_BYTES = 8 << 20
#: bytes of manifest a worker judges at a time
SPAN_BYTES = 1 << 20


def worker_count() -> int:
    """How many worker processes a large manifest gets: the cores this process may use (at
    most 8); 0 (read it here) when there is only one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, 8)


def judge_lines(
    manifest: Path, *, keep: list[JobSpec] | None
) -> Iterator[ManifestIssue | tuple[str, str]]:
    """Each bad line's issues and each good line's (resolution, duration), in order; with
    ``keep``, every good line's job is appended to it. A large manifest whose jobs are not
    kept is judged by every core.

    Raises:
        OSError: the file cannot be opened or read.
        PixazoBatchError: a worker process died (killed, out of memory).
    """
    # Spans are read where they lie: a pipe (``validate <(...)``) is read once, as a run does.
    if keep is None and manifest.is_file():  # nothing is kept: any manifest fits in memory
        workers = worker_count() if manifest.stat().st_size >= PARALLEL_BYTES else 0
        if workers:
            log.debug("manifest_read_in_parallel", workers=workers)
        yield from judge_manifest(manifest, workers)
        return
    for item in read_manifest(manifest):
        if isinstance(item, ManifestIssue):
            yield item
            continue
        if keep is not None:
            keep.append(item)
        yield item.request.resolution.value, item.request.duration.value


def judge_manifest(
    path: Path, workers: int, *, span_bytes: int = SPAN_BYTES
) -> Iterator[ManifestIssue | tuple[str, str]]:
    """For each line in order, its issues, or (resolution, duration) for a good line, checked
    against the earlier lines like ``read_manifest``'s jobs; the lines are judged by
    ``workers`` processes, or here when it is 0.

    Raises:
        OSError: the file cannot be opened or read.
        PixazoBatchError: a worker process died (killed, out of memory).
    """
    name = str(path)
    with tempfile.TemporaryDirectory(prefix="pixazo-manifest-") as scratch:
        seen = SeenIndex(scratch)
        try:
            for judged in _judged_spans(name, _spans(path, span_bytes), workers):
                yield from _checked(judged, seen, name)
        finally:
            seen.close()


def _judged_spans(
    name: str, spans: Iterator[tuple[int, int, int]], workers: int
) -> Iterator[list[ManifestIssue | Brief]]:
    """Each span's lines judged, in order."""
    if not workers:
        for span in spans:
            yield _judge_span(name, *span)
        return
    pending: deque[Future[list[ManifestIssue | Brief]]] = deque()
    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_quiet) as pool:
        try:
            for span in spans:
                pending.append(pool.submit(_judge_span, name, *span))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            message = f"{name}: a process reading it stopped unexpectedly; run validate again"
            raise PixazoBatchError(message) from None
        finally:
            for future in pending:
                future.cancel()


def _context() -> multiprocessing.context.BaseContext:
    # A forked worker starts at once with every module loaded; elsewhere, the platform's way.
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _quiet() -> None:
    """A worker leaves Ctrl-C to the command, which stops it (and reports) itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _spans(path: Path, span_bytes: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, first line's number)`` of consecutive spans of about ``span_bytes``,
    each ending at a line's end (a line longer than a span makes its span longer)."""
    piece_bytes = max(span_bytes // 4, 1)
    with open(path, "rb") as source:
        start = offset = newlines = 0
        first = 1
        while piece := source.read(piece_bytes):
            offset += len(piece)
            cut = piece.rfind(b"\n") if offset - start >= span_bytes else -1
            if cut < 0:
                newlines += piece.count(b"\n")
                continue
            stop = offset - len(piece) + cut + 1
            yield start, stop, first
            first += newlines + piece.count(b"\n")  # the cut is at the piece's last line end
            start, newlines = stop, 0
        if offset > start:
            yield start, offset, first


def _judge_span(name: str, start: int, stop: int, first: int) -> list[ManifestIssue | Brief]:
    """In a worker: every line of one span judged on its own."""
    images = ImageReader(Path(name).parent)
    with open(name, "rb") as source:
        source.seek(start)
        judged = read_lines(
            source,
            name,
            lambda entry, number: brief(entry, name, number, images),
            first=first,
            size=stop - start,
        )
        return list(judged)


def _checked(
    judged: list[ManifestIssue | Brief], seen: SeenIndex, name: str
) -> Iterator[ManifestIssue | tuple[str, str]]:
    """One span's lines, in order, each good one checked against every earlier line."""
    for at in range(0, len(judged), BATCH):
        batch = judged[at : at + BATCH]
        claims = [Claim._make(item[:4]) for item in batch if isinstance(item, tuple)]
        conflicts = iter(seen.check(claims))
        for item in batch:
            if isinstance(item, ManifestIssue):
                yield item
                continue
            conflict = next(conflicts)
            if conflict is None:
                yield item[4], item[5]
            else:
                yield ManifestIssue(name, conflict.line, conflict.field, conflict.message)
