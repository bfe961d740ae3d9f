"""GatewayClient against the simulator: answers mapped to our error tree, 429 waited out."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime

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
)
from pixazo_batch.gateway import GatewayClient, parse_retry_after, quota_wait
from pixazo_batch.governor import RateGovernor
from pixazo_batch.models import SUBMIT_PATH, GenerationRequest
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


async def submit_with(scenario: Scenario, key: str = TEST_KEY) -> object:
    async with (
        simulator(scenario) as sim,
        GatewayClient(sim.base_url, key, RateGovernor(1000)) as gw,
    ):
        return await gw.submit(REQUEST)


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


async def test_connection_refused_is_not_sent() -> None:
    async with simulator() as sim:
        dead = sim.base_url
    async with GatewayClient(dead, TEST_KEY, RateGovernor(1000)) as gw:
        with pytest.raises(NotSentError):
            await gw.submit(REQUEST)


async def test_quota_error_reports_when_the_quota_returns() -> None:
    with pytest.raises(QuotaExhaustedError) as caught:
        await submit_with(fast(quota_keys=frozenset({"q"})), "q")
    assert caught.value.retry_after == 42


async def test_429_is_waited_out_without_requests_inside_the_window() -> None:
    scenario = fast(rate_limit=1, rate_window=1.0, retry_after="seconds")
    async with (
        simulator(scenario) as sim,
        GatewayClient(sim.base_url, TEST_KEY, RateGovernor(1000)) as gw,
    ):
        first = await gw.submit(REQUEST)
        second = await gw.submit(REQUEST)
        stats = sim.stats()
    assert first.request_id != second.request_id
    assert stats["rate_limited"] >= 1
    assert stats["requests_in_retry_window"] == 0


async def test_polling_url_on_another_origin_is_not_sent_the_key() -> None:
    async with simulator() as sim, GatewayClient(sim.base_url, TEST_KEY, RateGovernor(1000)) as gw:
        accepted = await gw.submit(REQUEST)
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
        gateway = GatewayClient(
            f"http://{host}:{port}", TEST_KEY, RateGovernor(1000), retry_after_cap=0.2
        )
        async with gateway:
            with anyio.fail_after(30):  # an uncapped wait would be 1000 s
                accepted = await gateway.submit(REQUEST)
    finally:
        await runner.cleanup()
    assert accepted.request_id == "r-1"
    (capped,) = log_tap.named("retry_after_capped")
    assert capped["announced"] == 1000.0
    assert capped["cap"] == 0.2
