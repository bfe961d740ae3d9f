"""Streams a JSONL manifest into ``JobSpec``s, reporting every bad line without stopping the rest.

Lines are read one at a time (and checked against the earlier ones a batch at a time), so a
manifest of any length runs in constant memory; duplicate ids and output paths are found through
a throwaway on-disk index (``seenindex.py``) rather than in-memory sets.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from pixazo_batch.images import ImageReader
from pixazo_batch.models import AspectRatio, Duration, GenerationRequest, JobSpec, Resolution
from pixazo_batch.seenindex import BATCH, Claim, SeenIndex

#: names inside the output folder that belong to pixazo-batch itself (and their temp names)
RESERVED_NAMES = ("results.jsonl", "report.html", "inputs")
#: suffixes of the files pixazo-batch writes on the way to a final name
RESERVED_SUFFIXES = (".part", ".tmp", ".lock")
PROMPT_LIMITS = (3, 5000)
#: the longest manifest line read; a longer one is skipped (and reported) in constant memory
MAX_LINE_BYTES = 1 << 20
CHUNK = 1 << 16
T = TypeVar("T")


class _DuplicateKeyError(ValueError):
    """One JSON object names a key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKeyError(key)
        found[key] = value
    return found


@dataclass(frozen=True, slots=True)
class ManifestIssue:
    """One problem on one manifest line; ``str()`` gives ``file:line: field: message``."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"

    def log_fields(self) -> dict[str, object]:
        """The fields of its ``manifest_issue`` log line."""
        return {
            "file": self.path,
            "line": self.line,
            "field": self.field,
            "error": self.message,
            "problem": str(self),
        }


#: an http(s) URL with a plain host (no IPv6 bracket, no space): accepted without parsing
_SIMPLE_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][^\s]*)?$")
_PLAIN = json.JSONDecoder()
_CHECKED = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _decode(text: str) -> object:
    """The line's JSON value; a key given twice in one object raises ``_DuplicateKeyError``.

    Every key in the text is followed by ``":``, so when that pair occurs no more often than
    the decoded object has keys, no key can repeat; only otherwise (a nested object, a value
    containing ``":``, or a real duplicate) is the line decoded again, key by key.
    """
    data = _PLAIN.decode(text)
    if isinstance(data, dict) and text.count('":') > len(data):
        data = _CHECKED.decode(text)
    return data


def _lone_surrogate(data: dict[str, object], text: str) -> str | None:
    """The field whose text holds a lone surrogate (only a ``\\uD800``-``\\uDFFF`` escape can
    make one), "(line)" for a key that does, or None."""
    if "\\u" not in text and "\\U" not in text:
        return None
    for key, value in data.items():
        for text_part in (key, value):
            if isinstance(text_part, str):
                try:
                    text_part.encode("utf-8")
                except UnicodeEncodeError:
                    return key if text_part is value and key.isascii() else "(line)"
    return None


def _http_url(value: str) -> str:
    if _SIMPLE_URL.match(value):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


class ManifestLine(BaseModel):
    """The JSON object on one manifest line (``docs/design.md``, "The manifest")."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    prompt: str = Field(min_length=PROMPT_LIMITS[0], max_length=PROMPT_LIMITS[1])
    image_url: str | None = None
    end_image_url: str = ""
    #: a local image (relative to the manifest's folder), uploaded for the job
    image_file: str | None = None
    end_image_file: str | None = None
    aspect_ratio: AspectRatio = AspectRatio.WIDE
    loop: StrictBool = False
    resolution: Resolution = Resolution.P540
    duration: Duration = Duration.SHORT
    output: str | None = None

    @field_validator("image_url")
    @classmethod
    def _image_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _one_source_each(self) -> ManifestLine:
        if (self.image_url is None) == (self.image_file is None):
            raise ValueError("give exactly one of image_url and image_file")
        if self.end_image_url and self.end_image_file is not None:
            raise ValueError("give at most one of end_image_url and end_image_file")
        return self

    @field_validator("end_image_url")
    @classmethod
    def _end_image_url(cls, value: str) -> str:
        return value and _http_url(value)


def safe_output(value: str) -> str:
    """The normalised relative path of an ``output`` value.

    Raises:
        ValueError: absolute, escaping the folder, empty, or a name pixazo-batch reserves.
    """
    if not value or value != value.strip() or "\x00" in value or "\\" in value:
        raise ValueError("must be a plain relative path such as 'spring/tree-01.mp4'")
    if value.endswith("/"):
        raise ValueError("must name a file, not a folder")
    if value.startswith("/"):
        raise ValueError("must be relative to the output folder, not absolute")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if not parts:
        raise ValueError("must name a file, not a folder")
    if ":" in parts[0]:
        raise ValueError("must be relative to the output folder, not absolute")
    if ".." in parts:
        raise ValueError("must stay inside the output folder ('..' is not allowed)")
    name = parts[-1].casefold()
    if (
        parts[0].casefold() in RESERVED_NAMES
        or name.startswith(".pixazo-batch")
        or name.endswith(RESERVED_SUFFIXES)
    ):
        raise ValueError(f"{parts[-1]!r} is a name pixazo-batch uses itself")
    return "/".join(parts)


def _issues_from(error: ValidationError, path: str, line: int) -> Iterator[ManifestIssue]:
    for detail in error.errors():
        field = ".".join(str(p) for p in detail["loc"]) or "(line)"
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            message = f"unknown field; allowed: {', '.join(ManifestLine.model_fields)}"
        yield ManifestIssue(path, line, field, message)


def read_manifest(path: Path) -> Iterator[JobSpec | ManifestIssue]:
    """Every job of the manifest, in order, or an issue for each bad line.

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
        read: list[Unchecked | ManifestIssue] = []
        try:
            for item in read_lines(source, name, lambda entry, n: _job(entry, name, n, images)):
                read.append(item)
                if len(read) >= BATCH:
                    yield from _checked(read, seen, name)
                    read = []
            yield from _checked(read, seen, name)
        finally:
            seen.close()


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A valid line's job, not yet checked against the other lines."""

    claim: Claim
    spec: JobSpec


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
        if raw is None:
            message = f"longer than {MAX_LINE_BYTES} bytes; skipped"
            yield ManifestIssue(name, number, "(line)", message)
            continue
        entry = _plain_entry(raw)
        if entry is not None:
            yield judge(entry, number)
        else:
            yield from _parse_line(name, number, raw, judge)


def _checked(
    read: list[Unchecked | ManifestIssue], seen: SeenIndex, name: str
) -> Iterator[JobSpec | ManifestIssue]:
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


def _parse_line(
    name: str, number: int, raw: bytes, judge: Callable[[ManifestLine, int], T | ManifestIssue]
) -> Iterator[T | ManifestIssue]:
    data = _line_object(name, number, raw)
    if data is None:
        return
    if isinstance(data, ManifestIssue):
        yield data
        return
    try:
        entry = ManifestLine.model_validate(data)
    except ValidationError as exc:
        yield from _issues_from(exc, name, number)
        return
    yield judge(entry, number)


def _plain_entry(raw: bytes) -> ManifestLine | None:
    """The entry of an ordinary valid line, decoded and validated in one pass; None for any
    other line, which ``_line_object`` then reads the careful way and reports exactly.

    Lines with escapes (a lone surrogate hides there) go the careful way, and so does a line
    where ``":`` occurs more often than the entry has fields (a key may be given twice: JSON
    keeps the last, the careful way refuses the line).
    """
    if b"\\u" in raw:
        return None
    try:
        entry = ManifestLine.model_validate_json(raw)
    except ValidationError:
        return None
    return entry if raw.count(b'":') <= len(entry.model_fields_set) else None


def _line_object(name: str, number: int, raw: bytes) -> dict[str, object] | ManifestIssue | None:
    """The JSON object on the line, an issue, or None for a blank line or a comment."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return ManifestIssue(name, number, "(line)", f"not valid UTF-8 (byte {exc.start + 1})")
    if number == 1:
        text = text.removeprefix("\ufeff")  # the byte order mark spreadsheets write
    if not text or text.startswith("#"):
        return None
    try:
        data = _decode(text)
    except _DuplicateKeyError as exc:
        return ManifestIssue(name, number, exc.key, "given twice in one object")
    except RecursionError:
        return ManifestIssue(name, number, "(line)", "invalid JSON: nested too deeply")
    except ValueError as exc:
        return ManifestIssue(name, number, "(line)", f"invalid JSON: {exc}")
    if not isinstance(data, dict):
        return ManifestIssue(name, number, "(line)", "expected a JSON object, one job per line")
    surrogate = _lone_surrogate(data, text)
    if surrogate is not None:
        return ManifestIssue(name, number, surrogate, "contains a lone surrogate escape (not text)")
    return data


def _job(
    entry: ManifestLine, name: str, number: int, images: ImageReader
) -> Unchecked | ManifestIssue:
    """The job a valid line describes (not yet checked against the lines before it), or why
    it cannot run (an image file, an output path)."""
    inputs: dict[str, Path] = {}
    if entry.image_file is None and entry.end_image_file is None:
        # The line holds the request's fields under the request's names: read them directly.
        request = GenerationRequest.model_validate(entry, from_attributes=True)
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
        request = GenerationRequest.model_validate(urls)
    job_id = entry.id or f"job-{request.request_hash()[:16]}"
    try:
        output = _output(entry, job_id)
    except ValueError as exc:
        return ManifestIssue(name, number, "output", str(exc))
    spec = JobSpec(id=job_id, request=request, output=output, line=number, inputs=inputs)
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
    if entry.id is None or entry.image_file is not None or entry.end_image_file is not None:
        job = _job(entry, name, number, images)
        if isinstance(job, ManifestIssue):
            return job
        request = job.spec.request
        return (*job.claim, request.resolution.value, request.duration.value)
    try:
        output = _output(entry, entry.id)
    except ValueError as exc:
        return ManifestIssue(name, number, "output", str(exc))
    return (number, entry.id, output, True, entry.resolution.value, entry.duration.value)


def _output(entry: ManifestLine, job_id: str) -> str:
    """The line's output path (``safe_output``'s ValueError when it is not one)."""
    # An id (its pattern, or a hash) with ".mp4" is always a safe output: no check needed.
    return f"{job_id}.mp4" if entry.output is None else safe_output(entry.output)
