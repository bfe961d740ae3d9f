"""Contract tests of the simulated media origin: real MP4s, Range, ETag and the CDN's faults."""

from __future__ import annotations

import hashlib
import io
import struct

import aiohttp
import pytest

from pixazo_batch.mp4 import inspect
from pixazo_batch.sim import Simulator
from pixazo_batch.sim.media import MediaFile, clip, parse_range
from pixazo_batch.sim.scenario import Scenario
from tests.conftest import TEST_KEY, fast, post_submit, simulator

pytestmark = pytest.mark.anyio

BODY = {"prompt": "A lighthouse at dusk", "image_url": "https://img.example.com/a.jpg"}
KEY_HEADER = {"Ocp-Apim-Subscription-Key": TEST_KEY}


def top_level_boxes(data: bytes) -> list[tuple[str, int]]:
    boxes = []
    offset = 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        assert size >= 8, f"bad box size at {offset}"
        boxes.append((kind.decode("ascii"), size))
        offset += size
    assert offset == len(data), "boxes must tile the file exactly"
    return boxes


async def media_url(session: aiohttp.ClientSession, sim: Simulator) -> str:
    submitted = await (await post_submit(session, sim, BODY)).json()
    status = await (await session.get(submitted["polling_url"], headers=KEY_HEADER)).json()
    url: str = status["output"]["media_url"][0]
    return url


ASPECTS = ("16:9", "9:16", "4:3", "3:4", "21:9", "9:21")


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("duration", ["5s", "9s"])
def test_each_shipped_clip_is_an_h264_mp4_of_its_aspect_ratio_and_duration(
    aspect: str, duration: str
) -> None:
    data = clip(aspect, duration)
    kinds = [kind for kind, _ in top_level_boxes(data)]
    assert kinds[0] == "ftyp"
    assert {"moov", "mdat"} <= set(kinds)
    assert b"avc1" in data
    info = inspect(io.BytesIO(data), len(data))
    wide, high = (int(n) for n in aspect.split(":"))
    assert info.duration == float(duration.removesuffix("s"))
    assert info.width / info.height == pytest.approx(wide / high, rel=0.01)


def test_padded_file_stays_a_valid_mp4_with_a_trailing_free_box() -> None:
    media = MediaFile("req-1", 300_000)
    data = b"".join(media.chunks(0, media.size, 65_536))
    assert len(data) == media.size == 300_000
    boxes = top_level_boxes(data)
    assert boxes[0][0] == "ftyp" and boxes[-1][0] == "free"
    assert media.etag == f'"{hashlib.md5(data).hexdigest()}"'


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 100)),
        ("bytes=900-", 1000, (900, 1000)),
        ("bytes=-100", 1000, (900, 1000)),
        ("bytes=990-2000", 1000, (990, 1000)),
        ("bytes=1000-", 1000, None),
    ],
)
def test_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


async def test_media_download_has_length_etag_and_ranges() -> None:
    async with simulator(fast(media_bytes=100_000)) as sim, aiohttp.ClientSession() as session:
        url = await media_url(session, sim)
        full = await session.get(url)
        data = await full.read()
        head = await session.head(url)
        ranged = await session.get(url, headers={"Range": "bytes=1000-1999"})
        piece = await ranged.read()
        suffix = await session.get(url, headers={"Range": "bytes=-10"})
        beyond = await session.get(url, headers={"Range": f"bytes={len(data)}-"})
        stale = await session.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        stats = sim.stats()
    assert full.status == 200
    assert int(full.headers["Content-Length"]) == len(data)
    assert full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)
    assert ranged.status == 206 and piece == data[1000:2000]
    assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert suffix.status == 206 and await suffix.read() == data[-10:]
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert stale.status == 200, "If-Range with another ETag serves the whole file"
    assert stats["key_leaks"] == 0


async def test_media_origin_counts_requests_that_carry_the_key() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        url = await media_url(session, sim)
        await (await session.get(url, headers=KEY_HEADER)).read()
        await (await session.get(url, headers={"Authorization": f"Bearer {TEST_KEY}"})).read()
        stats = sim.stats()
    assert stats["key_leaks"] == 2


async def test_truncated_body_is_cut_half_way() -> None:
    scenario: Scenario = fast(media_bytes=2_000_000, media_truncate_rate=1.0, media_chunk=65_536)
    async with simulator(scenario) as sim, aiohttp.ClientSession() as session:
        url = await media_url(session, sim)
        response = await session.get(url)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        stats = sim.stats()
    assert stats["media_truncated"] == 1
    assert stats["media_bytes"] < 2_000_000


async def test_expired_url_answers_403_until_the_status_is_polled_again() -> None:
    async with simulator(fast(media_expire_rate=1.0)) as sim, aiohttp.ClientSession() as session:
        submitted = await (await post_submit(session, sim, BODY)).json()
        first = await (await session.get(submitted["polling_url"], headers=KEY_HEADER)).json()
        expired = await session.get(first["output"]["media_url"][0])
        second = await (await session.get(submitted["polling_url"], headers=KEY_HEADER)).json()
        fresh = await session.get(second["output"]["media_url"][0])
        again = await session.get(first["output"]["media_url"][0])
    assert expired.status == 403
    assert fresh.status == 200
    assert again.status == 403


async def test_unknown_media_answers_404() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        response = await session.get(f"{sim.media_url}/v1/nothing/output.mp4?v=0")
    assert response.status == 404


async def test_a_page_instead_of_the_video_is_a_200_without_an_ftyp_box() -> None:
    async with (
        simulator(fast(media_not_mp4_rate=1.0)) as sim,
        aiohttp.ClientSession() as session,
    ):
        response = await session.get(await media_url(session, sim))
        body = await response.read()
        stats = sim.stats()
    assert response.status == 200
    assert response.content_type == "text/html"
    assert body[4:8] != b"ftyp" and len(body) == response.content_length
    assert stats["faults"]["media_not_mp4"] == 1
