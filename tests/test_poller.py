"""How the poller plans polls: one speed model, scouting, re-planning, and what it learns."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.estimator import CompletionEstimator, shape
from pixazo_batch.models import StatusResponse
from pixazo_batch.poller import _time_to_finish
from pixazo_batch.stores import open_store
from pixazo_batch.summary import RunSummary
from tests.conftest import fast, job_line, simulator, write_manifest


def finished(created_at: str, completed_at: str) -> StatusResponse:
    return StatusResponse.model_validate(
        {
            "request_id": "r",
            "status": "COMPLETED",
            "created_at": created_at,
            "completed_at": completed_at,
        }
    )


def test_whole_second_stamps_are_read_as_the_middle_of_their_second() -> None:
    # The API documentation's webhook example: created 13:17:32.110, completed "13:19:23".
    status = finished("2026-05-22T13:17:32.110Z", "2026-05-22 13:19:23")
    assert _time_to_finish(status, elapsed=300.0, last_miss=None) == pytest.approx(111.39)


def test_finer_stamps_are_taken_as_they_are() -> None:
    status = finished("2026-05-22T13:17:32.110Z", "2026-05-22T13:19:23.250Z")
    assert _time_to_finish(status, elapsed=300.0, last_miss=None) == pytest.approx(111.14)


def test_without_stamps_polls_only_bracket_the_end() -> None:
    status = StatusResponse.model_validate({"request_id": "r", "status": "COMPLETED"})
    assert _time_to_finish(status, elapsed=40.0, last_miss=30.0) == 35.0
    assert _time_to_finish(status, elapsed=40.0, last_miss=None) == 32.0


def test_one_scale_learned_from_any_kind_informs_every_kind() -> None:
    estimator = CompletionEstimator(poll_interval=1.0)
    estimator.observe(("1080p", "9s"), shape(("1080p", "9s")) * 30.0)
    assert estimator.expected(("540p", "5s")) == pytest.approx(30.0)
    assert estimator.expected(("720p", "9s")) == pytest.approx(30.0 * shape(("720p", "9s")))


def test_scouts_poll_from_the_floor_doubling_and_the_others_wait_on_a_prior() -> None:
    estimator = CompletionEstimator(poll_interval=2.0)
    due = [estimator.scout_poll(None)]
    for _ in range(6):
        due.append(estimator.scout_poll(due[-1]))
    assert due == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    assert estimator.scout_poll(1000.0) == 1000.0 + 32 * 2.0, "capped"
    assert estimator.first_poll(("540p", "5s")) == 14 * 2.0
    assert estimator.first_poll(("1080p", "9s")) == pytest.approx(14 * 2.0 * shape(("1080p", "9s")))


def test_once_learned_the_first_poll_aims_at_a_high_quantile_and_later_ones_are_spaced() -> None:
    estimator = CompletionEstimator(poll_interval=1.0, scales=[float(s) for s in range(1, 11)])
    assert estimator.first_poll(("540p", "5s")) == 9.0
    assert estimator.later_poll(("540p", "5s"), 9.0) == pytest.approx(9.0 + 0.15 * 9.0)
    assert estimator.version == 0, "what earlier runs learned is not news to this one"


@pytest.mark.parametrize(
    ("observed", "expected_after", "versions"),
    [
        ([10.0], 10.0, 1),  # the run's first finished job always re-plans
        ([10.0, 10.0, 10.0], 10.0, 1),  # nothing moved
        ([10.0, 10.4, 10.4], 10.0, 1),  # 4%: plans stay as they are
        ([10.0, 10.6], 10.6, 2),  # 6%: every waiting job is re-planned
        ([10.0, 10.3, 10.3, 10.6, 10.6], 10.6, 2),  # small steps add up against the plans' scale
        ([10.0, 9.0, 9.0, 9.0, 9.0, 9.0], 9.0, 2),  # faster
    ],
)
def test_waiting_jobs_are_replanned_only_when_the_scale_moves_by_more_than_five_percent(
    observed: list[float], expected_after: float, versions: int
) -> None:
    estimator = CompletionEstimator(poll_interval=1.0, scales=[40.0] * 8)
    for seconds in observed:
        estimator.observe(("540p", "5s"), seconds)
    assert estimator.expected(("540p", "5s")) == pytest.approx(expected_after)
    assert estimator.version == versions


async def run_counting_polls(
    tmp_path: Path,
    make_settings: Any,
    jobs: int,
    *,
    seed_scale: float | None = None,
    **changes: Any,
) -> tuple[RunSummary, dict[str, Any], float, Settings]:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(jobs)])
    scenario = fast(processing_median={"540p": 0.4}, processing_sigma=0.0, status_tick=(0.0, 0.0))
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest, poll_interval=0.2, **changes)
        if seed_scale is not None:
            with open_store(settings.state_location) as store:
                store.keep_speed(str(URL(sim.base_url).origin()), [seed_scale] * 8)
        started = time.monotonic()
        summary = await run_batch(settings)
        took = time.monotonic() - started
        stats = sim.stats()
    return summary, stats, took, settings


@pytest.mark.anyio
async def test_a_fresh_state_file_finds_quick_jobs_quickly_and_keeps_what_it_learned(
    tmp_path: Path, make_settings: Any
) -> None:
    summary, stats, took, settings = await run_counting_polls(tmp_path, make_settings, 12)
    with open_store(settings.state_location, lock=False) as store:
        kept = store.speed_scales(
            next(iter(store.db.execute("SELECT origin FROM speed_samples")))[0]
        )
    assert summary.exit_code == 0
    assert took < 10, "scouting from the poll floor, not a prior of minutes"
    assert stats["status_requests"] / 12 <= 3
    # Whole-second gateway stamps make each sample +-0.5 s of the job's 0.4 s, and jobs sent in
    # one burst share the error (their start in the second), so only the range is certain.
    assert len(kept) == 12 and min(kept) > 0.0 and max(kept) < 1.5


@pytest.mark.anyio
async def test_a_stale_slow_model_is_overtaken_by_scouts_and_every_waiting_job_replanned(
    tmp_path: Path, make_settings: Any
) -> None:
    summary, stats, took, _ = await run_counting_polls(
        tmp_path, make_settings, 12, seed_scale=600.0
    )
    assert summary.exit_code == 0
    assert took < 15, "a kept estimate of 10 minutes did not hold 0.4 s jobs back"
    assert stats["status_requests"] / 12 <= 3
