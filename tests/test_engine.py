"""End-to-end runs of the engine against the simulator over real sockets."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.errors import ManifestError, StateLockedError
from pixazo_batch.sim import Simulator
from pixazo_batch.state import StateStore
from pixazo_batch.summary import RunSummary
from tests.conftest import TEST_KEY, FastClock, LogTap, fast, job_line, simulator, write_manifest

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


def manifest_of(tmp_path: Path, count: int, **fields: Any) -> Path:
    return write_manifest(tmp_path / "jobs.jsonl", [job_line(i, **fields) for i in range(count)])


def results(settings: Settings) -> list[dict[str, Any]]:
    text = (settings.out_dir / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def assert_all_served_files_intact(sim: Simulator, settings: Settings) -> None:
    """Every downloaded job's file is byte-identical to what the simulator serves."""
    for record in results(settings):
        if record["state"] != "downloaded":
            continue
        job = sim.state.book.jobs[record["request_id"]]
        media = sim.state.media_file(job)
        expected = hashlib.sha256(b"".join(media.chunks(0, media.size, 1 << 20))).hexdigest()
        data = (settings.out_dir / record["output"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == expected == record["sha256"]
        assert record["bytes"] == len(data)
    assert not list(settings.out_dir.rglob("*.part"))


async def test_happy_path_downloads_every_video(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 5)
    async with simulator() as sim:
        settings = make_settings(sim, manifest)
        summary = await run_batch(settings)
        stats = sim.stats()
        assert_all_served_files_intact(sim, settings)
    assert summary.exit_code == 0
    assert summary.counts["downloaded"] == 5
    assert summary.committed_usd == summary.spent_usd == "1.00"
    assert stats["accepted"] == 5 and stats["duplicate_charges"] == 0
    assert stats["key_leaks"] == 0
    assert [r["state"] for r in results(settings)] == ["downloaded"] * 5


async def test_rerunning_a_finished_manifest_sends_nothing(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 3)
    async with simulator() as sim:
        settings = make_settings(sim, manifest)
        await run_batch(settings)
        before = sim.stats()
        summary = await run_batch(settings)
        after = sim.stats()
    assert summary.exit_code == 0
    assert after["gateway_requests"] == before["gateway_requests"]
    assert after["media_requests"] == before["media_requests"]


@pytest.mark.sqlite_state("a fleet does not look for vanished videos")
async def test_results_and_page_are_written_again_only_when_a_job_changed_or_a_file_is_gone(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator() as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 2))
        await run_batch(settings)
        path = settings.out_dir / "results.jsonl"
        written = path.stat().st_ino  # every write replaces the file: a new inode
        await run_batch(settings)
        untouched = path.stat().st_ino
        page = settings.out_dir / "report.html"
        page.unlink()  # the page alone is written again
        await run_batch(settings)
        page_back, kept = page.is_file(), path.stat().st_ino
        path.unlink()
        await run_batch(settings)
        recreated = path.read_text(encoding="utf-8")
        path.write_text("edited by hand\n", encoding="utf-8")
        (settings.out_dir / "job-000.mp4").unlink()  # the next run downloads it again
        await run_batch(settings)
    assert untouched == written == kept
    assert page_back
    assert len(recreated.splitlines()) == 2
    assert [r["state"] for r in results(settings)] == ["downloaded", "downloaded"]


@pytest.mark.sqlite_state("a fleet's worker writes its results through a temp file of its own")
async def test_results_not_written_are_written_by_the_next_run_even_if_it_changes_nothing(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    """When the review page cannot be written, the results left behind would be taken for
    current by the next run: they are removed instead, and so is the results' half of the
    write."""
    async with simulator() as sim:
        await run_batch(make_settings(sim, manifest_of(tmp_path, 1)))
        settings = make_settings(sim, manifest_of(tmp_path, 2))
        blocker = settings.out_dir / "report.html.tmp"
        blocker.mkdir()  # where the page is written first: no file can be made there
        await run_batch(settings)
        gone = not (settings.out_dir / "results.jsonl").exists()
        half_written = (settings.out_dir / "results.jsonl.tmp").exists()
        blocker.rmdir()
        await run_batch(settings)
    assert len(log_tap.named("results_not_written")) == 1
    assert gone
    assert not half_written  # a full disk is not filled further by a copy nobody reads
    assert [r["state"] for r in results(settings)] == ["downloaded", "downloaded"]


async def test_results_are_written_again_after_a_run_that_did_not_end(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    """A run stopped before its end changed jobs without writing them out: the next run writes
    them even when it changes nothing itself."""
    async with simulator() as sim:
        await run_batch(make_settings(sim, manifest_of(tmp_path, 1)))
        settings = make_settings(sim, manifest_of(tmp_path, 2))
        with anyio.CancelScope() as scope:
            log_tap.on("downloaded", 2, scope.cancel)  # job-001, the new one, is in place
            await run_batch(settings)
        stale = len(results(settings))
        await run_batch(settings)
    assert stale == 1
    assert [r["state"] for r in results(settings)] == ["downloaded", "downloaded"]


@pytest.mark.sqlite_state("a fleet does not look for vanished videos")
async def test_a_vanished_output_is_downloaded_again_without_resubmitting(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 2)
    async with simulator() as sim:
        settings = make_settings(sim, manifest)
        await run_batch(settings)
        (settings.out_dir / "job-000.mp4").unlink()
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 0
    assert (settings.out_dir / "job-000.mp4").is_file()
    assert stats["accepted"] == 2


@pytest.mark.sqlite_state("a fleet does not look for vanished videos")
async def test_vanished_outputs_in_folders_are_found_and_only_they_are_fetched_again(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    outputs = ["spring/a.mp4", "spring/b.mp4", "summer/c.mp4", "d.mp4"]
    lines = [job_line(i, output=output) for i, output in enumerate(outputs)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", lines)
    async with simulator() as sim:
        settings = make_settings(sim, manifest)
        await run_batch(settings)
        before = sim.stats()["media_requests"]
        (settings.out_dir / "spring" / "a.mp4").unlink()
        shutil.rmtree(settings.out_dir / "summer")
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 0
    assert all((settings.out_dir / output).is_file() for output in outputs)
    assert stats["media_requests"] - before == 2
    assert stats["accepted"] == 4


async def test_rejected_submission_fails_the_job_with_the_server_message(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(0, prompt="   "), job_line(1)])
    async with simulator() as sim:
        settings = make_settings(sim, manifest)
        summary = await run_batch(settings)
    assert summary.exit_code == 1
    assert summary.counts["failed"] == 1 and summary.counts["downloaded"] == 1
    assert summary.committed_usd == "0.20"
    assert "prompt: is required" in results(settings)[0]["error"]


async def test_a_refusal_every_job_would_get_stops_submitting_with_exit_2_and_jobs_pending(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    async with simulator(fast(model_disabled=True)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 6), concurrency=1)
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 2
    assert summary.counts["pending"] == 6
    assert summary.committed_usd == "0.00"
    assert stats["submit_requests"] == 1, "the first refusal stops submitting"
    assert len(log_tap.named("submissions_stopped")) == 1
    assert "Model not found" in (summary.stop_reason or "")
    assert {r["attempts"] for r in results(settings)} == {0}


@pytest.mark.parametrize("key", ["wrong-key", "forbidden-key"])
async def test_refused_key_stops_the_run_with_exit_4(
    tmp_path: Path, make_settings: MakeSettings, key: str
) -> None:
    from pydantic import SecretStr

    async with simulator(fast(forbidden_keys=frozenset({"forbidden-key"}))) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 3), api_key=SecretStr(key))
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 4
    assert stats["accepted"] == 0
    assert summary.counts["pending"] == 3


async def test_insufficient_balance_finishes_accepted_jobs_and_resumes_after_top_up(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator(fast(balance_cents=50)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 4), concurrency=1)
        first = await run_batch(settings)
        sim.state.book.balance_cents = 100
        second = await run_batch(settings)
        stats = sim.stats()
    assert first.exit_code == 3
    assert first.counts["downloaded"] == 2 and first.counts["pending"] == 2
    assert "Insufficient Balance" in (first.stop_reason or "")
    assert second.exit_code == 0 and second.counts["downloaded"] == 4
    assert stats["duplicate_charges"] == 0


async def test_refused_500_is_retried_and_counted_in_attempts(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    async with simulator(fast(submit_refused_rate=0.5, seed=11)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 6), max_attempts=10)
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 0
    assert stats["faults"]["submit_refused"] >= 1
    recorded = {r["id"]: r["attempts"] for r in results(settings)}
    assert sum(recorded.values()) == 6 + stats["faults"]["submit_refused"]
    logged = {e["job_id"]: e["attempt"] for e in log_tap.named("submitted")}
    assert logged == recorded, "each acceptance is logged with the attempt that won it"
    assert stats["duplicate_charges"] == 0


@pytest.mark.parametrize("fault", ["submit_lost_answer_rate", "submit_reset_rate"])
async def test_a_lost_answer_makes_the_job_uncertain_and_it_is_never_resubmitted_silently(
    tmp_path: Path, make_settings: MakeSettings, fault: str
) -> None:
    manifest = manifest_of(tmp_path, 3)
    async with simulator(fast(**{fault: 1.0}, lost_answer_delay=0.0)) as sim:
        settings = make_settings(sim, manifest)
        first = await run_batch(settings)
        second = await run_batch(settings)
        stats = sim.stats()
    assert first.exit_code == second.exit_code == 5, "held for a person's decision"
    assert sorted(first.uncertain) == ["job-000", "job-001", "job-002"]
    assert stats["accepted"] == 3, "each job charged once, none submitted again"
    assert first.committed_usd == "0.60"


@pytest.mark.sqlite_state("two output folders on one state")
async def test_uncertain_jobs_are_resubmitted_or_abandoned_only_when_asked(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 2)
    async with simulator(fast(submit_reset_rate=1.0)) as lossy:
        settings = make_settings(lossy, manifest)
        await run_batch(settings)
    async with simulator() as sim:
        resubmitted = await run_batch(make_settings(sim, manifest, resubmit_uncertain=True))
    assert resubmitted.exit_code == 0 and resubmitted.counts["downloaded"] == 2
    assert resubmitted.committed_usd == "0.80", "both the lost and the new attempt count"

    other = tmp_path / "other"
    async with simulator(fast(submit_reset_rate=1.0)) as lossy:
        await run_batch(make_settings(lossy, manifest, out_dir=other))
        abandoned = await run_batch(
            make_settings(lossy, manifest, out_dir=other, abandon_uncertain=True)
        )
    assert abandoned.counts["failed"] == 2 and abandoned.exit_code == 1


async def test_remote_error_is_resubmitted_up_to_max_attempts(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator(fast(error_rate=1.0)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 2), max_attempts=3)
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 1
    assert summary.counts["failed"] == 2
    assert set(stats["accepted_by_hash"].values()) == {3}
    assert summary.committed_usd == "0.00", "ERROR is not charged"
    assert all(len(r["request_ids"]) == 3 for r in results(settings))


async def test_remote_error_then_success_downloads(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator(fast(error_rate=0.5, seed=5)) as sim:
        summary = await run_batch(make_settings(sim, manifest_of(tmp_path, 6), max_attempts=10))
    assert summary.exit_code == 0 and summary.counts["downloaded"] == 6


async def test_remote_failed_is_kept_until_retry_failed(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 2)
    async with simulator(fast(failed_rate=1.0)) as sim:
        settings = make_settings(sim, manifest)
        failed = await run_batch(settings)
        again = await run_batch(settings)
        stats = sim.stats()
    assert failed.exit_code == again.exit_code == 1
    assert stats["accepted"] == 2
    async with simulator() as sim:
        retried = await run_batch(make_settings(sim, manifest, retry_failed=True))
    assert retried.exit_code == 0 and retried.counts["downloaded"] == 2


@pytest.mark.parametrize("style", ["seconds", "http-date", "iso", "absent"])
async def test_retry_after_is_honoured_in_every_form(
    tmp_path: Path, make_settings: MakeSettings, style: str
) -> None:
    scenario = fast(rate_limit=4, rate_window=1.0, retry_after=style)
    async with simulator(scenario) as sim:
        summary = await run_batch(make_settings(sim, manifest_of(tmp_path, 4)))
        stats = sim.stats()
    assert summary.exit_code == 0
    assert stats["rate_limited"] >= 1
    assert stats["requests_in_retry_window"] == 0
    assert {r["attempts"] for r in results(make_settings(sim, tmp_path / "jobs.jsonl"))} == {1}, (
        "a 429 never uses up an attempt"
    )


async def test_truncated_downloads_resume_with_range(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    scenario = fast(media_bytes=1_500_000, media_truncate_rate=0.5, media_chunk=65_536, seed=3)
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 4), download_tries=10)
        summary = await run_batch(settings)
        stats = sim.stats()
        assert_all_served_files_intact(sim, settings)
    assert summary.exit_code == 0
    assert stats["media_truncated"] >= 1
    assert stats["media_range_requests"] >= 1


async def test_a_body_that_is_not_an_mp4_never_reaches_the_final_path(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    async with simulator(fast(media_not_mp4_rate=0.5, seed=5)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 4), download_tries=10)
        summary = await run_batch(settings)
        stats = sim.stats()
        assert_all_served_files_intact(sim, settings)
    assert summary.exit_code == 0
    assert stats["faults"]["media_not_mp4"] >= 1
    refused = [e for e in log_tap.named("download_retry") if "ftyp" in e["error"]]
    assert len(refused) == stats["faults"]["media_not_mp4"]


async def test_expired_media_urls_are_refreshed_from_the_status(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator(fast(media_expire_rate=1.0)) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 3))
        summary = await run_batch(settings)
        stats = sim.stats()
        assert_all_served_files_intact(sim, settings)
    assert summary.exit_code == 0
    assert stats["media_expired"] == 3


async def test_the_key_reaches_only_the_gateway_and_is_never_written(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    scenario = fast(media_expire_rate=1.0, submit_refused_rate=0.3, status_error_rate=0.3)
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 4), max_attempts=10)
        await run_batch(settings, clock=FastClock())  # the refusals' back-offs, quickly
        stats = sim.stats()
    assert stats["key_leaks"] == 0
    assert log_tap.events, "logs were captured"
    for path in settings.out_dir.rglob("*"):
        if path.is_file() and not path.name.endswith(".mp4"):
            assert TEST_KEY.encode() not in path.read_bytes(), path
    assert TEST_KEY not in log_tap.sink.getvalue()  # type: ignore[attr-defined]


async def test_a_job_past_its_deadline_is_stalled_and_polled_again_next_run(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    slow = fast(processing_median={"540p": 600.0}, processing_sigma=0.0)
    async with simulator(slow) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 1), job_deadline=0.05)
        stalled = await run_batch(settings)
        for job in sim.state.book.jobs.values():  # the simulated job finishes now
            job.started = job.finished = job.created
        resumed = await run_batch(make_settings(sim, tmp_path / "jobs.jsonl"))
        stats = sim.stats()
    assert stalled.exit_code == 3 and stalled.stalled == ["job-000"]
    assert stalled.counts["submitted"] == 1
    assert resumed.exit_code == 0
    assert stats["accepted"] == 1


async def test_a_resumed_job_is_downloaded_once_when_its_first_poll_beats_start_up(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    """Polls answered while the run is still seeding its queues must not enqueue a second,
    concurrent download of the same job (two writers on one ``.part``)."""
    slow = fast(
        processing_median={"540p": 600.0},
        processing_sigma=0.0,
        media_bytes=200_000,
        media_throughput=400_000.0,
    )
    async with simulator(slow) as sim:
        manifest = manifest_of(tmp_path, 3)
        stalled = await run_batch(make_settings(sim, manifest, job_deadline=0.05))
        for job in sim.state.book.jobs.values():
            job.started = job.finished = job.created
        # One slot in flight: seeding waits for each poll to finish before it goes on.
        settings = make_settings(sim, manifest, max_in_flight=1)
        resumed = await run_batch(settings)
        stats = sim.stats()
        assert_all_served_files_intact(sim, settings)
    assert stalled.counts["submitted"] == 3
    assert resumed.exit_code == 0
    assert stats["media_requests"] == 3


@pytest.mark.parametrize(
    ("event", "count"), [("submitted", 2), ("remote_finished", 2), ("downloaded", 1)]
)
async def test_a_run_cancelled_inside_any_stage_resumes_without_paying_twice(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap, event: str, count: int
) -> None:
    manifest = manifest_of(tmp_path, 6)
    async with simulator() as sim:
        settings = make_settings(sim, manifest, concurrency=2)
        with anyio.CancelScope() as scope:
            log_tap.on(event, count, scope.cancel)
            await run_batch(settings)
        assert scope.cancelled_caught
        summary = await run_batch(settings)
        stats = sim.stats()
        assert_all_served_files_intact(sim, settings)
    assert summary.exit_code == 0 and summary.counts["downloaded"] == 6
    assert stats["duplicate_charges"] == 0


async def test_budget_caps_committed_spend_across_runs(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    from decimal import Decimal

    manifest = manifest_of(tmp_path, 5)
    async with simulator() as sim:
        settings = make_settings(sim, manifest, max_spend=Decimal("0.50"), concurrency=1)
        first = await run_batch(settings)
        second = await run_batch(settings)
        stats = sim.stats()
    assert first.exit_code == second.exit_code == 3
    assert stats["accepted"] == 2
    assert first.committed_usd == second.committed_usd == "0.40"


async def test_bad_lines_are_reported_and_good_lines_still_run(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = write_manifest(
        tmp_path / "jobs.jsonl",
        [
            job_line(0),
            '{"id": "broken", ',
            job_line(1, resolution="4k"),
            "# a comment",
            "",
            job_line(2, colour="blue"),
            job_line(3),
        ],
    )
    async with simulator() as sim:
        summary = await run_batch(make_settings(sim, manifest))
    assert summary.exit_code == 2
    assert summary.counts["downloaded"] == 2
    assert summary.manifest_issues[0].startswith(f"{manifest}:2: (line): invalid JSON")
    assert summary.manifest_issues[1].startswith(f"{manifest}:3: resolution: ")
    assert summary.manifest_issues[2].startswith(f"{manifest}:6: colour: unknown field")


async def test_strict_stops_at_the_first_bad_line(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(0, duration="7s"), job_line(1)])
    async with simulator() as sim:
        with pytest.raises(ManifestError, match=":1: duration:"):
            await run_batch(make_settings(sim, manifest, strict=True))
        assert sim.stats()["submit_requests"] == 0


async def test_a_changed_request_under_a_known_id_is_refused(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    manifest = manifest_of(tmp_path, 1)
    async with simulator() as sim:
        await run_batch(make_settings(sim, manifest))
        write_manifest(manifest, [job_line(0, prompt="A different lighthouse entirely")])
        summary = await run_batch(make_settings(sim, manifest))
        stats = sim.stats()
    assert summary.exit_code == 2
    assert "different request" in summary.manifest_issues[0]
    assert stats["accepted"] == 1


async def test_an_output_folder_symlink_cannot_lead_outside(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "escape").symlink_to(outside, target_is_directory=True)
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(0, output="escape/x.mp4")])
    async with simulator() as sim:
        summary = await run_batch(make_settings(sim, manifest))
    assert summary.exit_code == 3
    assert list(outside.iterdir()) == []


@pytest.mark.sqlite_state("the run lock of a state file (workers of a fleet share a database)")
async def test_a_second_run_on_the_same_state_file_is_locked_out(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    async with simulator() as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 1))
        with StateStore.open(settings.state_file):
            with pytest.raises(StateLockedError, match="pid"):
                await run_batch(settings)
            assert StateLockedError.exit_code == 75


async def test_summary_type(tmp_path: Path, make_settings: MakeSettings) -> None:
    async with simulator() as sim:
        summary = await run_batch(make_settings(sim, manifest_of(tmp_path, 1)))
    assert isinstance(summary, RunSummary)


@pytest.mark.sqlite_state("reads the SQLite state file itself")
async def test_an_unchanged_manifest_is_not_read_again_but_a_bad_line_is_always_reported(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    clean = manifest_of(tmp_path, 2)
    async with simulator() as sim:
        settings = make_settings(sim, clean)
        await run_batch(settings)
        with StateStore.open(settings.state_file) as store:
            digest = hashlib.sha256(clean.read_bytes()).hexdigest()
            assert store.knows_manifest(digest)
        flawed = write_manifest(tmp_path / "flawed.jsonl", [job_line(0), "{oops"])
        other = make_settings(sim, flawed, out_dir=tmp_path / "other")
        first = await run_batch(other)
        second = await run_batch(other)
    assert first.manifest_issues == second.manifest_issues != []


async def test_an_exhausted_quota_stops_the_run_with_exit_3_and_says_when_it_returns(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    from pydantic import SecretStr

    async with simulator(fast(quota_keys=frozenset({"quota-key"}))) as sim:
        settings = make_settings(sim, manifest_of(tmp_path, 2), api_key=SecretStr("quota-key"))
        summary = await run_batch(settings)
        stats = sim.stats()
    assert summary.exit_code == 3
    assert stats["accepted"] == 0
    assert summary.counts["pending"] == 2
    assert "Out of call volume quota" in (summary.stop_reason or "")
    assert "returns in about 42" in (summary.stop_reason or "")


@pytest.mark.sqlite_state("two output folders on one state")
async def test_each_video_is_checked_against_its_request_and_a_mismatch_is_kept_and_flagged(
    tmp_path: Path, make_settings: MakeSettings, log_tap: LogTap
) -> None:
    manifest = write_manifest(
        tmp_path / "jobs.jsonl",
        [job_line(0), job_line(1, aspect_ratio="9:16", duration="9s")],
    )
    async with simulator(fast(media_clip="fixed")) as wrong:
        flagged = make_settings(wrong, manifest)
        summary = await run_batch(flagged)
    async with simulator() as right:
        matching = make_settings(right, manifest, out_dir=tmp_path / "right")
        await run_batch(matching)
    assert summary.exit_code == 0, "paid for and kept; flagged, not failed"
    good, bad = results(flagged)
    assert good["mismatch"] is None and good["video_seconds"] == 5.0
    assert bad["mismatch"] == "lasts 5.0 s, not 9 s; is 96x54, not 9:16"
    assert [e["job_id"] for e in log_tap.named("video_mismatch")] == ["job-001"]
    tall = results(matching)[1]
    assert tall["mismatch"] is None
    assert (tall["video_seconds"], tall["video_width"], tall["video_height"]) == (9.0, 54, 96)
