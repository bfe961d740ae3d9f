"""Streams a JSONL manifest into ``JobSpec``s, reporting every bad line without stopping the rest.

Lines are read one at a time (each judged by ``manifestline.py``, then checked against the
earlier ones a batch at a time), so a manifest of any length runs in constant memory; duplicate
ids and output paths are found through a throwaway on-disk index (``seenindex.py``) rather than
in-memory sets. A run may pass what earlier runs read: a line found there byte for byte is not
judged again (``docs/design.md``, "The manifest").
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar, overload

from pixazo_batch.images import ImageReader
from pixazo_batch.manifestline import (
    ManifestIssue,
    ManifestLine,
    careful_entry,
    plain_entry,
    safe_output,
)
from pixazo_batch.models import (
    GenerationRequest,
    JobSpec,
    JobState,
    canonical_hash,
    canonical_request,
)
from pixazo_batch.seenindex import BATCH, Claim, SeenIndex

#: the longest manifest line read; a longer one is skipped (and reported) in constant memory
MAX_LINE_BYTES = 1 << 20
CHUNK = 1 << 16
#: mixed into every line's digest: a version that reads a line into a different job must change
#: it, or a line recorded by an older one would stand for a job it no longer makes
LINE_DIGEST_KEY = b"pixazo-line-v1"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KnownJob:
    """A line an earlier run read into the job ``id`` (now in ``state``), found again byte for
    byte: valid, and recorded, as it was."""

    id: str
    state: JobState
    line: int


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
def read_manifest(path: Path) -> Iterator[JobSpec | ManifestIssue]: ...
@overload
def read_manifest(
    path: Path, known: KnownLines
) -> Iterator[JobSpec | KnownJob | ManifestIssue]: ...
def read_manifest(
    path: Path, known: KnownLines | None = None
) -> Iterator[JobSpec | KnownJob | ManifestIssue]:
    """Every job of the manifest, in order, or an issue for each bad line; with ``known``, a
    line whose job it holds with that line's digest is a ``KnownJob`` (still checked against
    the other lines), and the jobs of the other lines carry their digest when the line alone
    makes the job.

    Blank lines and lines starting with ``#`` are skipped. Never raises for bad content.

    Raises:
        OSError: the file cannot be opened or read.
    """
    name = str(path)
    with (
        tempfile.TemporaryDirectory(prefix="pixazo-manifest-") as scratch,
        open(path, "rb") as source,
    ):
        seen = SeenIndex(scratch)
        images = ImageReader(path.parent)
        first = 1
        try:
            while lines := list(itertools.islice(_lines(source), BATCH)):
                read = _read_batch(lines, first, name, images, known)
                first += len(lines)
                yield from _checked(read, seen, name)
        finally:
            seen.close()


def _read_batch(
    lines: list[bytes | None],
    first: int,
    name: str,
    images: ImageReader,
    known: KnownLines | None,
) -> list[Unchecked | ManifestIssue]:
    """Consecutive lines numbered from ``first``, each judged on its own or found in ``known``."""
    named: list[str | None] = [None] * len(lines)
    digests: list[bytes | None] = [None] * len(lines)
    recorded = {}
    if known is not None:
        digests = [None if raw is None else line_digest(raw) for raw in lines]
        named = [None if raw is None else _named_id(raw) for raw in lines]
        recorded = known([job_id for job_id in named if job_id is not None])
    read: list[Unchecked | ManifestIssue] = []
    for number, (raw, job_id, digest) in enumerate(
        zip(lines, named, digests, strict=True), start=first
    ):
        found = recorded.get(job_id) if job_id is not None else None
        if job_id is not None and found is not None and found[0] == digest:
            claim = Claim(number, job_id, found[1], True)
            read.append(Unchecked(claim, KnownJob(job_id, found[2], number)))
            continue
        judge = lambda entry, n, digest=digest: _job(entry, name, n, images, digest)  # noqa: E731
        read.extend(judge_line(raw, name, number, judge))
    return read


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A valid line's job, not yet checked against the other lines."""

    claim: Claim
    spec: JobSpec | KnownJob


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


def judge_line(
    raw: bytes | None, name: str, number: int, judge: Callable[[ManifestLine, int], T]
) -> list[T | ManifestIssue]:
    """One line judged on its own (None: a line over ``MAX_LINE_BYTES``): what ``judge``
    makes of its valid entry and number, its issues, or nothing for a blank or comment line."""
    if raw is None:
        return [
            ManifestIssue(name, number, "(line)", f"longer than {MAX_LINE_BYTES} bytes; skipped")
        ]
    entry: ManifestLine | list[ManifestIssue] | None = plain_entry(raw)
    if entry is None:
        entry = careful_entry(name, number, raw)
    if isinstance(entry, list):
        return list(entry)
    return [] if entry is None else [judge(entry, number)]


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


def _job(
    entry: ManifestLine,
    name: str,
    number: int,
    images: ImageReader,
    digest: bytes | None = None,
) -> Unchecked | ManifestIssue:
    """The job a valid line describes (not yet checked against the lines before it), or why
    it cannot run (an image file, an output path); it keeps the line's ``digest`` when the line
    alone makes it: an image file's bytes may change under the same line."""
    inputs: dict[str, Path] = {}
    if entry.image_file is not None or entry.end_image_file is not None or entry.id is None:
        digest = None
    if entry.image_file is None and entry.end_image_file is None:
        # The line holds the request's fields under the request's names, checked at least as
        # strictly as a request checks them: its canonical JSON is written from them directly.
        assert entry.image_url is not None  # one of image_url and image_file, not both
        request_json = canonical_request(
            prompt=entry.prompt,
            image_url=entry.image_url,
            end_image_url=entry.end_image_url,
            aspect_ratio=entry.aspect_ratio,
            loop=entry.loop,
            resolution=entry.resolution,
            duration=entry.duration,
        )
    else:
        urls: dict[str, object] = {
            "image_url": entry.image_url or "",
            "end_image_url": entry.end_image_url,
        }
        pairs = (("image_file", "image_url"), ("end_image_file", "end_image_url"))
        for field, url_field in pairs:
            relative = getattr(entry, field)
            if relative is None:
                continue
            try:
                image = images.read(relative)
            except ValueError as exc:
                return ManifestIssue(name, number, field, str(exc))
            urls[url_field] = image.placeholder
            inputs[image.key] = image.path
        urls.update(
            prompt=entry.prompt,
            aspect_ratio=entry.aspect_ratio,
            loop=entry.loop,
            resolution=entry.resolution,
            duration=entry.duration,
        )
        request_json = GenerationRequest.model_validate(urls).canonical_json()
    job_id = entry.id or f"job-{canonical_hash(request_json)[:16]}"
    try:
        output = _output(entry, job_id)
    except ValueError as exc:
        return ManifestIssue(name, number, "output", str(exc))
    price = entry.duration.price_cents
    spec = JobSpec(job_id, request_json, price, output, number, inputs, digest)
    return Unchecked(Claim(number, job_id, output, entry.id is not None), spec)


#: a valid line as ``validate`` needs it: its claim's fields, its resolution and its duration
#: (a plain tuple: it crosses between processes several times faster than a named one)
Brief = tuple[int, str, str, bool, str, str]


def brief(
    entry: ManifestLine, name: str, number: int, images: ImageReader
) -> Brief | ManifestIssue:
    """What ``validate`` needs of a valid line: ``_job``'s verdict, without building the job
    when the line names its id and no image file (the request's checks cannot refuse what the
    line's own let through)."""
    kind = (entry.resolution.value, entry.duration.value)  # a request's are the line's
    if entry.id is None or entry.image_file is not None or entry.end_image_file is not None:
        job = _job(entry, name, number, images)
        return job if isinstance(job, ManifestIssue) else (*job.claim, *kind)
    try:
        output = _output(entry, entry.id)
    except ValueError as exc:
        return ManifestIssue(name, number, "output", str(exc))
    return (number, entry.id, output, True, *kind)


def _output(entry: ManifestLine, job_id: str) -> str:
    """The line's output path (``safe_output``'s ValueError when it is not one)."""
    # An id (its pattern, or a hash) with ".mp4" is always a safe output: no check needed.
    return f"{job_id}.mp4" if entry.output is None else safe_output(entry.output)
