"""A small reader of the MP4 (ISO base media) container: enough to know a file is a whole video.

``inspect`` walks the top-level boxes (each a 32-bit size, or 64-bit when the size is 1, and a
four-letter type) and requires what every playable MP4 has: ``ftyp`` first, a ``moov`` and an
``mdat``, and sizes that add up to the file's length exactly. It then reads the movie header
(``mvhd``: timescale and duration) and the first video track's header (``tkhd``: width and height,
16.16 fixed point), so a download can be compared with its request. Box layouts follow ISO/IEC
14496-12 sections 4.2 (box), 8.2.2 (mvhd) and 8.3.2 (tkhd).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

#: the longest ``moov`` read into memory (sample tables of hour-long videos stay far below)
MOOV_LIMIT = 64 << 20


class Mp4Error(ValueError):
    """The bytes are not a whole MP4 file; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Mp4Info:
    """What a video's headers say about it."""

    #: seconds, from the movie header
    duration: float
    #: pixels of the first video track (0 when the file has none)
    width: int
    height: int


def inspect(source: BinaryIO, length: int) -> Mp4Info:
    """Check the top-level structure of an MP4 of ``length`` bytes and read its headers.

    Raises:
        Mp4Error: not an MP4, cut short, padded, or missing its movie header.
    """
    source.seek(0)
    if source.read(8)[4:8] != b"ftyp":
        raise Mp4Error("not an MP4 file (it does not start with an ftyp box)")
    boxes = _boxes(source, 0, length)
    types = {kind for kind, _, _ in boxes}
    for needed in (b"moov", b"mdat"):
        if needed not in types:
            raise Mp4Error(f"not a whole MP4 file (no {needed.decode()} box)")
    _, start, end = next(box for box in boxes if box[0] == b"moov")
    if end - start > MOOV_LIMIT:
        raise Mp4Error("the movie header is implausibly large")
    source.seek(start)
    return _movie(source.read(end - start))


def _boxes(source: BinaryIO, offset: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box from ``offset`` to ``end`` in ``source``."""
    found: list[tuple[bytes, int, int]] = []
    while offset < end:
        source.seek(offset)
        header = source.read(8)
        if len(header) < 8:
            raise Mp4Error(f"cut short inside a box header at byte {offset}")
        size, kind = struct.unpack(">I4s", header)
        start = offset + 8
        if size == 1:
            large = source.read(8)
            if len(large) < 8:
                raise Mp4Error(f"cut short inside a box header at byte {offset}")
            (size,) = struct.unpack(">Q", large)
            start += 8
        elif size == 0:
            size = end - offset
        if size < start - offset or offset + size > end:
            raise Mp4Error(f"box {kind!r} at byte {offset} does not fit the file's length")
        found.append((kind, start, offset + size))
        offset += size
    return found


def _children(data: bytes) -> dict[bytes, list[bytes]]:
    """The boxes inside a container's payload, by type (malformed tails are ignored)."""
    children: dict[bytes, list[bytes]] = {}
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1 and offset + 16 <= len(data):
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = len(data) - offset
        if size < header or offset + size > len(data):
            break
        children.setdefault(kind, []).append(data[offset + header : offset + size])
        offset += size
    return children


def _movie(moov: bytes) -> Mp4Info:
    inside = _children(moov)
    if b"mvhd" not in inside:
        raise Mp4Error("no movie header (mvhd) in the moov box")
    duration = _mvhd_duration(inside[b"mvhd"][0])
    width = height = 0
    for trak in inside.get(b"trak", []):
        parts = _children(trak)
        media = _children(parts.get(b"mdia", [b""])[0])
        handler = media.get(b"hdlr", [b""])[0]
        if handler[8:12] == b"vide" and b"tkhd" in parts:
            width, height = _tkhd_size(parts[b"tkhd"][0])
            break
    return Mp4Info(duration=duration, width=width, height=height)


def _mvhd_duration(mvhd: bytes) -> float:
    try:
        if mvhd[0] == 1:
            timescale, duration = struct.unpack_from(">IQ", mvhd, 20)
        else:
            timescale, duration = struct.unpack_from(">II", mvhd, 12)
    except (IndexError, struct.error) as exc:
        raise Mp4Error("the movie header (mvhd) is cut short") from exc
    if timescale == 0:
        raise Mp4Error("the movie header (mvhd) has no timescale")
    return float(duration) / float(timescale)


def _tkhd_size(tkhd: bytes) -> tuple[int, int]:
    # version/flags 4, then times and ids (20 bytes in version 0, 32 in version 1), reserved 8,
    # layer 2, alternate group 2, volume 2, reserved 2, matrix 36: then width and height.
    offset = 4 + (32 if tkhd[:1] == b"\x01" else 20) + 8 + 8 + 36
    try:
        width, height = struct.unpack_from(">II", tkhd, offset)
    except struct.error as exc:
        raise Mp4Error("the track header (tkhd) is cut short") from exc
    return width >> 16, height >> 16


#: how far a video may stray from its request before it is flagged
DURATION_TOLERANCE = 1.0
ASPECT_TOLERANCE = 0.02


def mismatch(info: Mp4Info, *, seconds: float, aspect_ratio: str) -> str | None:
    """How the video differs from what was asked (``aspect_ratio`` as "16:9"), or None."""
    problems: list[str] = []
    if abs(info.duration - seconds) > DURATION_TOLERANCE:
        problems.append(f"lasts {info.duration:.1f} s, not {seconds:g} s")
    wide, high = (int(part) for part in aspect_ratio.split(":"))
    if not info.width or not info.height:
        problems.append("has no video track")
    elif abs((info.width / info.height) / (wide / high) - 1) > ASPECT_TOLERANCE:
        problems.append(f"is {info.width}x{info.height}, not {aspect_ratio}")
    return "; ".join(problems) or None
