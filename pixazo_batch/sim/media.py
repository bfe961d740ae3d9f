"""The simulated media CDN: real MP4 files, served with Range, ETag and the CDN's faults.

Every video is one of the small H.264 clips shipped in ``clips/`` (one per aspect ratio and
duration, made by ``tools/make_clips.sh``), the one matching the job's request, followed by a
``free`` box that pads it to the job's size. A trailing ``free`` box moves no sample offset, so
the result stays a valid, playable MP4 of any size, and its padding is derived from the request
id so any byte range can be produced without holding the file in memory.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from functools import cache
from importlib import resources

from aiohttp import web

from pixazo_batch.sim.jobs import SimJob
from pixazo_batch.sim.state import SimState

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NOT_A_VIDEO = "<html><body><h1>Please sign in to continue</h1></body></html>"


@cache
def clip(aspect_ratio: str = "16:9", duration: str = "5s") -> bytes:
    """The shipped H.264 clip of that aspect ratio ("16:9") and duration ("5s")."""
    name = f"{aspect_ratio.replace(':', 'x')}-{duration}.mp4"
    return resources.files("pixazo_batch.sim").joinpath("clips", name).read_bytes()


class MediaFile:
    """The bytes of one job's video, produced lazily by range.

    Usage: ``MediaFile(request_id, size, clip("9:16", "9s"))``.
    """

    def __init__(self, request_id: str, size: int, head: bytes | None = None) -> None:
        head = clip() if head is None else head
        pad = max(8, size - len(head))
        self.head = head + struct.pack(">I4s", pad, b"free")
        self.size = len(head) + pad
        seed = hashlib.sha256(request_id.encode()).digest()
        self._block = seed * 2048  # 64 KiB repeating pattern
        self._etag: str | None = None

    def chunks(self, start: int, end: int, chunk: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the file, in pieces of at most ``chunk`` bytes."""
        position = start
        while position < end:
            size = min(chunk, end - position)
            yield self._read(position, size)
            position += size

    def _read(self, position: int, size: int) -> bytes:
        out = bytearray()
        if position < len(self.head):
            out += self.head[position : position + size]
            position += len(out)
        block = self._block
        while len(out) < size:
            offset = (position - len(self.head)) % len(block)
            take = min(size - len(out), len(block) - offset)
            out += block[offset : offset + take]
            position += take
        return bytes(out)

    @property
    def etag(self) -> str:
        """Quoted hex MD5 of the whole file, as R2 gives for a single-part upload."""
        if self._etag is None:
            digest = hashlib.md5(usedforsecurity=False)
            for piece in self.chunks(0, self.size, 1 << 20):
                digest.update(piece)
            self._etag = f'"{digest.hexdigest()}"'
        return self._etag


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` for a single-range ``Range`` header; None when it is unsatisfiable.

    Raises:
        ValueError: the header is not a single byte range (the caller then serves the whole file).
    """
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise ValueError(header)
    first, last = match.groups()
    if first == "":
        length = int(last)
        return (max(0, size - length), size) if length > 0 else None
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        return None
    return start, end


def media_routes(state: SimState) -> web.RouteTableDef:
    """Routes of the media origin: ``GET`` and ``HEAD /v1/{request_id}/output.mp4``."""
    routes = web.RouteTableDef()

    @routes.route("*", "/v1/{request_id}/output.mp4")
    async def serve(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        state.stats.media_requests += 1
        if state.carries_key(request):
            state.stats.key_leaks += 1
        job = state.book.jobs.get(request.match_info["request_id"])
        if job is None or job.status_at(state.now()).value != "COMPLETED":
            return _xml_error(404, "NoSuchKey")
        generation = request.query.get("v", "")
        if not generation.isdigit() or int(generation) in job.expired_generations:
            state.stats.media_expired += 1
            return _xml_error(403, "AccessDenied")
        if state.draw("media_error", state.scenario.media_error_rate):
            return _xml_error(503, "ServiceUnavailable")
        if state.draw("media_not_mp4", state.scenario.media_not_mp4_rate):
            # A proxy or captive portal answering 200 with its own page instead of the video.
            page = _NOT_A_VIDEO.encode()
            if state.scenario.media_not_mp4_kind == "ftyp-html":
                page = struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0" + page
            return web.Response(body=page, content_type="text/html")
        return await _send(request, state, job)

    return routes


def _xml_error(status: int, code: str) -> web.Response:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
    return web.Response(status=status, text=body, content_type="application/xml")


async def _send(request: web.Request, state: SimState, job: SimJob) -> web.StreamResponse:
    media = state.media_file(job)
    start, end, status = 0, media.size, 200
    header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if header is not None:
        state.stats.media_range_requests += 1
    if header is not None and (if_range is None or if_range == media.etag):
        try:
            wanted = parse_range(header, media.size)
        except ValueError:
            wanted = (0, media.size)
        if wanted is None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{media.size}"})
        start, end = wanted
        status = 206
    response = web.StreamResponse(status=status)
    response.content_type = "video/mp4"
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = media.etag
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{media.size}"
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    scenario = state.scenario
    cut_at = end
    if state.draw("media_truncate", scenario.media_truncate_rate):
        cut_at = start + (end - start) // 2
    stall_at = end
    if state.draw("media_stall", scenario.media_stall_rate):
        stall_at = start + (end - start) // 2
    position = start
    for piece in media.chunks(start, cut_at, scenario.media_chunk):
        if position <= stall_at < position + len(piece):
            await state.pause(scenario.media_stall_seconds)
        await response.write(piece)
        position += len(piece)
        state.stats.media_bytes += len(piece)
        if scenario.media_throughput:
            await state.pause(len(piece) / scenario.media_throughput)
    if cut_at < end:
        state.stats.media_truncated += 1
        assert request.transport is not None
        request.transport.abort()
        return response
    await response.write_eof()
    return response
