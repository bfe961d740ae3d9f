"""Checking a manifest for ``validate``, on every core when it is large (``docs/design.md``,
"The manifest").

Judging a line on its own (its JSON, its fields, its image file) is most of the work and needs
nothing from the other lines, so worker processes judge spans of a few MiB (cut at line ends)
while this process checks each span's ids and outputs against the earlier lines, in order,
through the same on-disk index as ``read_manifest``. A worker sends back each good line's
claim and kind, never its job: a job record costs more to send than to build. A few spans a
worker are out at once (``workpool.py``), so memory stays flat whatever the manifest's length.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog

from pixazo_batch.images import ImageReader
from pixazo_batch.manifest import read_lines, read_manifest
from pixazo_batch.manifestjob import Brief, brief
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobSpec
from pixazo_batch.seenindex import BATCH, Claim, SeenIndex
from pixazo_batch.workpool import in_order, workers_for

log = structlog.get_logger(__name__)

#: bytes of manifest a worker judges at a time
SPAN_BYTES = 1 << 20


def judge_lines(
    manifest: Path, *, keep: list[JobSpec] | None
) -> Iterator[ManifestIssue | tuple[str, str]]:
    """Each bad line's issues and each good line's (resolution, duration), in order; with
    ``keep``, every good line's job is appended to it. A large manifest whose jobs are not
    kept is judged by every core.

    Raises:
        OSError: the file cannot be opened or read.
    """
    # Spans are read where they lie: a pipe (``validate <(...)``) is read once, as a run does.
    if keep is None and manifest.is_file():  # nothing is kept: any manifest fits in memory
        workers = workers_for(manifest)
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
        request = json.loads(item.request_json)
        yield request["resolution"], request["duration"]


def judge_manifest(
    path: Path, workers: int, *, span_bytes: int = SPAN_BYTES
) -> Iterator[ManifestIssue | tuple[str, str]]:
    """For each line in order, its issues, or (resolution, duration) for a good line, checked
    against the earlier lines like ``read_manifest``'s jobs; the lines are judged by
    ``workers`` processes, or here when it is 0.

    Raises:
        OSError: the file cannot be opened or read.
    """
    name = str(path)
    with tempfile.TemporaryDirectory(prefix="pixazo-manifest-") as scratch:
        seen = SeenIndex(scratch)
        try:
            spans = ((None, (name, *span)) for span in _spans(path, span_bytes))
            for _, judged in in_order(_judge_span, spans, workers):
                yield from _checked(judged, seen, name)
        finally:
            seen.close()


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


def _judge_span(span: tuple[str, int, int, int]) -> list[ManifestIssue | Brief]:
    """In a worker: every line of one span (the manifest, the span's first and last byte and
    its first line's number) judged on its own."""
    name, start, stop, first = span
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
