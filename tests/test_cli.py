"""The command line as a user meets it: real subprocesses, real signals, loopback simulator."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from pixazo_batch.manifest import line_digest
from pixazo_batch.models import GenerationRequest
from pixazo_batch.sim import Simulator
from pixazo_batch.workpool import PARALLEL_BYTES, worker_count
from tests.conftest import TEST_KEY, fast, job_line, simulator, write_manifest

pytestmark = pytest.mark.anyio

PYTHON = sys.executable
MODEL = "luma-dream-machine-ray-2-flash-image-to-video"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXAZO_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pixazo_batch", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=120,
        check=False,
    )


async def log_events(process: Process) -> AsyncIterator[dict[str, Any]]:
    """JSON log events from a child's stderr, as they are written."""
    assert process.stderr is not None
    pending = ""
    async for text in TextReceiveStream(process.stderr):
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            if line.startswith("{"):
                yield json.loads(line)


def hashes_in_states(database: Path, *states: str) -> set[str]:
    """Request hashes of the jobs a state file holds in ``states``."""
    marks = ", ".join("?" * len(states))
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute(f"SELECT request_hash FROM jobs WHERE state IN ({marks})", states)
        return {row[0] for row in rows}


def run_args(sim: Simulator, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        PYTHON, "-m", "pixazo_batch", "--log-level", "debug", "run", str(manifest),
        "--out", str(out), "--base-url", sim.base_url, "--poll-interval", "0.05",
        "--rps", "200", "--concurrency", "2", *extra,
    ]  # fmt: skip


def test_validate_prices_the_example_manifest() -> None:
    result = run_cli("validate", "jobs.example.jsonl")
    summary = json.loads(result.stdout)
    assert result.returncode == 0
    assert summary["jobs"] == 6
    assert summary["price_usd"] == "1.36"


def test_validate_reports_bad_lines_and_exits_2(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0), job_line(1, output="../up.mp4")])
    result = run_cli("validate", str(manifest))
    assert result.returncode == 2
    assert f"{manifest}:2: output: must stay inside the output folder" in result.stderr
    assert json.loads(result.stdout)["jobs"] == 1


def test_a_run_reads_a_large_manifest_on_every_core_and_records_each_job_as_one_reader_does(
    tmp_path: Path,
) -> None:
    lines: list[dict[str, Any] | str] = [job_line(n) for n in range(70_000)]
    lines[1] = job_line(1, output="../up.mp4")
    lines[40_000] = "{not json"
    lines[69_998] = job_line(5, prompt="line 6's id again")
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    assert manifest.stat().st_size >= PARALLEL_BYTES
    out = tmp_path / "out"
    # A dry run reads it as a run does, by the same workers, and records nothing.
    keyed = cli_env(PIXAZO_API_KEY=TEST_KEY)
    dry = run_cli("run", str(manifest), "--out", str(out), "--dry-run", env=keyed)
    planned = json.loads(dry.stdout.splitlines()[-1])
    assert (planned["jobs"], planned["problems"]) == (69_997, 3)
    assert f"{manifest}:69999: id: duplicate id" in dry.stderr
    assert not (out / ".pixazo-batch.db").exists()
    # Nothing may be spent: every job is recorded and none is sent.
    args = ["run", str(manifest), "--out", str(out), "--sandbox", "--max-spend", "0"]
    result = run_cli("--log-level", "info", *args)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (read,) = [event for event in events if event["event"] == "manifest_read"]
    workers = worker_count(busy_here=True)  # a core is left to the run, which records
    assert (read["workers"], read["jobs"], read["issues"]) == (workers, 69_997, 3)
    problems = [event for event in events if event["event"] == "manifest_issue"]
    assert [(problem["line"], problem["field"]) for problem in problems] == [
        (2, "output"),
        (40_001, "(line)"),
        (69_999, "id"),
    ]
    with closing(sqlite3.connect(out / ".pixazo-batch.db")) as db:
        rows = db.execute("SELECT id, request_hash, line_digest FROM jobs ORDER BY id").fetchall()
        states = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert states == [("pending", 69_997)]
    for job_id, request_hash, digest in rows[::9_999]:
        number = int(job_id.removeprefix("job-"))
        request = GenerationRequest.model_validate(
            {key: value for key, value in job_line(number).items() if key != "id"}
        )
        assert request_hash == request.request_hash()
        assert digest == line_digest(json.dumps(job_line(number)).encode())


def test_validate_reads_a_manifest_from_a_pipe() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "pixazo_batch", "validate", "/dev/stdin"],
        input=Path("jobs.example.jsonl").read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["jobs"] == 6


def test_run_refuses_a_manifest_that_is_not_a_regular_file_by_saying_so(tmp_path: Path) -> None:
    result = run_cli("run", str(tmp_path), "--out", str(tmp_path / "out"), "--sandbox")
    assert result.returncode == 2
    assert f"{tmp_path}: not a regular file; save it as one first" in result.stderr


def test_validate_reads_a_large_manifest_on_every_core_and_reports_it_whole(
    tmp_path: Path,
) -> None:
    lines: list[dict[str, Any] | str] = [job_line(n, duration="9s") for n in range(70_000)]
    lines[1] = job_line(1, output="../up.mp4")
    lines[40_000] = "{not json"
    lines[69_998] = job_line(5, prompt="line 6's id again")
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    assert manifest.stat().st_size >= PARALLEL_BYTES
    result = run_cli("validate", str(manifest), "--log-level", "debug")
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stderr.splitlines()]
    # Worker processes read it wherever this process may use two cores or more.
    parallel = any(event["event"] == "manifest_read_in_parallel" for event in events)
    assert parallel == (worker_count() > 0)
    problems = [event for event in events if event["event"] == "manifest_issue"]
    assert [(problem["line"], problem["field"]) for problem in problems] == [
        (2, "output"),
        (40_001, "(line)"),
        (69_999, "id"),
    ]
    assert "first on line 6" in problems[2]["error"]
    summary = json.loads(result.stdout)
    assert (summary["jobs"], summary["price_usd"]) == (69_997, f"{69_997 * 0.36:.2f}")


def test_run_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(0)])
    result = run_cli("run", str(manifest), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "PIXAZO_API_KEY" in result.stderr


def test_sandbox_run_leaves_playable_videos_status_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("run", "jobs.example.jsonl", "--out", str(out), "--sandbox")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["counts"]["downloaded"] == 6
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 6
    assert all(video.read_bytes()[4:8] == b"ftyp" for video in videos)
    status = json.loads(run_cli("status", "--out", str(out)).stdout)
    assert status["counts"] == {"downloaded": 6}
    assert status["committed_usd"] == "1.36"
    report = [json.loads(line) for line in run_cli("report", "--out", str(out)).stdout.splitlines()]
    assert {r["id"] for r in report} >= {"tree-01", "harbour-dawn"}


async def test_simulate_serves_the_documented_curl_example(tmp_path: Path) -> None:
    command = [PYTHON, "-m", "pixazo_batch", "simulate", "--port", "0", "--scenario", "fast"]
    async with await anyio.open_process(command, env=cli_env()) as process:
        assert process.stdout is not None
        lines = TextReceiveStream(process.stdout)
        first = await lines.receive()
        base_url = first.split()[1]
        body = json.dumps({"prompt": "A magical timelapse", "image_url": "https://x.example/a.jpg"})
        curl = [
            "curl", "-sS", "-X", "POST", f"{base_url}/{MODEL}/v1/{MODEL}-request",
            "-H", "Content-Type: application/json", "-H", "Cache-Control: no-cache",
            "-H", "Ocp-Apim-Subscription-Key: sandbox", "--data-raw", body,
        ]  # fmt: skip
        accepted = json.loads((await anyio.run_process(curl)).stdout)
        status_cmd = [
            "curl",
            "-sS",
            "-H",
            "Ocp-Apim-Subscription-Key: sandbox",
            accepted["polling_url"],
        ]
        status = json.loads((await anyio.run_process(status_cmd)).stdout)
        video = tmp_path / "v.mp4"
        await anyio.run_process(["curl", "-sS", "-o", str(video), status["output"]["media_url"][0]])
        process.terminate()
    assert accepted["status"] == "QUEUED"
    assert status["status"] == "COMPLETED"
    assert video.read_bytes()[4:8] == b"ftyp"


@pytest.mark.parametrize(
    ("event", "count"), [("submitting", 1), ("submitted", 3), ("downloaded", 2)]
)
async def test_sigkill_at_any_stage_then_rerun_finishes_without_paying_twice(
    tmp_path: Path, event: str, count: int
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(6)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(media_bytes=200_000)) as sim:
        async with await anyio.open_process(run_args(sim, manifest, out), env=env) as process:
            seen = 0
            async for record in log_events(process):
                seen += record.get("event") == event
                if seen == count:
                    process.kill()
                    break
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        maybe_sent = hashes_in_states(out / ".pixazo-batch.db", "submitting", "uncertain")
        finished = await anyio.run_process(
            [*run_args(sim, manifest, out), "--resubmit-uncertain"], env=env, check=False
        )
        stats = sim.stats()
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert len(list(out.glob("*.mp4"))) == 6
    assert not list(out.glob("*.part"))
    # Only a job killed between its POST and the answer may be submitted again, and only because
    # --resubmit-uncertain asked for it.
    charged_twice = {h for h, n in stats["accepted_by_hash"].items() if n > 1}
    assert charged_twice <= maybe_sent
    with closing(sqlite3.connect(out / ".pixazo-batch.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_submitting_and_exits_3_without_uncertain_jobs(
    tmp_path: Path, signum: signal.Signals
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(8)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    slow = fast(processing_median={"540p": 30.0}, processing_sigma=0.0, response_delay=0.2)
    async with simulator(slow) as sim:
        async with await anyio.open_process(run_args(sim, manifest, out), env=env) as process:
            async for record in log_events(process):
                if record.get("event") == "submitting":
                    process.send_signal(signum)
                    break
            await process.wait()
        stats = sim.stats()
    assert process.returncode == 3
    with closing(sqlite3.connect(out / ".pixazo-batch.db")) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    assert "uncertain" not in states and "submitting" not in states
    assert states.get("submitted", 0) == stats["accepted"] >= 1
    assert stats["accepted"] < 8
