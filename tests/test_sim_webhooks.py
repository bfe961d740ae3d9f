"""Webhook delivery of the simulator: https only, terminal and sync modes, duplicates."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from pixazo_batch.models import SUBMIT_PATH, StatusResponse
from tests.conftest import TEST_KEY, fast, simulator

pytestmark = pytest.mark.anyio

BODY = {"prompt": "A lighthouse at dusk", "image_url": "https://img.example.com/a.jpg"}


async def submit_with_webhook(
    session: aiohttp.ClientSession, base_url: str, url: str, mode: str
) -> aiohttp.ClientResponse:
    headers = {"Ocp-Apim-Subscription-Key": TEST_KEY, "X-Webhook-URL": url, "X-Webhook-Mode": mode}
    return await session.post(base_url + SUBMIT_PATH, json=BODY, headers=headers)


async def test_plain_http_callback_urls_are_rejected() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        response = await submit_with_webhook(
            session, sim.base_url, "http://example.com/h", "terminal"
        )
        body = await response.json()
    assert response.status == 400
    assert body["message"].startswith("X-Webhook-URL:")


@pytest.mark.parametrize(
    ("mode", "duplicate_rate"), [("terminal", 0.0), ("terminal", 1.0), ("sync", 0.0)]
)
async def test_callbacks_carry_the_status_body(mode: str, duplicate_rate: float) -> None:
    received: list[dict[str, Any]] = []
    terminal = anyio.Event()
    two_received = anyio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        if len(received) >= 2:
            two_received.set()
        if StatusResponse.model_validate(body).status.is_terminal:
            terminal.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    scenario = fast(
        webhook_allow_http=True,
        webhook_duplicate_rate=duplicate_rate,
        processing_median={"540p": 0.3},
        processing_sigma=0.0,
        status_tick=(0.1, 0.1),
    )
    try:
        async with simulator(scenario) as sim, aiohttp.ClientSession() as session:
            response = await submit_with_webhook(
                session, sim.base_url, f"http://{host}:{port}/hook", mode
            )
            request_id = (await response.json())["request_id"]
            with anyio.fail_after(10):
                await terminal.wait()
            if duplicate_rate:
                with anyio.fail_after(10):
                    await two_received.wait()
    finally:
        await runner.cleanup()
    assert response.status == 202
    assert all(body["request_id"] == request_id for body in received)
    assert received[-1]["status"] == "COMPLETED"
    if mode == "terminal":
        assert len(received) == (2 if duplicate_rate else 1)
    else:
        assert len(received) >= 2, "sync mode also reports progress"
        assert received[0]["status"] in ("QUEUED", "PROCESSING")
