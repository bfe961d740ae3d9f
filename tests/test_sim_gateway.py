"""Contract tests of the simulated gateway origin, over real sockets."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import pytest

from pixazo_batch.models import (
    MODEL_ID,
    GenerationRequest,
    RemoteStatus,
    StatusResponse,
)
from pixazo_batch.sim.jobs import JobBook
from pixazo_batch.sim.scenario import scenario_named
from tests.conftest import TEST_KEY, fast, post_submit, simulator

pytestmark = pytest.mark.anyio

DOC_BODY = {
    "prompt": "Create a magical timelapse transition. The snow melts to reveal green grass.",
    "image_url": "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/luma.jpg",
    "end_image_url": "",
    "aspect_ratio": "16:9",
    "loop": False,
    "resolution": "540p",
    "duration": "5s",
}


async def test_submit_answers_202_with_request_id_and_absolute_polling_url() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        response = await post_submit(session, sim, DOC_BODY)
        body = await response.json()
    assert response.status == 202
    assert body["status"] == "QUEUED"
    assert body["request_id"].startswith(f"{MODEL_ID}_")
    uuid_part = body["request_id"].removeprefix(f"{MODEL_ID}_")
    assert uuid_part[14] == "7", "a UUIDv7"
    assert body["polling_url"] == f"{sim.base_url}/v2/requests/status/{body['request_id']}"


async def test_status_of_completed_job_matches_the_documented_shape() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        submitted = await (await post_submit(session, sim, DOC_BODY)).json()
        headers = {"Ocp-Apim-Subscription-Key": TEST_KEY}
        response = await session.get(submitted["polling_url"], headers=headers)
        raw = await response.json()
    assert response.status == 200
    assert raw["status"] == "COMPLETED"
    assert raw["model_id"] == MODEL_ID
    assert raw["error"] is None
    assert raw["created_at"].endswith("Z") and "." in raw["created_at"]
    datetime.strptime(raw["completed_at"], "%Y-%m-%d %H:%M:%S")  # zone-less gateway format
    assert raw["output"]["media_type"] in ("video/mp4", "application/octet-stream")
    parsed = StatusResponse.model_validate(raw)
    assert parsed.completed_at is not None and parsed.completed_at.tzinfo is UTC
    assert parsed.media_url is not None and parsed.media_url.startswith(sim.media_url)


@pytest.mark.parametrize(
    ("key", "status", "message"),
    [
        (None, 401, "missing subscription key"),
        ("wrong-key", 401, "invalid subscription key"),
        ("forbidden-key", 403, "Forbidden"),
        ("quota-key", 403, "Out of call volume quota"),
    ],
)
async def test_auth_failures_answer_in_the_api_front_shape(
    key: str | None, status: int, message: str
) -> None:
    scenario = fast(
        forbidden_keys=frozenset({"forbidden-key"}), quota_keys=frozenset({"quota-key"})
    )
    async with simulator(scenario) as sim, aiohttp.ClientSession() as session:
        response = await post_submit(session, sim, DOC_BODY, key=key)
        body = await response.json()
        stats = sim.stats()
    assert response.status == status
    assert body["statusCode"] == status
    assert message in body["message"]
    assert stats["accepted"] == 0
    if key == "quota-key":
        assert response.headers["Retry-After"] == "42"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "hi"}, "prompt"),
        ({"prompt": "x" * 5001}, "prompt"),
        ({"image_url": "ftp://example.com/a.jpg"}, "image_url"),
        ({"end_image_url": "file:///etc/passwd"}, "end_image_url"),
        ({"aspect_ratio": "1:1"}, "aspect_ratio"),
        ({"resolution": "4k"}, "resolution"),
        ({"duration": "10s"}, "duration"),
        ({"loop": "yes"}, "loop"),
    ],
)
async def test_invalid_body_answers_400_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        response = await post_submit(session, sim, {**DOC_BODY, **change})
        body = await response.json()
    assert response.status == 400
    assert body["error"] == "Bad Request"
    assert body["message"].startswith(f"{field}:")


async def test_invalid_json_answers_400() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        response = await post_submit(session, sim, "{not json")
    assert response.status == 400


async def test_balance_too_small_answers_402_and_charges_nothing_more() -> None:
    async with simulator(fast(balance_cents=30)) as sim, aiohttp.ClientSession() as session:
        first = await post_submit(session, sim, DOC_BODY)
        second = await post_submit(session, sim, DOC_BODY)
        body = await second.json()
        stats = sim.stats()
    assert first.status == 202
    assert second.status == 402
    assert body == {
        "error": "Insufficient Balance",
        "message": "Your wallet does not have enough balance.",
    }
    assert stats["spent_cents"] == 20
    assert stats["balance_cents"] == 10


async def test_unknown_request_id_answers_404() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        response = await session.get(
            f"{sim.base_url}/v2/requests/status/{MODEL_ID}_nope",
            headers={"Ocp-Apim-Subscription-Key": TEST_KEY},
        )
        body = await response.json()
    assert response.status == 404
    assert body["error"] == "Not Found"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"loop": True, "end_image_url": "https://img.example.com/b.jpg"},
            "Loop is not supported for keyframes",
        ),
        ({"image_url": "https://gone.invalid/a.jpg"}, "Failed to read user input frames"),
    ],
)
async def test_requests_the_model_cannot_run_end_failed(
    change: dict[str, object], reason: str
) -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        submitted = await (await post_submit(session, sim, {**DOC_BODY, **change})).json()
        status = await (
            await session.get(
                submitted["polling_url"], headers={"Ocp-Apim-Subscription-Key": TEST_KEY}
            )
        ).json()
    assert status["status"] == "FAILED"
    assert status["error"] == reason
    assert status["output"] is None


def test_job_clock_moves_through_queued_processing_and_terminal_on_gateway_ticks() -> None:
    scenario = scenario_named("realistic", time_scale=1.0)
    book = JobBook(scenario)
    request = GenerationRequest.model_validate(DOC_BODY)
    job = book.accept(request, 100.0, request.request_hash())
    assert job.status_at(100.0) is RemoteStatus.QUEUED
    assert job.started > 100.0 and job.finished > job.started
    # a change shows only on the job's own gateway tick
    assert (
        job.status_at(job.started) is RemoteStatus.QUEUED or job.visible(job.started) == job.started
    )
    assert job.status_at(job.visible(job.started)) is RemoteStatus.PROCESSING
    assert job.status_at(job.visible(job.finished)) is job.outcome
    assert 10.0 <= job.tick <= 30.0


def test_processing_times_follow_the_realistic_medians() -> None:
    scenario = scenario_named("realistic")
    request = GenerationRequest.model_validate(DOC_BODY)
    book = JobBook(scenario)
    durations = []
    for index in range(400):
        job = book.accept(request, index * 1000.0, request.request_hash())  # spaced: no queueing
        durations.append(job.finished - job.started)
    assert 30 <= statistics.median(durations) <= 40


def test_jobs_queue_for_the_shared_generation_slots() -> None:
    scenario = scenario_named("realistic")
    request = GenerationRequest.model_validate(DOC_BODY)
    book = JobBook(scenario)
    jobs = [book.accept(request, 0.0, request.request_hash()) for _ in range(scenario.slots + 1)]
    earliest_free = min(job.finished for job in jobs[: scenario.slots])
    assert jobs[-1].started >= earliest_free


@pytest.mark.parametrize("style", ["seconds", "http-date", "iso", "absent"])
async def test_rate_limit_answers_429_and_counts_requests_inside_the_announced_window(
    style: str,
) -> None:
    scenario = fast(rate_limit=2, rate_window=30.0, retry_after=style, retry_window_grace=0.0)
    async with simulator(scenario) as sim, aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await post_submit(session, sim, DOC_BODY)).status == 202
        limited = await post_submit(session, sim, DOC_BODY)
        body = await limited.json()
        again = await post_submit(session, sim, DOC_BODY)
        stats = sim.stats()
    assert limited.status == 429 and again.status == 429
    assert body["statusCode"] == 429
    assert "Try again in" in body["message"]
    header = limited.headers.get("Retry-After")
    if style == "seconds":
        assert header is not None and 1 <= int(header) <= 30
    elif style == "http-date":
        assert header is not None and parsedate_to_datetime(header).timestamp() > time.time()
    elif style == "iso":
        assert header is not None
        assert datetime.fromisoformat(header.replace("Z", "+00:00")).timestamp() > time.time()
    else:
        assert header is None
    assert stats["rate_limited"] == 2
    assert stats["requests_in_retry_window"] == 1
    assert stats["accepted"] == 2


async def test_refused_submit_fault_answers_500_in_service_shape_without_a_job() -> None:
    async with simulator(fast(submit_refused_rate=1.0)) as sim, aiohttp.ClientSession() as session:
        response = await post_submit(session, sim, DOC_BODY)
        body = await response.json()
        stats = sim.stats()
    assert response.status == 500
    assert set(body) == {"error", "message"}
    assert stats["accepted"] == 0


async def test_lost_answer_fault_creates_and_charges_the_job_then_answers_504() -> None:
    scenario = fast(submit_lost_answer_rate=1.0, lost_answer_delay=0.0)
    async with simulator(scenario) as sim, aiohttp.ClientSession() as session:
        response = await post_submit(session, sim, DOC_BODY)
        body = await response.json()
        stats = sim.stats()
    assert response.status == 504
    assert body["statusCode"] == 504
    assert stats["accepted"] == 1
    assert stats["spent_cents"] == 20


async def test_reset_fault_drops_the_connection_after_creating_the_job() -> None:
    async with simulator(fast(submit_reset_rate=1.0)) as sim, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await post_submit(session, sim, DOC_BODY)
        stats = sim.stats()
    assert stats["accepted"] == 1


async def test_status_error_fault_answers_api_front_500() -> None:
    async with simulator(fast(status_error_rate=1.0)) as sim, aiohttp.ClientSession() as session:
        submitted = await (await post_submit(session, sim, DOC_BODY)).json()
        response = await session.get(
            submitted["polling_url"], headers={"Ocp-Apim-Subscription-Key": TEST_KEY}
        )
        body = await response.json()
    assert response.status == 500
    assert body["statusCode"] == 500 and "activityId" in body


async def test_stats_count_submissions_per_request_hash_and_reset_clears_them() -> None:
    async with simulator() as sim, aiohttp.ClientSession() as session:
        for _ in range(2):
            await post_submit(session, sim, DOC_BODY)
        stats = await (await session.get(f"{sim.base_url}/_sim/stats")).json()
        reset = await session.post(f"{sim.base_url}/_sim/reset")
        after = await (await session.get(f"{sim.base_url}/_sim/stats")).json()
    digest = GenerationRequest.model_validate(DOC_BODY).request_hash()
    assert stats["accepted_by_hash"] == {digest: 2}
    assert stats["duplicate_charges"] == 1
    assert reset.status == 200
    assert after["accepted"] == 0 and after["duplicate_charges"] == 0
