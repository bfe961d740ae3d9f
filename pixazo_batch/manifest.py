"""Streams a JSONL manifest into ``JobSpec``s, reporting every bad line without stopping the rest.

Lines are read one at a time, so a manifest of any length runs in constant memory; duplicate ids
and output paths are found through a throwaway on-disk SQLite index rather than in-memory sets.
"""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
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

#: names inside the output folder that belong to pixazo-batch itself (and their temp names)
RESERVED_NAMES = ("results.jsonl", "report.html", "inputs")
#: suffixes of the files pixazo-batch writes on the way to a final name
RESERVED_SUFFIXES = (".part", ".tmp", ".lock")
PROMPT_LIMITS = (3, 5000)
#: the longest manifest line read; a longer one is skipped (and reported) in constant memory
MAX_LINE_BYTES = 1 << 20
CHUNK = 1 << 16


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


class _DuplicateIndex:
    """Remembers ids and output paths already seen, on disk, so memory stays flat."""

    def __init__(self, folder: str) -> None:
        self.db = sqlite3.connect(Path(folder) / "seen.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE ids (value TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        # An output is a file; each of its parents is a folder: one name, one kind, one line.
        self.db.execute(
            "CREATE TABLE paths (value TEXT PRIMARY KEY, folder INTEGER, line INTEGER)"
            " WITHOUT ROWID"
        )
        # One transaction for the whole pass: a throwaway index needs no commits, and SQLite
        # spills its page cache to the file, so memory stays flat.
        self.db.execute("BEGIN")

    def first_line(self, job_id: str, line: int) -> int | None:
        """The earlier line that used ``job_id``, or None (and remember this one)."""
        added = self.db.execute(
            "INSERT INTO ids VALUES (?, ?) ON CONFLICT DO NOTHING", (job_id, line)
        )
        if added.rowcount == 1:
            return None
        (earlier,) = self.db.execute("SELECT line FROM ids WHERE value = ?", (job_id,)).fetchone()
        return int(earlier)

    def output_conflict(self, output: str, line: int) -> str | None:
        """Why ``output`` cannot coexist with the outputs seen so far (the same file, a file
        where another needs a folder, or the reverse), or None (and remember it)."""
        parents = []
        cut = output.rfind("/")
        while cut > 0:
            parents.append(output[:cut])
            cut = output.rfind("/", 0, cut)
        for parent in parents:
            found = self._find(parent)
            if found is not None and not found[0]:
                return f"{parent!r} is the output of line {found[1]}, so it cannot be a folder"
        added = self.db.execute(
            "INSERT INTO paths VALUES (?, 0, ?) ON CONFLICT DO NOTHING", (output, line)
        )
        if added.rowcount != 1:
            folder, earlier = self._find(output) or (False, 0)
            if folder:
                return f"{output!r} is a folder of the output of line {earlier}"
            return f"{output!r} is already the output of line {earlier}"
        if parents:
            self.db.executemany(
                "INSERT INTO paths VALUES (?, 1, ?) ON CONFLICT DO NOTHING",
                [(parent, line) for parent in parents],
            )
        return None

    def _find(self, value: str) -> tuple[bool, int] | None:
        found = self.db.execute(
            "SELECT folder, line FROM paths WHERE value = ?", (value,)
        ).fetchone()
        return None if found is None else (bool(found[0]), int(found[1]))


def read_manifest(path: Path) -> Iterator[JobSpec | ManifestIssue]:
    """Every job of the manifest, in order, or an issue for each bad line.

    Blank lines and lines starting with ``#`` are skipped. Never raises for bad content.

    Raises:
        OSError: the file cannot be opened or read.
    """
    name = str(path)
    with (
        tempfile.TemporaryDirectory(prefix="pixazo-manifest-") as scratch,
        open(path, "rb") as lines,
    ):
        seen = _DuplicateIndex(scratch)
        images = ImageReader(path.parent)
        try:
            for number, raw in enumerate(_lines(lines), start=1):
                if raw is None:
                    message = f"longer than {MAX_LINE_BYTES} bytes; skipped"
                    yield ManifestIssue(name, number, "(line)", message)
                    continue
                yield from _parse_line(name, number, raw, seen, images)
        finally:
            seen.db.close()


def _lines(source: BinaryIO) -> Iterator[bytes | None]:
    """Each line of ``source``; None for a line over ``MAX_LINE_BYTES``, which is skipped
    without ever being held whole."""
    while line := source.readline(MAX_LINE_BYTES + 1):
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while (rest := source.readline(CHUNK)) and not rest.endswith(b"\n"):
            pass
        yield None


def _parse_line(
    name: str, number: int, raw: bytes, seen: _DuplicateIndex, images: ImageReader
) -> Iterator[JobSpec | ManifestIssue]:
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
    yield _job(entry, name, number, seen, images)


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
    entry: ManifestLine, name: str, number: int, seen: _DuplicateIndex, images: ImageReader
) -> JobSpec | ManifestIssue:
    """The job a valid line describes, or why it cannot run beside the lines before it."""
    inputs: dict[str, Path] = {}
    urls = {"image_url": entry.image_url or "", "end_image_url": entry.end_image_url}
    for field, url_field in (("image_file", "image_url"), ("end_image_file", "end_image_url")):
        relative = getattr(entry, field)
        if relative is None:
            continue
        try:
            image = images.read(relative)
        except ValueError as exc:
            return ManifestIssue(name, number, field, str(exc))
        urls[url_field] = image.placeholder
        inputs[image.key] = image.path
    request = GenerationRequest.model_validate(
        {
            "prompt": entry.prompt,
            "image_url": urls["image_url"],
            "end_image_url": urls["end_image_url"],
            "aspect_ratio": entry.aspect_ratio,
            "loop": entry.loop,
            "resolution": entry.resolution,
            "duration": entry.duration,
        }
    )
    job_id = entry.id or f"job-{request.request_hash()[:16]}"
    try:
        output = safe_output(entry.output if entry.output is not None else f"{job_id}.mp4")
    except ValueError as exc:
        return ManifestIssue(name, number, "output", str(exc))
    earlier = seen.first_line(job_id, number)
    if earlier is not None:
        hint = "" if entry.id else "; the same request twice: give each line its own id"
        message = f"duplicate id {job_id!r} (first on line {earlier}){hint}"
        return ManifestIssue(name, number, "id", message)
    conflict = seen.output_conflict(output, number)
    if conflict is not None:
        return ManifestIssue(name, number, "output", conflict)
    return JobSpec(id=job_id, request=request, output=output, line=number, inputs=inputs)
