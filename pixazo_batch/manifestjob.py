"""One manifest line judged on its own: the job it makes, or why it cannot run (``docs/design.md``,
"The manifest"). Whether it conflicts with the other lines is ``manifest.py``'s concern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

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
from pixazo_batch.seenindex import Claim

#: the longest manifest line read; a longer one is skipped (and reported) in constant memory
MAX_LINE_BYTES = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KnownJob:
    """A line an earlier run read into the job ``id`` (now in ``state``), found again byte for
    byte: valid, and recorded, as it was."""

    id: str
    state: JobState
    line: int


class Unchecked(NamedTuple):
    """A valid line's job, not yet checked against the other lines."""

    claim: Claim
    spec: JobSpec | KnownJob


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


def line_job(
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
    request_hash = canonical_hash(request_json)
    job_id = entry.id or f"job-{request_hash[:16]}"
    try:
        output = _output(entry, job_id)
    except ValueError as exc:
        return ManifestIssue(name, number, "output", str(exc))
    price = entry.duration.price_cents
    spec = JobSpec(
        job_id, request_json, request_hash, price, output, number, inputs or None, digest
    )
    return Unchecked(Claim(number, job_id, output, entry.id is not None), spec)


#: a valid line as ``validate`` needs it: its claim's fields, its resolution and its duration
#: (a plain tuple: it crosses between processes several times faster than a named one)
Brief = tuple[int, str, str, bool, str, str]


def brief(
    entry: ManifestLine, name: str, number: int, images: ImageReader
) -> Brief | ManifestIssue:
    """What ``validate`` needs of a valid line: ``line_job``'s verdict, without building the job
    when the line names its id and no image file (the request's checks cannot refuse what the
    line's own let through)."""
    kind = (entry.resolution.value, entry.duration.value)  # a request's are the line's
    if entry.id is None or entry.image_file is not None or entry.end_image_file is not None:
        job = line_job(entry, name, number, images)
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
