"""Streams a JSONL manifest into ``JobSpec``s, reporting every bad line without stopping the rest.

Lines are read one at a time, so a manifest of any length runs in constant memory; duplicate ids
and output paths are found through a throwaway on-disk SQLite index rather than in-memory sets.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

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


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate escape (not text)") from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


class ManifestLine(BaseModel):
    """The JSON object on one manifest line (``docs/design.md``, "The manifest")."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    prompt: str = Field(min_length=PROMPT_LIMITS[0], max_length=PROMPT_LIMITS[1])
    image_url: str
    end_image_url: str = ""
    aspect_ratio: AspectRatio = AspectRatio.WIDE
    loop: StrictBool = False
    resolution: Resolution = Resolution.P540
    duration: Duration = Duration.SHORT
    output: str | None = None

    @field_validator("id", "prompt", "image_url", "end_image_url", "output", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return _encodable(value) if isinstance(value, str) else value

    @field_validator("image_url")
    @classmethod
    def _image_url(cls, value: str) -> str:
        return _http_url(value)

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
    path = PurePosixPath(value)
    if path.name in ("", "."):
        raise ValueError("must name a file, not a folder")
    if path.is_absolute() or ":" in path.parts[0]:
        raise ValueError("must be relative to the output folder, not absolute")
    if ".." in path.parts:
        raise ValueError("must stay inside the output folder ('..' is not allowed)")
    name = path.name.casefold()
    if (
        path.parts[0].casefold() in RESERVED_NAMES
        or name.startswith(".pixazo-batch")
        or name.endswith(RESERVED_SUFFIXES)
    ):
        raise ValueError(f"{path.name!r} is a name pixazo-batch uses itself")
    return str(path)


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
        self.db.execute(
            "CREATE TABLE seen (kind TEXT, value TEXT, line INTEGER, PRIMARY KEY (kind, value))"
        )
        # One transaction for the whole pass: a throwaway index needs no commits, and SQLite
        # spills its page cache to the file, so memory stays flat.
        self.db.execute("BEGIN")

    def first_line(self, kind: str, value: str, line: int) -> int | None:
        """The earlier line that used ``value`` as ``kind``, or None (and remember this one)."""
        added = self.db.execute(
            "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (kind, value, line)
        )
        if added.rowcount == 1:
            return None
        return self._line_of(kind, value)

    def output_conflict(self, output: str, line: int) -> str | None:
        """Why ``output`` cannot coexist with the outputs seen so far (the same file, a file
        where another needs a folder, or the reverse), or None (and remember it)."""
        parents = [str(p) for p in PurePosixPath(output).parents if str(p) != "."]
        earlier = self._line_of("output", output)
        if earlier is not None:
            return f"{output!r} is already the output of line {earlier}"
        earlier = self._line_of("folder", output)
        if earlier is not None:
            return f"{output!r} is a folder of the output of line {earlier}"
        for parent in parents:
            earlier = self._line_of("output", parent)
            if earlier is not None:
                return f"{parent!r} is the output of line {earlier}, so it cannot be a folder"
        self.db.executemany(
            "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [("output", output, line), *(("folder", parent, line) for parent in parents)],
        )
        return None

    def _line_of(self, kind: str, value: str) -> int | None:
        found = self.db.execute(
            "SELECT line FROM seen WHERE kind = ? AND value = ?", (kind, value)
        ).fetchone()
        return None if found is None else int(found[0])


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
        try:
            for number, raw in enumerate(_lines(lines), start=1):
                if raw is None:
                    message = f"longer than {MAX_LINE_BYTES} bytes; skipped"
                    yield ManifestIssue(name, number, "(line)", message)
                    continue
                yield from _parse_line(name, number, raw, seen)
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
    name: str, number: int, raw: bytes, seen: _DuplicateIndex
) -> Iterator[JobSpec | ManifestIssue]:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        yield ManifestIssue(name, number, "(line)", f"not valid UTF-8 (byte {exc.start + 1})")
        return
    if number == 1:
        text = text.removeprefix("\ufeff")  # the byte order mark spreadsheets write
    if not text or text.startswith("#"):
        return
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as exc:
        yield ManifestIssue(name, number, exc.key, "given twice in one object")
        return
    except RecursionError:
        yield ManifestIssue(name, number, "(line)", "invalid JSON: nested too deeply")
        return
    except ValueError as exc:
        yield ManifestIssue(name, number, "(line)", f"invalid JSON: {exc}")
        return
    if not isinstance(data, dict):
        yield ManifestIssue(name, number, "(line)", "expected a JSON object, one job per line")
        return
    try:
        entry = ManifestLine.model_validate(data)
    except ValidationError as exc:
        yield from _issues_from(exc, name, number)
        return
    fields = entry.model_dump(exclude={"id", "output"})
    request = GenerationRequest.model_validate(fields)
    job_id = entry.id or f"job-{request.request_hash()[:16]}"
    try:
        output = safe_output(entry.output if entry.output is not None else f"{job_id}.mp4")
    except ValueError as exc:
        yield ManifestIssue(name, number, "output", str(exc))
        return
    earlier = seen.first_line("id", job_id, number)
    if earlier is not None:
        hint = "" if entry.id else "; the same request twice: give each line its own id"
        message = f"duplicate id {job_id!r} (first on line {earlier}){hint}"
        yield ManifestIssue(name, number, "id", message)
        return
    conflict = seen.output_conflict(output, number)
    if conflict is not None:
        yield ManifestIssue(name, number, "output", conflict)
        return
    yield JobSpec(id=job_id, request=request, output=output, line=number)
