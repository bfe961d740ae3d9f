"""Engine-side webhooks against the simulator's callbacks: polling becomes a fallback, duplicates
change nothing, forged callbacks are refused, and a lost answer is resolved without paying twice."""

from __future__ import annotations

import dataclasses
import socket
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.errors import UsageError
from pixazo_batch.webhooks import signature
from tests.conftest import LogTap, fast, job_line, simulator, state_sql, write_manifest
from tests.test_cli import cli_env, run_cli

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def with_webhooks(make_settings: Any, sim: Any, manifest: Path, **changes: Any) -> Settings:
    port = free_port()
    return make_settings(  # type: ignore[no-any-return]
        sim,
        manifest,
        webhook_url=f"http://127.0.0.1:{port}/hooks/pixazo",
        webhook_listen=f"127.0.0.1:{port}",
        **changes,
    )


def hooked(**changes: Any) -> Any:
    """The fast scenario with callbacks to plain http allowed (loopback) and jobs that take a
    moment, so a callback, not a poll, is what reports them finished."""
    values: dict[str, Any] = {
        "webhook_allow_http": True,
        "webhook_duplicate_rate": 0.0,
        "processing_median": {"540p": 0.3},
    }
    return fast(**{**values, **changes})


@pytest.mark.parametrize(
    ("mode", "duplicates"), [("terminal", 0.0), ("terminal", 1.0), ("sync", 1.0)]
)
async def test_callbacks_replace_polling_and_duplicates_change_nothing(
    tmp_path: Path, make_settings: Any, mode: str, duplicates: float
) -> None:
    scenario = hooked(webhook_duplicate_rate=duplicates, status_tick=(0.1, 0.1))
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(4)])
    async with simulator(scenario) as sim:
        settings = with_webhooks(make_settings, sim, manifest, webhook_mode=mode, poll_interval=1.0)
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 0
    assert summary.counts["downloaded"] == 4
    assert stats["webhooks_sent"] >= 4 * (2 if duplicates else 1)
    # The fallback poll would come after 4 x 14 poll intervals: each job's callback brought
    # one status request forward, which settled it (a callback is a hint, not the truth).
    assert stats["status_requests"] == 4
    assert set(stats["polls_by_request"].values()) == {1}
    assert stats["media_requests"] == 4
    assert stats["duplicate_charges"] == 0


@pytest.mark.parametrize(
    ("fault", "answer_delay", "wait"),
    [
        ("submit_lost_answer_rate", 0.05, 600.0),  # the callback comes after the 504
        ("submit_lost_answer_rate", 1.5, 600.0),  # ...before it, while the POST is still out
        ("submit_lost_answer_rate", 1.5, 0.0),  # ...and is used even when nothing waits
        ("submit_reset_rate", 0.0, 600.0),
    ],
)
async def test_a_lost_answer_is_resolved_by_the_callback_without_paying_twice(
    tmp_path: Path,
    make_settings: Any,
    log_tap: LogTap,
    *,
    fault: str,
    answer_delay: float,
    wait: float,
) -> None:
    scenario = hooked(**{fault: 1.0}, lost_answer_delay=answer_delay)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(3)])
    async with simulator(scenario) as sim:
        # Polls every minute at most: the fallback poll would come after minutes, so a job
        # finished when its lost answer is settled must be settled by the callback it had.
        settings = with_webhooks(
            make_settings, sim, manifest, concurrency=3, uncertain_wait=wait, poll_interval=60.0
        )
        with anyio.fail_after(60):
            summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 0, summary
    assert summary.counts["downloaded"] == 3
    assert summary.uncertain == []
    assert stats["accepted"] == 3 and stats["duplicate_charges"] == 0
    assert len(log_tap.named("submit_uncertain")) == 3
    assert len(log_tap.named("uncertain_resolved")) == 3


async def test_without_a_callback_a_lost_answer_stays_uncertain_after_the_wait(
    tmp_path: Path, make_settings: Any
) -> None:
    scenario = hooked(submit_lost_answer_rate=1.0, lost_answer_delay=0.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    async with simulator(scenario) as sim:
        # The gateway cannot reach this URL: nothing listens behind it.
        settings = with_webhooks(make_settings, sim, manifest, uncertain_wait=0.5)
        settings = settings.model_copy(
            update={"webhook_url": f"http://127.0.0.1:{free_port()}/nowhere"}
        )
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 5
    assert summary.uncertain == ["job-000"]
    assert stats["accepted"] == 1


@pytest.mark.sqlite_state("two manifests on one state (a database holds one)")
async def test_a_callback_for_an_uncertain_job_nobody_waits_for_is_adopted_by_the_run(
    tmp_path: Path, make_settings: Any, log_tap: LogTap
) -> None:
    """With no wait left (or for a job left uncertain by an earlier run), the receiver keeps
    the request a callback names, durably, and the run confirms and finishes the job."""
    scenario = hooked(processing_median={"540p": 0.3, "1080p": 3.0}, processing_sigma=0.0)
    quick, slow = job_line(0), job_line(1, resolution="1080p")
    async with simulator(scenario) as sim:
        # An earlier run left the slow job submitted: this run is busy polling it a while.
        stalled = make_settings(sim, write_manifest(tmp_path / "slow.jsonl", [slow]))
        await run_batch(stalled.model_copy(update={"job_deadline": 0.05}))
        lost = dataclasses.replace(scenario, submit_lost_answer_rate=1.0, lost_answer_delay=0.05)
        sim.state.scenario = lost
        manifest = write_manifest(tmp_path / "both.jsonl", [quick, slow])
        busy = await run_batch(with_webhooks(make_settings, sim, manifest, uncertain_wait=0))
        stats = sim.stats()
    assert [e["job_id"] for e in log_tap.named("callback_kept")] == ["job-000"]
    assert [e["job_id"] for e in log_tap.named("uncertain_resolved")] == ["job-000"]
    assert busy.exit_code == 0 and busy.counts["downloaded"] == 2
    assert stats["accepted"] == 2 and stats["duplicate_charges"] == 0


async def test_a_kept_callback_lets_the_next_run_finish_the_job_even_without_webhooks(
    tmp_path: Path, make_settings: Any, log_tap: LogTap
) -> None:
    scenario = hooked(submit_lost_answer_rate=1.0, lost_answer_delay=0.05, processing_sigma=0.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    async with simulator(scenario) as sim:
        settings = with_webhooks(make_settings, sim, manifest, uncertain_wait=600)
        with anyio.CancelScope() as scope:
            log_tap.on("callback_kept", 1, scope.cancel)  # the run dies before it confirms
            await run_batch(settings)
        sim.state.scenario = hooked()
        finished = await run_batch(make_settings(sim, manifest))
        stats = sim.stats()
    assert scope.cancelled_caught
    assert finished.exit_code == 0 and finished.counts["downloaded"] == 1
    assert stats["accepted"] == 1 and stats["submit_requests"] == 1


async def test_forged_callbacks_are_refused_and_change_nothing(
    tmp_path: Path, make_settings: Any, log_tap: LogTap
) -> None:
    slow = hooked(processing_median={"540p": 600.0}, processing_sigma=0.0)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0), job_line(1)])
    answers: list[int] = []
    async with simulator(slow) as sim:
        settings = with_webhooks(make_settings, sim, manifest, job_deadline=1.0)
        submitted = anyio.Event()
        log_tap.on("submitted", 2, submitted.set)

        async def forge() -> None:
            await submitted.wait()
            with state_sql(settings) as db:
                run, secret = db.execute("SELECT run_id, secret FROM webhook_secrets").fetchone()
                request_id = db.execute("SELECT request_id FROM jobs WHERE id = 'job-000'")
                request_id = request_id.fetchone()[0]
            body = {
                "request_id": request_id,
                "status": "COMPLETED",
                "output": {"media_url": ["https://attacker.example/evil.mp4"]},
            }
            assert settings.webhook_url is not None
            url = settings.webhook_url
            queries = [
                {"job": "job-000", "run": str(run)},  # no signature
                {"job": "job-000", "run": str(run), "sig": "0" * 32},  # a wrong one
                # a signature issued for another job
                {"job": "job-000", "run": str(run), "sig": signature(secret, "job-001")},
                {"job": "job-000", "run": "999", "sig": signature(secret, "job-000")},
            ]
            async with aiohttp.ClientSession() as session:
                for query in queries:
                    async with session.post(url, params=query, json=body) as answer:
                        answers.append(answer.status)

        async with anyio.create_task_group() as group:
            group.start_soon(forge)
            summary = await run_batch(settings)
    assert answers == [403, 403, 403, 403]
    assert summary.counts["submitted"] == 2  # stalled, still waiting for the real gateway
    assert summary.counts["completed"] == summary.counts["downloaded"] == 0


async def test_a_listen_address_in_use_is_a_usage_error(tmp_path: Path, make_settings: Any) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with simulator(hooked()) as sim:
            settings = make_settings(
                sim,
                manifest,
                webhook_url=f"http://127.0.0.1:{port}/h",
                webhook_listen=f"127.0.0.1:{port}",
            )
            with pytest.raises(UsageError, match=r"--webhook-listen .* each worker of a fleet"):
                await run_batch(settings)
            stats = sim.stats()
    assert stats["submit_requests"] == 0


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--webhook-url", "http://hooks.example.com/pixazo", "must be an https URL"),
        ("--webhook-listen", "8787", "must be HOST:PORT"),
        ("--webhook-mode", "always", "--webhook-mode: invalid choice: 'always'"),
    ],
)
def test_webhook_settings_are_checked_before_anything_runs(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    result = run_cli(
        "run", str(manifest), "--out", str(tmp_path / "out"), flag, value,
        env=cli_env(PIXAZO_API_KEY="k"),
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
