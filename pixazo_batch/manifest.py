"""Streams a JSONL manifest into ``JobSpec``s, reporting every bad line without stopping the rest.

Lines are read a batch at a time, each judged on its own (``manifestjob.py``; by worker
processes for a large manifest, ``workpool.py``), then checked against the earlier ones, so a
manifest of any length runs in constant memory; duplicate ids and output paths are found
through a throwaway on-disk index (``seenindex.py``) rather than in-memory sets. A run may pass
what earlier runs read: a line found there byte for byte is not judged again
(``docs/design.md``, "The manifest").
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar, overload

from pixazo_batch.images import ImageReader
from pixazo_batch.manifestjob import (
    MAX_LINE_BYTES,
    KnownJob,
    Unchecked,
    judge_line,
    line_job,
)
from pixazo_batch.manifestline import ManifestIssue, ManifestLine
from pixazo_batch.models import JobSpec, JobState
from pixazo_batch.seenindex import BATCH, Claim, SeenIndex
from pixazo_batch.workpool import in_order

CHUNK = 1 << 16
#: the bytes of lines one batch holds at most (past its last line): lines of up to
#: ``MAX_LINE_BYTES`` each, a few thousand to a batch, would otherwise hold gigabytes
BATCH_BYTES = 1 << 20
#: mixed into every line's digest: a version that reads a line into a different job must change
#: it, or a line recorded by an older one would stand for a job it no longer makes
LINE_DIGEST_KEY = b"pixazo-line-v1"
T = TypeVar("T")
#: what ``read_manifest`` returns: its lines' verdicts, in order
Lines = Generator[T, None, None]


#: for those of the job ids given that earlier runs recorded from a line alone: that line's
#: digest, the job's output and its state
KnownLines = Callable[[list[str]], dict[str, tuple[bytes, str, JobState]]]
#: where a line most likely names its id: only a guess, which the line's digest confirms
_NAMED_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,128})"')


def _named_id(raw: bytes) -> str | None:
    """The id a raw line most likely names, if any (a guess: see ``_NAMED_ID``)."""
    match = _NAMED_ID.search(raw)
    return None if match is None else match[1].decode(errors="replace")


def line_digest(raw: bytes) -> bytes:
    """What a later run knows a line by (the same line, trailing blanks aside, has the same)."""
    return hashlib.blake2b(raw.rstrip(b" \t\r\n"), digest_size=16, person=LINE_DIGEST_KEY).digest()


@overload
def read_manifest(path: Path, *, workers: int = 0) -> Lines[JobSpec | ManifestIssue]: ...
@overload
def read_manifest(
    path: Path, known: KnownLines, *, workers: int = 0
) -> Lines[JobSpec | KnownJob | ManifestIssue]: ...
def read_manifest(
    path: Path, known: KnownLines | None = None, *, workers: int = 0
) -> Lines[JobSpec | KnownJob | ManifestIssue]:
    """Every job of the manifest, in order, or an issue for each bad line; with ``known``, a
    line whose job it holds with that line's digest is a ``KnownJob`` (still checked against
    the other lines), and the jobs of the other lines carry their digest when the line alone
    makes the job. ``workers`` processes judge the lines (``workpool.py``); 0: this one.

    Blank lines and lines starting with ``#`` are skipped. Never raises for bad content. Close
    what it returns when not read to its end (its worker processes and scratch files go then).

    Raises:
        OSError: the file cannot be opened or read.
    """
    name = str(path)
    with (
        tempfile.TemporaryDirectory(prefix="pixazo-manifest-") as scratch,
        open(path, "rb") as source,
    ):
        seen = SeenIndex(scratch)
        # Lines judged here share one reader; worker processes keep their own (``_reader``).
        images = secrets.token_hex(8) if workers else ImageReader(path.parent)
        try:
            # A worker is sent several batches at once: each piece sent costs this process too.
            pieces = _batches(source, name, known, images, BATCH * (4 if workers else 1))
            for (first, named, recorded), judged in in_order(judge_batch, pieces, workers):
                read = _merged(first, named, recorded, judged)
                for at in range(0, len(read), BATCH):
                    yield from _checked(read[at : at + BATCH], seen, name)
        finally:
            seen.close()


class Batch(NamedTuple):
    """Consecutive lines of a manifest, as they are judged (here or in a worker process)."""

    name: str
    #: the first line's number
    first: int
    lines: list[bytes | None]
    #: the digest each line has when its job is known as it was (None: not known)
    expected: list[bytes | None]
    #: whether a job a line alone makes carries the line's digest
    digests: bool
    #: the pass's image reader, or in a worker process a token naming the pass (``_reader``)
    images: ImageReader | str


#: what stays here of a batch: its first line's number, the id each line names, the known ones
BatchLocal = tuple[int, list[str | None], dict[str, tuple[bytes, str, JobState]]]
#: a job as it crosses from a worker process, in a plain tuple (several times faster to send
#: than its named ones): its claim's fields, then its request's JSON, hash and price, its
#: inputs and its line's digest
Flat = tuple[int, str, str, bool, str, str, int, dict[str, Path] | None, bytes | None]
#: each line judged: None for a line known as it was, else its job (maybe flat) or its issues
#: (none for a blank line)
Judged = list[list[Unchecked | ManifestIssue] | Flat | None]


def _batches(
    source: BinaryIO, name: str, known: KnownLines | None, images: ImageReader | str, size: int
) -> Iterator[tuple[BatchLocal, Batch]]:
    """The manifest's lines ``size`` at a time (fewer once they hold ``BATCH_BYTES``), each
    with what ``known`` holds of its job."""
    first = 1
    every_line = _lines(source)
    while lines := _taken(every_line, size):
        named: list[str | None] = [None] * len(lines)
        recorded = {}
        if known is not None:
            named = [None if raw is None else _named_id(raw) for raw in lines]
            ids = [job_id for job_id in named if job_id is not None]
            for at in range(0, len(ids), BATCH):
                recorded.update(known(ids[at : at + BATCH]))
        expected = [None if job_id not in recorded else recorded[job_id][0] for job_id in named]
        batch = Batch(name, first, lines, expected, known is not None, images)
        yield (first, named, recorded), batch
        first += len(lines)


def _taken(lines: Iterator[bytes | None], count: int) -> list[bytes | None]:
    """The next ``count`` of ``lines``, or fewer once they hold ``BATCH_BYTES``."""
    taken: list[bytes | None] = []
    held = 0
    for raw in lines:
        taken.append(raw)
        held += 0 if raw is None else len(raw)
        if len(taken) == count or held >= BATCH_BYTES:
            break
    return taken


def judge_batch(batch: Batch) -> Judged:
    """Each line of ``batch`` judged on its own, unless its digest is the one expected of it
    (a job known as it was)."""
    name, images = batch.name, batch.images
    crossing = isinstance(images, str)
    if isinstance(images, str):
        images = _reader(Path(name).parent, images)
    judged: Judged = []
    for number, (raw, wanted) in enumerate(
        zip(batch.lines, batch.expected, strict=True), start=batch.first
    ):
        digest = None if raw is None or not batch.digests else line_digest(raw)
        if wanted is not None and digest == wanted:
            judged.append(None)
            continue
        judge = lambda entry, n, digest=digest: line_job(entry, name, n, images, digest)  # noqa: E731
        verdict = judge_line(raw, name, number, judge)
        if crossing and len(verdict) == 1 and isinstance(job := verdict[0], Unchecked):
            claim, spec = job
            assert isinstance(spec, JobSpec)  # a line is found known here, never there
            judged.append((*claim, *spec[1:4], spec.inputs, spec.digest))
            continue
        judged.append(verdict)
    return judged


#: in a worker process, the image reader of the pass it works for: each image read once a pass
_PASS_READER: dict[str, ImageReader] = {}


def _reader(folder: Path, token: str) -> ImageReader:
    reader = _PASS_READER.get(token)
    if reader is None:
        _PASS_READER.clear()
        reader = _PASS_READER[token] = ImageReader(folder)
    return reader


def _merged(
    first: int,
    named: list[str | None],
    recorded: dict[str, tuple[bytes, str, JobState]],
    judged: Judged,
) -> list[Unchecked | ManifestIssue]:
    """A batch's lines in order: known jobs from ``recorded``, the others as judged."""
    read: list[Unchecked | ManifestIssue] = []
    for number, (job_id, verdict) in enumerate(zip(named, judged, strict=True), start=first):
        if isinstance(verdict, list):
            read.extend(verdict)
            continue
        if verdict is not None:
            line, made_id, output, given, json_form, hashed, price, inputs, digest = verdict
            spec = JobSpec(made_id, json_form, hashed, price, output, line, inputs, digest)
            read.append(Unchecked(Claim(line, made_id, output, given), spec))
            continue
        assert job_id is not None  # only a line naming a known id is found known
        _, output, state = recorded[job_id]
        read.append(Unchecked(Claim(number, job_id, output, True), KnownJob(job_id, state, number)))
    return read


def read_lines(
    source: BinaryIO,
    name: str,
    judge: Callable[[ManifestLine, int], T | ManifestIssue],
    *,
    first: int = 1,
    size: int | None = None,
) -> Iterator[T | ManifestIssue]:
    """Each line of ``source`` from where it stands (of its next ``size`` bytes, which end at a
    line's end) judged on its own, numbered from ``first``: what ``judge`` makes of its valid
    entry and number, or its issues. Never raises for bad content.

    Raises:
        OSError: the file cannot be read.
    """
    for number, raw in enumerate(_lines(source, size), start=first):
        yield from judge_line(raw, name, number, judge)


def _checked(
    read: list[Unchecked | ManifestIssue], seen: SeenIndex, name: str
) -> Iterator[JobSpec | KnownJob | ManifestIssue]:
    """The lines read, in order, each job checked against every earlier line's."""
    conflicts = iter(seen.check([item.claim for item in read if isinstance(item, Unchecked)]))
    for item in read:
        if isinstance(item, ManifestIssue):
            yield item
            continue
        conflict = next(conflicts)
        yield (
            item.spec
            if conflict is None
            else ManifestIssue(name, conflict.line, conflict.field, conflict.message)
        )


def _lines(source: BinaryIO, size: int | None = None) -> Iterator[bytes | None]:
    """Each line of ``source`` (of its next ``size`` bytes); None for a line over
    ``MAX_LINE_BYTES``, which is skipped without ever being held whole."""
    left = math.inf if size is None else size  # counted: asking the file costs a system call
    while left > 0 and (line := source.readline(MAX_LINE_BYTES + 1)):
        left -= len(line)
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while (rest := source.readline(CHUNK)) and not rest.endswith(b"\n"):
            left -= len(rest)
        left -= len(rest)
        yield None
