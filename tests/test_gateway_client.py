"""GatewayClient against the simulator: answers mapped to our error tree, 429 waited out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import anyio
import pytest
from aiohttp import web

from pixazo_batch.errors import (
    AnswerLostError,
    AuthRefusedError,
    BalanceError,
    HttpStatusError,
    NotSentError,
    QuotaExhaustedError,
    SettingsRefusedError,
)
from pixazo_batch.gateway import GatewayClient, RateLimitedError
from pixazo_batch.governor import MonotonicClock, RateGovernor
from pixazo_batch.health import GatewayHealth
from pixazo_batch.models import SUBMIT_PATH, GenerationRequest
from pixazo_batch.retryafter import parse_retry_after, quota_wait
from pixazo_batch.sim import Scenario
from tests.conftest import TEST_KEY, LogTap, fast, simulator

pytestmark = pytest.mark.anyio

REQUEST = GenerationRequest(
    prompt="A lighthouse at dusk", image_url="https://img.example.com/a.jpg"
)


def test_retry_after_in_seconds_date_iso_and_body() -> None:
    now = time.time()
    later = datetime.fromtimestamp(now + 30, UTC)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(format_datetime(later, usegmt=True), now=now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after(later.strftime("%Y-%m-%dT%H:%M:%SZ"), now=now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after(None, "Rate limit is exceeded. Try again in 60 seconds.") == 60.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_quota_wait_reads_days_hours_minutes_seconds() -> None:
    assert quota_wait("Quota will be replenished in 00:01:05.") == 65.0
    assert quota_wait("Quota will be replenished in 2.01:00:00.") == 2 * 86400 + 3600
    assert quota_wait("nothing here") is None


def client(base_url: str, key: str = TEST_KEY, **options: Any) -> GatewayClient:
    health = GatewayHealth(outage_deadline=60, clock=MonotonicClock())
    return GatewayClient(base_url, key, RateGovernor(1000), health, **options)


async def nothing() -> None:
    pass


async def submit_with(scenario: Scenario, key: str = TEST_KEY) -> object:
    async with simulator(scenario) as sim, client(sim.base_url, key) as gw:
        return await gw.submit(REQUEST, on_wire=nothing)


@pytest.mark.parametrize(
    ("scenario", "key", "error"),
    [
        (fast(), "bad-key", AuthRefusedError),
        (fast(forbidden_keys=frozenset({"f"})), "f", AuthRefusedError),
        (fast(quota_keys=frozenset({"q"})), "q", QuotaExhaustedError),
        (fast(balance_cents=0), TEST_KEY, BalanceError),
        (fast(submit_refused_rate=1.0), TEST_KEY, HttpStatusError),
        (fast(submit_lost_answer_rate=1.0, lost_answer_delay=0.0), TEST_KEY, AnswerLostError),
        (fast(submit_reset_rate=1.0), TEST_KEY, AnswerLostError),
    ],
)
async def test_submit_answers_map_to_the_error_tree(
    scenario: Scenario, key: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        await submit_with(scenario, key)
    if error is HttpStatusError:
        assert not isinstance(caught.value, AnswerLostError)
        assert caught.value.status == 500  # type: ignore[attr-defined]


async def test_connection_refused_is_not_sent_and_never_reaches_the_wire() -> None:
    async with simulator() as sim:
        dead = sim.base_url
    reached: list[bool] = []

    async def reach() -> None:
        reached.append(True)

    async with client(dead) as gw:
        with pytest.raises(NotSentError):
            await gw.submit(REQUEST, on_wire=reach)
    assert reached == []
    assert not gw.health.sound and gw.health.down_since is not None


async def test_a_post_stopped_by_its_on_wire_hook_never_reaches_the_gateway() -> None:
    class RefusedError(Exception):
        pass

    async def refuse() -> None:
        raise RefusedError

    calls: list[int] = []

    async def count() -> None:
        calls.append(1)

    async with simulator() as sim, client(sim.base_url) as gw:
        with pytest.raises(RefusedError):
            await gw.submit(REQUEST, on_wire=refuse)
        accepted = await gw.submit(REQUEST, on_wire=count)
        stats = sim.stats()
    assert stats["submit_requests"] == 1, "only the second POST arrived"
    assert calls == [1] and accepted.request_id


async def test_quota_error_reports_when_the_quota_returns() -> None:
    with pytest.raises(QuotaExhaustedError) as caught:
        await submit_with(fast(quota_keys=frozenset({"q"})), "q")
    assert caught.value.retry_after == 42


async def test_a_submit_429_pauses_every_sender_and_the_next_post_waits_it_out() -> None:
    scenario = fast(rate_limit=1, rate_window=1.0, retry_after="seconds")
    async with simulator(scenario) as sim, client(sim.base_url) as gw:
        first = await gw.submit(REQUEST, on_wire=nothing)
        with pytest.raises(RateLimitedError):
            await gw.submit(REQUEST, on_wire=nothing)
        second = await gw.submit(REQUEST, on_wire=nothing)
        status = await gw.status(second.request_id)
        stats = sim.stats()
    assert first.request_id != second.request_id == status.request_id
    assert stats["rate_limited"] >= 1
    assert stats["requests_in_retry_window"] == 0


async def test_status_reads_wait_out_429_by_themselves() -> None:
    scenario = fast(rate_limit=2, rate_window=1.0, retry_after="seconds")
    async with simulator(scenario) as sim, client(sim.base_url) as gw:
        accepted = await gw.submit(REQUEST, on_wire=nothing)
        for _ in range(3):
            await gw.status(accepted.request_id)
        stats = sim.stats()
    assert stats["rate_limited"] >= 1
    assert stats["requests_in_retry_window"] == 0


async def test_polling_url_on_another_origin_is_not_sent_the_key() -> None:
    async with simulator() as sim, client(sim.base_url) as gw:
        accepted = await gw.submit(REQUEST, on_wire=nothing)
        foreign = f"{sim.media_url}/v2/requests/status/{accepted.request_id}"
        status = await gw.status(accepted.request_id, foreign)
        stats = sim.stats()
    assert status.request_id == accepted.request_id
    assert stats["key_leaks"] == 0
    assert stats["media_requests"] == 0


async def test_a_retry_after_above_the_cap_is_capped_and_logged(log_tap: LogTap) -> None:
    answers = iter([429, 202])

    async def submit(request: web.Request) -> web.Response:
        if next(answers) == 429:
            return web.json_response(
                {"statusCode": 429, "message": "Rate limit is exceeded."},
                status=429,
                headers={"Retry-After": "1000"},
            )
        return web.json_response({"request_id": "r-1", "status": "QUEUED"}, status=202)

    app = web.Application()
    app.router.add_post(SUBMIT_PATH, submit)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        async with client(f"http://{host}:{port}", retry_after_cap=0.2) as gateway:
            with anyio.fail_after(30):  # an uncapped wait would be 1000 s
                with pytest.raises(RateLimitedError):
                    await gateway.submit(REQUEST, on_wire=nothing)
                accepted = await gateway.submit(REQUEST, on_wire=nothing)
    finally:
        await runner.cleanup()
    assert accepted.request_id == "r-1"
    (capped,) = log_tap.named("retry_after_capped")
    assert capped["announced"] == 1000.0
    assert capped["cap"] == 0.2


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def fake_gateway(submit: Handler) -> AsyncIterator[str]:
    """A one-route server on loopback answering submits as ``submit`` says."""
    app = web.Application()
    app.router.add_post(SUBMIT_PATH, submit)
    app.router.add_get("/v2/requests/status/{request_id}", submit)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def answering(status: int, body: str, content_type: str = "text/html") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body, content_type=content_type)

    return handler


_HTML = "<html><body>Error 524: a timeout occurred</body></html>"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (524, _HTML, "text/html"),
        (503, "<html>Service Unavailable</html>", "text/html"),
        (408, "Request Timeout", "text/plain"),
        (502, '{"error": "Bad Gateway", "message": "upstream"}', "application/json"),
        (200, '{"status": "QUEUED"}', "application/json"),
        (202, '{"request_id": "../../etc", "status": "QUEUED"}', "application/json"),
        (202, '{"request_id": "a b", "status": "QUEUED"}', "application/json"),
        (429, "<html>Too Many Requests</html>", "text/html"),
        (400, "Bad Request", "text/plain"),
        (500, '{"statusCode": 500, "message": "Internal server error"}', "application/json"),
        (202, "x" * (2 << 20), "text/plain"),
    ],
)
async def test_an_answer_that_is_not_the_gateways_own_refusal_is_a_lost_answer(
    status: int, body: str, kind: str
) -> None:
    """Who answered decides: only the gateway's documented refusals prove "not accepted"."""
    async with fake_gateway(answering(status, body, kind)) as base, client(base) as gw:
        with pytest.raises(AnswerLostError):
            await gw.submit(REQUEST, on_wire=nothing)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, {"statusCode": 503, "message": "Service Unavailable"}, HttpStatusError),
        (500, {"error": "Internal Server Error", "message": "retry"}, HttpStatusError),
        (400, {"error": "Bad Request", "message": "prompt: too short"}, HttpStatusError),
        (404, {"statusCode": 404, "message": "Resource not found"}, SettingsRefusedError),
        (
            400,
            {"error": "Bad Request", "message": "X-Webhook-URL: must be an https URL"},
            SettingsRefusedError,
        ),
        (400, {"error": "Model not found", "message": "disabled"}, SettingsRefusedError),
    ],
)
async def test_the_gateways_own_refusals_are_not_accepted(
    status: int, body: dict[str, Any], error: type[Exception]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    async with fake_gateway(handler) as base, client(base) as gw:
        with pytest.raises(error) as caught:
            await gw.submit(REQUEST, on_wire=nothing, webhook_url="https://x.example/hook")
    assert not isinstance(caught.value, AnswerLostError)


@pytest.mark.parametrize("polling_url", ["/v2/requests/status/r-1", "http://[::1", "ftp://x/y"])
async def test_an_unusable_polling_url_is_ignored_for_the_documented_status_url(
    polling_url: str,
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.json_response(
                {"request_id": "r-1", "status": "QUEUED", "polling_url": polling_url}, status=202
            )
        seen.append(request.path)
        return web.json_response({"request_id": "r-1", "status": "QUEUED"})

    async with fake_gateway(handler) as base, client(base) as gw:
        accepted = await gw.submit(REQUEST, on_wire=nothing)
        status = await gw.status("r-1", polling_url)  # as a stored one is read back
    assert accepted.polling_url is None
    assert status.request_id == "r-1"
    assert seen == ["/v2/requests/status/r-1"]
