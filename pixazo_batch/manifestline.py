"""One manifest line: decoded strictly, its fields checked, its output path made safe
(``docs/design.md``, "The manifest").

An ordinary line is decoded and validated in one pydantic pass (``plain_entry``); any other is
read again the careful way (``careful_entry``), which names the field at fault: a key given
twice, a lone surrogate escape, invalid UTF-8 or JSON, or the first field pydantic refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
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

from pixazo_batch.models import AspectRatio, Duration, Resolution

#: names inside the output folder that belong to pixazo-batch itself (and their temp names)
RESERVED_NAMES = ("results.jsonl", "report.html", "inputs")
#: suffixes of the files pixazo-batch writes on the way to a final name
RESERVED_SUFFIXES = (".part", ".tmp", ".lock")
PROMPT_LIMITS = (3, 5000)


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
    own = next((part for part in parts if part.casefold().startswith(".pixazo-batch")), None)
    if own is not None or parts[0].casefold() in RESERVED_NAMES or name.endswith(RESERVED_SUFFIXES):
        raise ValueError(f"{own or parts[-1]!r} is a name pixazo-batch uses itself")
    return "/".join(parts)


def _issues_from(error: ValidationError, path: str, line: int) -> Iterator[ManifestIssue]:
    for detail in error.errors():
        field = ".".join(str(p) for p in detail["loc"]) or "(line)"
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            message = f"unknown field; allowed: {', '.join(ManifestLine.model_fields)}"
        yield ManifestIssue(path, line, field, message)


def careful_entry(name: str, number: int, raw: bytes) -> ManifestLine | list[ManifestIssue] | None:
    """The entry of a line ``plain_entry`` did not take, its issues, or None for a blank line
    or a comment."""
    data = _line_object(name, number, raw)
    if data is None:
        return None
    if isinstance(data, ManifestIssue):
        return [data]
    try:
        return ManifestLine.model_validate(data)
    except ValidationError as exc:
        return list(_issues_from(exc, name, number))


def plain_entry(raw: bytes) -> ManifestLine | None:
    """The entry of an ordinary valid line, decoded and validated in one pass; None for any
    other line, which ``careful_entry`` then reads and reports exactly.

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
