"""The promises under attack: kill -9 at random instants, faults, signals, a full disk.

``make test`` runs a quick version; ``make torture`` sets ``PIXAZO_TORTURE=full`` for more kill
instants and bigger batches, and ``PIXAZO_TORTURE_SEED=N`` draws other kill instants.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixazo_batch.config import Settings
from pixazo_batch.engine import run_batch
from pixazo_batch.models import JobState
from pixazo_batch.sim import Simulator, scenario_named
from tests.conftest import (
    TEST_KEY,
    LogTap,
    fast,
    job_line,
    simulator,
    state_sql,
    write_manifest,
)
from tests.test_cli import PYTHON, cli_env, log_events, run_args
from tests.test_webhooks import free_port

pytestmark = pytest.mark.anyio

FULL = os.environ.get("PIXAZO_TORTURE") == "full"
KILLS = 25 if FULL else 6
JOBS = 80 if FULL else 20
#: the kill instants drawn (the same in every run unless asked otherwise)
SEED = int(os.environ.get("PIXAZO_TORTURE_SEED", "20261125"))
#: log events that mark each phase; a kill right after "submitting" lands between the POST
#: leaving and its answer being recorded
KILL_POINTS = ("submitting", "submitted", "remote_finished", "download_retry", "downloaded")


def hostile() -> Any:
    scenario = scenario_named("hostile", time_scale=0.3)
    return dataclasses.replace(scenario, keys=frozenset({TEST_KEY}), lost_answer_delay=0.5)


def served_sha256(sim: Simulator, request_id: str) -> str:
    job = sim.state.book.jobs[request_id]
    media = sim.state.media_file(job)
    return hashlib.sha256(b"".join(media.chunks(0, media.size, 1 << 20))).hexdigest()


def check_invariants(sim: Simulator, out: Path, settings: Settings | None = None) -> dict[str, Any]:
    """What must hold after any kill: a sound state, files only where verified. The state is
    where ``settings`` put it, else the file in ``out``."""
    opened: contextlib.AbstractContextManager[Any]
    if settings is None:
        opened = closing(sqlite3.connect(out / ".pixazo-batch.db"))
    else:
        opened = state_sql(settings)
    with opened as db:
        if settings is None or settings.state_url is None:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT id, state, request_id, output, sha256 FROM jobs").fetchall()
        attempts = db.execute(
            "SELECT j.request_hash, a.outcome FROM attempts a JOIN jobs j ON j.id = a.job_id"
        ).fetchall()
    valid = {state.value for state in JobState}
    for job_id, state, request_id, output, sha256 in rows:
        assert state in valid, (job_id, state)
        final = out / output
        if state == "downloaded":
            data = final.read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha256 == served_sha256(sim, request_id)
        elif final.exists():
            # killed between the rename and its record: the file must still be the whole video
            assert hashlib.sha256(final.read_bytes()).hexdigest() == served_sha256(sim, request_id)
    # A request may be created twice only after a remote ERROR (refunded) was resubmitted.
    errored: dict[str, int] = {}
    for request_hash, outcome in attempts:
        errored[request_hash] = errored.get(request_hash, 0) + (outcome == "errored")
    for request_hash, accepted in sim.stats()["accepted_by_hash"].items():
        assert accepted <= 1 + errored.get(request_hash, 0), request_hash
    return {"states": [r[1] for r in rows]}


@pytest.mark.parametrize("webhooks", [False, True], ids=["polling", "webhooks"])
async def test_kill_nine_at_random_instants_never_pays_twice_nor_corrupts(
    tmp_path: Path, webhooks: bool
) -> None:
    rng = random.Random(SEED)
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(JOBS)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    killed = 0
    scenario = dataclasses.replace(hostile(), webhook_allow_http=True)
    extra: tuple[str, ...] = ()
    if webhooks:
        # Callbacks resolve lost answers; a killed run misses some, and the next run resumes.
        port = free_port()
        extra = ("--webhook-url", f"http://127.0.0.1:{port}/hook",
                 "--webhook-listen", f"127.0.0.1:{port}", "--uncertain-wait", "5")  # fmt: skip

    async with simulator(scenario) as sim:
        for _ in range(KILLS):
            # Half the kills land on a phase's own event, half on the n-th event of any kind.
            point = rng.choice(KILL_POINTS) if rng.random() < 0.5 else None
            nth = rng.randint(1, 3) if point else rng.randint(1, 8)
            command = run_args(sim, manifest, out, *extra)
            async with await anyio.open_process(command, env=env) as process:
                seen = 0
                async for record in log_events(process):
                    seen += point is None or record.get("event") == point
                    if seen == nth:
                        process.kill()
                        break
                await process.wait()
            killed += process.returncode == -signal.SIGKILL
            check_invariants(sim, out)
        # Unkilled runs until everything is at rest; a download may need more than one run's
        # tries against this many faults, and that is what resuming is for.
        for _ in range(4):
            final = await anyio.run_process(
                run_args(sim, manifest, out, *extra), env=env, check=False
            )
            result = check_invariants(sim, out)
            if not set(result["states"]) & {"pending", "submitted", "completed", "errored"}:
                break
    assert killed >= KILLS // 2, "most runs were really killed mid-way"
    assert final.returncode in (0, 1, 3, 5)
    # Every job came to rest: nothing left in flight but jobs held as uncertain.
    assert set(result["states"]) <= {"downloaded", "failed", "uncertain"}
    assert not list(out.rglob("*.part"))


async def test_a_second_signal_exits_at_once_and_leaves_a_sound_state_file(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(4)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with (
        simulator(fast(response_delay=30.0)) as sim,
        await anyio.open_process(run_args(sim, manifest, out), env=env) as process,
    ):
        async for record in log_events(process):
            if record.get("event") == "submitting":
                process.send_signal(signal.SIGTERM)
            if record.get("event") == "stopping":
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                break
        await process.wait()
        waited = time.monotonic() - started
    assert process.returncode == 3
    assert waited < 10, "the second signal did not wait for the 30 s POST"
    with closing(sqlite3.connect(out / ".pixazo-batch.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        states = {r[0] for r in db.execute("SELECT state FROM jobs")}
    assert states <= {"pending", "submitting"}


async def test_a_key_revoked_part_way_stops_the_run_and_a_new_key_finishes_it(
    tmp_path: Path, make_settings: Any, log_tap: LogTap
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(6)])
    async with simulator(fast(processing_median={"540p": 0.2}, processing_sigma=0.0)) as sim:
        settings = make_settings(sim, manifest, concurrency=1)
        original = sim.state.scenario

        def revoke() -> None:
            sim.state.scenario = dataclasses.replace(original, keys=frozenset())

        log_tap.on("submitted", 2, revoke)
        revoked = await run_batch(settings)
        sim.state.scenario = original
        resumed = await run_batch(settings)
        stats = sim.stats()
    assert revoked.exit_code == 4
    assert revoked.counts["submitted"] + revoked.counts["completed"] >= 2
    assert resumed.exit_code == 0
    assert resumed.counts["downloaded"] == 6
    assert stats["duplicate_charges"] == 0


async def test_media_5xx_bursts_and_slow_bodies_still_deliver_whole_files(
    tmp_path: Path, make_settings: Any
) -> None:
    scenario = fast(
        media_error_rate=0.4,
        fault_burst=2,
        media_bytes=300_000,
        media_throughput=3_000_000.0,
        seed=9,
    )
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(4)])
    async with simulator(scenario) as sim:
        settings = make_settings(sim, manifest, download_tries=10)
        summary = await run_batch(settings)
        stats = sim.stats()
        check_invariants(sim, settings.out_dir, settings)
    assert summary.exit_code == 0
    assert stats["faults"]["media_error"] >= 1


async def run_on_a_full_disk(
    args: list[str], env: dict[str, str], *, kib: int
) -> subprocess.CompletedProcess[bytes]:
    """Run a command whose every write past ``kib`` KiB in one file fails with EFBIG, as on a
    full disk (``ulimit -f``, with the SIGXFSZ that would kill it ignored)."""
    command = " ".join(f"'{part}'" for part in args)
    return await anyio.run_process(
        ["bash", "-c", f"ulimit -f {kib}; trap '' XFSZ; exec {command}"], env=env, check=False
    )


async def test_a_full_disk_leaves_the_job_downloadable_and_the_next_run_finishes(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(3)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(media_bytes=400_000, media_size_jitter=0.0)) as sim:
        limited = await run_on_a_full_disk(run_args(sim, manifest, out), env, kib=300)
        check_invariants(sim, out)
        finished = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
        check_invariants(sim, out)
        stats = sim.stats()
    assert limited.returncode == 3, limited.stderr.decode()[-2000:]
    assert b"cannot write" in limited.stderr
    assert finished.returncode == 0
    assert len(list(out.glob("*.mp4"))) == 3
    assert stats["accepted"] == 3


async def test_a_full_disk_under_the_state_file_stops_the_run_cleanly_and_it_resumes(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [job_line(i) for i in range(20)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(media_bytes=8192)) as sim:
        # 200 KiB holds a new state file but not the write-ahead log of 20 jobs' transitions.
        limited = await run_on_a_full_disk(run_args(sim, manifest, out), env, kib=200)
        check_invariants(sim, out)
        errors = limited.stderr.decode()
        events = [json.loads(line) for line in errors.splitlines()]
        # An acceptance the disk refused may still be recorded at the run's end, once the
        # transaction that failed is rolled back and its room given back.
        late = {event["job_id"] for event in events if event["event"] == "accepted_recorded_late"}
        unrecorded = {
            event["job_id"]: event["request_id"]
            for event in events
            if event["event"] == "accepted_not_recorded" and event["job_id"] not in late
        }
        resumed = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
        held = check_invariants(sim, out)["states"]
        # What a person does with exit 5: the request ids the first run logged settle the jobs.
        for job_id, request_id in unrecorded.items():
            resolve = [PYTHON, "-m", "pixazo_batch", "resolve", job_id, "--out", str(out)]
            resolve += ["--base-url", sim.base_url]
            await anyio.run_process([*resolve, "--request-id", request_id], env=env)
        finished = await anyio.run_process(run_args(sim, manifest, out), env=env, check=False)
        final = check_invariants(sim, out)["states"]
        stats = sim.stats()
    assert limited.returncode == 3, errors[-2000:]
    assert "state_write_failed" in errors and "Traceback" not in errors
    assert all(request_id in sim.state.book.jobs for request_id in unrecorded.values())
    # A job whose acceptance could not be recorded is held uncertain (exit 5), never sent again.
    assert resumed.returncode in ((5,) if unrecorded else (0, 3)), resumed.stderr[-2000:]
    assert held.count("uncertain") == len(unrecorded)
    assert set(held) <= {"downloaded", "uncertain"}
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert final == ["downloaded"] * 20
    assert stats["accepted"] == 20 and stats["duplicate_charges"] == 0


def test_no_command_line_option_can_carry_the_key() -> None:
    from pixazo_batch.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                assert "key" not in flag or name == "simulate", (name, flag)
