"""A hostile gateway for ``bench/hostile.py``: oversized answers and endless media.

Usage: ``python bench/hostile_server.py answer`` (every submit answers 202 with a 400 MB body) or
``python bench/hostile_server.py media`` (jobs complete at once; their media announce 50 GiB and
stream until the client goes). Prints ``gateway URL`` when ready, then serves until killed.
"""

from __future__ import annotations

import sys

from aiohttp import web

from pixazo_batch.models import MODEL_ID, SUBMIT_PATH

ANSWER_BYTES = 400 << 20
MEDIA_BYTES = 50 << 30
PIECE = b"x" * (1 << 20)


async def submit_huge(request: web.Request) -> web.StreamResponse:
    """202 with a body far over any sensible cap."""
    response = web.StreamResponse(status=202)
    response.content_type = "application/json"
    response.content_length = ANSWER_BYTES
    await response.prepare(request)
    await response.write(b'{"request_id": "' + PIECE[: (1 << 20) - 16])
    for _ in range(ANSWER_BYTES // len(PIECE) - 1):
        await response.write(PIECE)
    return response


async def submit_fine(request: web.Request) -> web.Response:
    """An ordinary 202."""
    return web.json_response({"request_id": f"{MODEL_ID}_one", "status": "QUEUED"}, status=202)


async def status(request: web.Request) -> web.Response:
    """COMPLETED at once, with the endless video."""
    media = f"{request.url.origin()}/v1/{MODEL_ID}_one/output.mp4"
    body = {
        "request_id": request.match_info["request_id"],
        "status": "COMPLETED",
        "output": {"media_url": [media], "media_type": "video/mp4"},
    }
    return web.json_response(body)


async def media(request: web.Request) -> web.StreamResponse:
    """A video announcing 50 GiB."""
    response = web.StreamResponse(status=200)
    response.content_type = "video/mp4"
    response.content_length = MEDIA_BYTES
    await response.prepare(request)
    for _ in range(MEDIA_BYTES // len(PIECE)):
        await response.write(PIECE)
    return response


def main() -> None:
    """Serve the hostile routes on a free loopback port."""
    mode = sys.argv[1]
    app = web.Application()
    app.router.add_post(SUBMIT_PATH, submit_huge if mode == "answer" else submit_fine)
    app.router.add_get("/v2/requests/status/{request_id}", status)
    app.router.add_get("/v1/{request_id}/output.mp4", media)

    async def announce(app: web.Application) -> None:
        print("ready", flush=True)

    app.on_startup.append(announce)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)


if __name__ == "__main__":
    main()
