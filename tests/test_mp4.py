"""The MP4 reader on the shipped clips, and on files cut short, padded or foreign."""

from __future__ import annotations

import io
import struct

import pytest

from pixazo_batch.mp4 import Mp4Error, Mp4Info, inspect, mismatch
from pixazo_batch.sim.media import clip

ASPECTS = ("16:9", "9:16", "4:3", "3:4", "21:9", "9:21")


def read(data: bytes) -> Mp4Info:
    return inspect(io.BytesIO(data), len(data))


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("duration", ["5s", "9s"])
def test_every_shipped_clip_reads_as_what_it_was_made_for(aspect: str, duration: str) -> None:
    info = read(clip(aspect, duration))
    assert mismatch(info, seconds=int(duration[0]), aspect_ratio=aspect) is None


@pytest.mark.parametrize("cut", [7, 8, 40, 200, 1000, -300, -1])
def test_a_file_cut_short_is_refused(cut: int) -> None:
    data = clip()
    with pytest.raises(Mp4Error):
        read(data[:cut])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "does not start with an ftyp box"),
        (b"<html><body>Sign in</body></html>", "does not start with an ftyp box"),
        (struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0" + b"<html>not a video</html>", "fit"),
        (
            struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0" + struct.pack(">I4s", 8, b"free"),
            "moov",
        ),
        (b"", "does not start with an ftyp box"),
    ],
)
def test_a_foreign_file_is_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(Mp4Error, match=message):
        read(data)


def test_bytes_after_the_last_box_are_refused() -> None:
    with pytest.raises(Mp4Error, match="does not fit"):
        read(clip() + b"junk after the end")


def test_a_64_bit_box_and_a_box_to_the_end_of_the_file_are_understood() -> None:
    data = clip()
    large = struct.pack(">I4sQ", 1, b"free", 16 + 100) + b"\x00" * 100
    to_end = struct.pack(">I4s", 0, b"free") + b"\x00" * 50
    assert read(data + large + to_end) == read(data)


def test_mismatch_names_what_differs() -> None:
    info = Mp4Info(duration=5.0, width=96, height=54)
    assert mismatch(info, seconds=5, aspect_ratio="16:9") is None
    assert mismatch(info, seconds=6, aspect_ratio="16:9") is None, "within a second"
    assert (
        mismatch(info, seconds=9, aspect_ratio="9:16") == "lasts 5.0 s, not 9 s; is 96x54, not 9:16"
    )
    assert mismatch(Mp4Info(5.0, 0, 0), seconds=5, aspect_ratio="16:9") == "has no video track"
