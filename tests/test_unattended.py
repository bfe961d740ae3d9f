"""Unattended nights: interruptions, outages and intermediaries leave nothing for a person unless
money is truly in doubt (never-sent jobs stay pending, only the gateway's answers spend attempts,
Retry-After outlives the process, the sandbox resumes, ``resolve`` settles what is in doubt)."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixazo_batch.config import Settings
from pixazo_batch.context import RunView
from pixazo_batch.engine import run_batch
from pixazo_batch.progress import waiting_for
from pixazo_batch.sim import Simulator
from pixazo_batch.summary import RunSummary
from tests.conftest import TEST_KEY, LogTap, fast, job_line, simulator, write_manifest
from tests.test_cli import cli_env, log_events, run_args, run_cli
from tests.test_torture import KILLS

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


def manifest_of(tmp_path: Path, count: int, **fields: Any) -> Path:
    return write_manifest(tmp_path / "jobs.jsonl", [job_line(i, **fields) for i in range(count)])


def phantom_uncertain(database: Path, sim: Simulator) -> int:
    """Uncertain jobs whose recorded POSTs outnumber those that reached the gateway: held for a
    person although nothing was sent."""
    arrived = sim.stats()["arrived_by_hash"]
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT j.request_hash, COUNT(a.n) FROM jobs j JOIN attempts a ON a.job_id = j.id"
            " WHERE j.state = 'uncertain' GROUP BY j.id"
        ).fetchall()
    return sum(max(0, posts - arrived.get(request_hash, 0)) for request_hash, posts in rows)


def states_of(database: Path) -> dict[str, int]:
    with closing(sqlite3.connect(database)) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())


async def test_an_outage_at_the_start_fails_no_job_and_all_finish_when_the_gateway_returns(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    down = anyio.Event()
    log_tap.on("gateway_unreachable", 2, down.set)
    async with simulator() as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 5))
        await sim.stop_gateway()
        summary = await run_through_outage(settings, down, sim.start_gateway)
        stats = sim.stats()
    assert summary.exit_code == 0 and summary.counts["downloaded"] == 5
    assert stats["accepted"] == 5 and stats["duplicate_charges"] == 0
    assert stats["submit_requests"] == 5, "nothing was POSTed twice"
    text = (settings.out_dir / "results.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert {r["attempts"] for r in records} == {1}, "a refused connection spends no attempt"


async def test_an_outage_mid_run_fails_no_job_and_pays_nothing_twice(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    slow = fast(processing_median={"540p": 0.5}, processing_sigma=0.0)
    third, down = anyio.Event(), anyio.Event()
    log_tap.on("submitted", 3, third.set)
    log_tap.on("poll_retry", 1, down.set)
    async with simulator(slow) as sim:
        # Three jobs in flight, the rest waiting for a slot: the outage finds no POST on the
        # wire (one that is would rightly be uncertain), polls fail, then resume.
        settings = make_settings(sim, manifest_of(tmp_path, 8), max_in_flight=3)

        async def outage() -> None:
            await third.wait()
            await sim.stop_gateway()
            await down.wait()
            await sim.start_gateway()

        async with anyio.create_task_group() as group:
            group.start_soon(outage)
            summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 0 and summary.counts["downloaded"] == 8
    assert stats["accepted"] == 8 and stats["duplicate_charges"] == 0


async def test_a_media_host_out_of_reach_is_waited_for_without_spending_the_videos_tries(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    """The CDN refuses connections when the videos are ready, then comes back: the downloads
    wait for it (one try each here: a refused connection used to spend it and give the video
    up for the night), and every video lands."""
    down, watcher, shown = anyio.Event(), ViewKeeper(), []
    log_tap.on("media_host_unreachable", 1, down.set)
    log_tap.on("media_host_unreachable", 1, lambda: shown.append(watcher.waiting_for()))
    async with simulator() as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 4), download_tries=1)
        await sim.stop_media()
        summary = await run_through_outage(settings, down, sim.start_media, observer=watcher)
    assert summary.exit_code == 0 and summary.counts["downloaded"] == 4
    assert len(log_tap.named("media_host_back")) == 1
    # The live display says what the run waits for, as it does for the gateway.
    assert shown[0] is not None and shown[0].startswith("media host unreachable, next try in")


async def run_through_outage(
    settings: Settings, down: anyio.Event, back: Callable[[], Awaitable[None]], **options: Any
) -> RunSummary:
    """The run, with ``back`` (a service starting again) awaited once ``down`` is set."""

    async def restore() -> None:
        await down.wait()
        await back()

    async with anyio.create_task_group() as group:
        group.start_soon(restore)
        summary = await run_batch(settings, **options)
        group.cancel_scope.cancel()
    return summary


class ViewKeeper:
    """An observer that keeps the run's view, for a test to read at a chosen moment."""

    view: RunView | None = None

    async def watch(self, view: RunView) -> None:
        self.view = view  # read later, at the moment the test chooses: nothing to wait for here

    def waiting_for(self) -> str | None:
        assert self.view is not None
        return waiting_for(self.view)


@pytest.mark.parametrize(("service", "left"), [("gateway", "pending"), ("media host", "completed")])
async def test_past_the_outage_deadline_the_run_stops_with_exit_3_and_nothing_lost(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap, service: str, left: str
) -> None:
    """Pending jobs stay pending (nothing paid); completed ones stay completed (paid for, the
    next run downloads them)."""
    async with simulator() as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 4), outage_deadline=0.3)
        await (sim.stop_gateway() if service == "gateway" else sim.stop_media())
        with anyio.fail_after(60):
            summary = await run_batch(settings)
    assert summary.exit_code == 3
    assert summary.counts[left] >= 1, summary.counts
    # Jobs not yet seen finished when the run stopped stay submitted: polled by the next run.
    assert summary.counts[left] + summary.counts["submitted"] == 4, summary.counts
    assert summary.committed_usd == ("0.00" if service == "gateway" else "0.80")
    assert f"the {service} could not be reached" in (summary.stop_reason or "")
    event = f"{service.replace(' ', '_')}_unreachable"
    assert log_tap.named(event)[0]["next_try_s"] >= 0


@pytest.mark.parametrize("kind", ["524-html", "503-html", "408", "2xx-no-id"])
async def test_an_intermediarys_answer_to_a_submit_makes_the_job_uncertain_after_one_post(
    tmp_path: Path, make_settings: MakeSettings, kind: str
) -> None:
    scenario = fast(submit_foreign_rate=1.0, submit_foreign_kind=kind)
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 3), concurrency=1)
        first = await run_batch(settings)
        again = await run_batch(settings)
        stats = sim.stats()
    assert first.exit_code == again.exit_code == 5
    assert sorted(first.uncertain) == ["job-000", "job-001", "job-002"]
    assert set(stats["arrived_by_hash"].values()) == {1}, "exactly one POST each, ever"
    assert first.committed_usd == "0.60", "each may have been charged"


async def test_a_sender_refused_by_the_budget_waits_for_the_post_being_recorded(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    """Two jobs start together and the budget buys one: the second is refused while the
    first one's write-ahead is being committed, so it must wait for that POST (a 429 could
    yet free its price), not stop every submission while it is on its way."""
    async with simulator(fast()) as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 2), max_spend=Decimal("0.20"), concurrency=2
        )
        summary = await run_batch(settings)
    assert summary.counts["downloaded"] == 1 and summary.counts["pending"] == 1
    order = [
        e["event"] for e in log_tap.events if e["event"] in ("submitted", "submissions_stopped")
    ]
    assert order == ["submitted", "submissions_stopped"], "stopped only once nothing could free"


async def test_the_budget_counts_only_posts_that_may_have_been_sent(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    """429s and refused connections never commit money: the cap buys exactly its jobs."""
    scenario = fast(rate_limit=2, rate_window=0.5, retry_after="seconds")
    async with simulator(scenario) as sim:
        settings = make_settings(
            sim, manifest_of(tmp_path, 8), max_spend=Decimal("0.60"), concurrency=4
        )
        summary = await run_batch(settings)
        stats = sim.stats()
    assert stats["rate_limited"] >= 1
    assert stats["accepted"] == 3
    assert summary.committed_usd == summary.spent_usd == "0.60"
    assert summary.counts["downloaded"] == 3 and summary.counts["pending"] == 5
    assert summary.exit_code == 3


async def test_sigterm_during_a_429_pause_stops_at_once_and_leaves_no_job_uncertain(
    tmp_path: Path,
) -> None:
    manifest = manifest_of(tmp_path, 30)
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(rate_limit=4, rate_window=30.0, processing_median={"540p": 60.0})
    async with simulator(scenario) as sim:
        command = [*run_args(sim, manifest, out), "--concurrency", "8"]
        async with await anyio.open_process(command, env=env) as process:
            async for record in log_events(process):
                if record.get("event") == "rate_limited":
                    process.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    break
            await process.wait()
        stopped_in = time.monotonic() - signalled
        states = states_of(out / ".pixazo-batch.db")
        phantoms = phantom_uncertain(out / ".pixazo-batch.db", sim)
        stats = sim.stats()
    assert process.returncode == 3
    assert stopped_in < 10, "waiting submits are cancelled, not waited for"
    assert phantoms == 0
    assert "uncertain" not in states and "submitting" not in states
    assert states.get("submitted", 0) == stats["accepted"]


async def test_a_run_started_inside_an_announced_retry_after_waits_it_out(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, 6)
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(rate_limit=2, rate_window=3.0)) as sim:
        async with await anyio.open_process(run_args(sim, manifest, out), env=env) as process:
            async for record in log_events(process):
                if record.get("event") == "rate_limited":
                    process.kill()
                    break
            await process.wait()
        resumed = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
        stats = sim.stats()
    events = [json.loads(line) for line in resumed.stderr.decode().splitlines() if "{" in line]
    assert any(e["event"] == "waiting_retry_after" for e in events)
    assert stats["requests_in_retry_window"] == 0
    assert resumed.returncode in (0, 5)


async def test_kill_nine_while_submits_wait_holds_only_posts_that_were_on_the_wire(
    tmp_path: Path,
) -> None:
    """SIGKILL at seeded instants while submitters wait out 429 pauses: a job is held uncertain
    without its POST having reached the gateway only when the kill landed between that POST's
    write-ahead (logged ``submitting``) and its bytes leaving. The figure is printed."""
    rng = random.Random(20261127)
    manifest = manifest_of(tmp_path, 20)
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(
        rate_limit=3,
        rate_window=1.0,
        processing_median={"540p": 2.0},
        submit_lost_answer_rate=0.2,
        lost_answer_delay=0.3,
    )
    kills, at_the_wire = 0, 0
    async with simulator(scenario) as sim:
        for _ in range(KILLS):
            nth = rng.randint(1, 6)
            async with await anyio.open_process(run_args(sim, manifest, out), env=env) as process:
                seen = 0
                async for record in log_events(process):
                    seen += record.get("event") in ("rate_limited", "submitting", "submitted")
                    if seen == nth:
                        process.kill()
                        at_the_wire += record["event"] == "submitting"
                        break
                await process.wait()
            kills += process.returncode == -signal.SIGKILL
        resumed = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
        phantoms = phantom_uncertain(out / ".pixazo-batch.db", sim)
        stats = sim.stats()
    print(f"kills={kills} aimed_at_the_write_ahead={at_the_wire} held_never_sent={phantoms}")
    assert kills >= KILLS // 2
    assert resumed.returncode in (0, 3, 5)
    assert phantoms <= at_the_wire
    assert stats["duplicate_charges"] == 0


async def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """The command line in a worker thread, so the simulator on this loop can answer it."""
    return await anyio.to_thread.run_sync(lambda: run_cli(*args, env=env))


@pytest.mark.sqlite_state("commands find the state file through --out")
async def test_resolve_attaches_a_request_found_in_the_dashboard_and_nothing_is_paid_twice(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 2)
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(submit_reset_rate=1.0)) as sim:
        lost = await run_batch(make_settings(sim, manifest))
        request_ids = {job.request_hash: job.request_id for job in sim.state.book.jobs.values()}
        status = json.loads((await cli("status", "--out", str(out), env=env)).stdout)
        sim.state.scenario = fast()
        with closing(sqlite3.connect(out / ".pixazo-batch.db")) as db:
            hashes = dict(db.execute("SELECT id, request_hash FROM jobs").fetchall())
        unknown = await cli(
            "resolve", "job-000", "--out", str(out), "--base-url", sim.base_url,
            "--request-id", "luma-dream-machine-ray-2-flash-image-to-video_unknown", env=env,
        )  # fmt: skip
        found = await cli(
            "resolve", "job-000", "--out", str(out), "--base-url", sim.base_url,
            "--request-id", request_ids[hashes["job-000"]], env=env,
        )  # fmt: skip
        abandoned = await cli("resolve", "job-001", "--out", str(out), "--abandon", env=env)
        again = await cli("resolve", "job-001", "--out", str(out), "--not-sent", env=env)
        finished = await run_batch(make_settings(sim, manifest))
        stats = sim.stats()
    assert lost.exit_code == 5
    first, _ = status["uncertain"]
    assert first["id"] == "job-000" and first["post_sent"] and "Server" in first["lost"]
    assert f"pixazo-batch resolve job-000 --out {out} --not-sent" in first["resolve"]
    assert unknown.returncode == 2 and "does not know request" in unknown.stderr
    assert found.returncode == 0, found.stderr
    assert abandoned.returncode == 0
    assert again.returncode == 2 and "not uncertain" in again.stderr
    assert finished.exit_code == 1
    assert finished.counts["downloaded"] == 1 and finished.counts["failed"] == 1
    assert stats["accepted"] == 2, "job-000 was polled and downloaded, never submitted again"


@pytest.mark.sqlite_state("commands find the state file through --out")
async def test_resolve_not_sent_lets_the_next_run_submit_and_frees_the_committed_spend(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 1)
    out = tmp_path / "out"
    async with simulator(fast(submit_reset_rate=1.0)) as sim:
        lost = await run_batch(make_settings(sim, manifest))
        resolved = await cli("resolve", "job-000", "--out", str(out), "--not-sent")
        sim.state.scenario = fast()
        finished = await run_batch(make_settings(sim, manifest))
    assert lost.committed_usd == "0.20"
    assert resolved.returncode == 0, resolved.stderr
    assert finished.exit_code == 0
    assert finished.committed_usd == "0.20", "the lost attempt no longer counts"


async def test_an_interrupted_sandbox_run_resumes_with_the_same_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        *("python", "-m", "pixazo_batch", "--log-format", "json", "run", "jobs.example.jsonl"),
        *("--out", str(out), "--sandbox"),
    ]
    command[0] = __import__("sys").executable
    async with await anyio.open_process(command, env=cli_env()) as process:
        async for record in log_events(process):
            if record.get("event") == "submitted":
                process.send_signal(signal.SIGINT)
                break
        await process.wait()
    started = time.monotonic()
    resumed = await anyio.run_process(command, env=cli_env(), check=False)
    took = time.monotonic() - started
    summary = json.loads(resumed.stdout.decode().splitlines()[-1])
    assert process.returncode == 3
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert summary["counts"]["downloaded"] == 6 and summary["counts"]["failed"] == 0
    assert len(list(out.rglob("*.mp4"))) == 6
    assert took < 30


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--base-url", "gateway.pixazo.ai", "--base-url: must be an http(s) URL with a host"),
        ("--base-url", "http://[::1", "--base-url: Invalid IPv6 URL"),
    ],
)
def test_settings_are_checked_before_any_request(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    manifest = manifest_of(tmp_path, 1)
    result = run_cli(
        "run", str(manifest), "--out", str(tmp_path / "out"), flag, value,
        env=cli_env(PIXAZO_API_KEY=TEST_KEY),
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_key_with_a_line_break_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, 1)
    result = run_cli(
        "run", str(manifest), "--out", str(tmp_path / "out"),
        env=cli_env(PIXAZO_API_KEY="abc\ndef"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "PIXAZO_API_KEY: contains a space, a line break" in result.stderr
    assert "abc" not in result.stderr
    assert not (tmp_path / "out").exists()
