"""A fleet: several ``run`` processes share one manifest through a real PostgreSQL server.

Workers are real child processes on the command line, against the simulator; one is killed
with SIGKILL at a seeded instant, and the others (then a fresh one) finish its work without
paying twice.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from pixazo_batch.sim import Simulator
from tests.conftest import TEST_KEY, fast, job_line, simulator, write_manifest
from tests.test_buckets import bucket_env, keys, served_sha256, unfinished_uploads
from tests.test_cli import cli_env, log_events, run_args
from tests.test_unattended import cli
from tests.test_webhooks import free_port

pytestmark = pytest.mark.anyio

WORKER_TIMEOUT = "2.5"


def fleet_command(sim: Simulator, manifest: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [*run_args(sim, manifest, out, "--state", url, "--worker-timeout", WORKER_TIMEOUT),
            *extra]  # fmt: skip


def jobs_in(url: str) -> dict[str, tuple[str, str]]:
    """Each job's state and request hash, read from the database."""
    import psycopg

    with psycopg.connect(url) as db:
        rows = db.execute("SELECT id, state, request_hash FROM jobs").fetchall()
    return {job_id: (state, request_hash) for job_id, state, request_hash in rows}


class Worker:
    """One worker process and what its logs said."""

    def __init__(self, process: Process, working: anyio.Event) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        #: set once the worker has sent a job
        self.working = working

    async def follow(self, kill_at: tuple[str, int] | None = None) -> None:
        """Read the worker's logs to its end; SIGKILL it at the n-th ``event`` if asked."""
        seen = 0
        async for record in log_events(self.process):
            self.events.append(record)
            if record.get("event") == "submitting":
                self.working.set()
            if kill_at is not None and record.get("event") == kill_at[0]:
                seen += 1
                if seen == kill_at[1]:
                    self.process.kill()
        await self.process.wait()

    def fenced(self) -> bool:
        """Whether the fleet took this worker for dead and it stopped."""
        return any("took this worker for dead" in str(e.get("error")) for e in self.events)

    def sent(self) -> set[str]:
        """Jobs whose POST this worker wrote ahead (durably ``submitting``)."""
        return {e["job_id"] for e in self.events if e.get("event") == "submitting"}


@pytest.mark.parametrize("seed", [11, 23, 37])
async def test_three_workers_and_one_killed_pay_each_job_once_and_finish_everything(
    tmp_path: Path, pg_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    victim = 0  # it starts first, so it holds work of every kind when the kill comes
    kill_at = (rng.choice(["submitting", "submitted", "downloaded"]), rng.randint(1, 3))
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(30)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(processing_median={"540p": 0.4}, processing_sigma=0.3)
    async with simulator(scenario) as sim:
        command = fleet_command(sim, manifest, out, pg_url)
        workers: list[Worker] = []
        async with anyio.create_task_group() as group:
            for index in range(3):
                worker = Worker(await anyio.open_process(command, env=env), anyio.Event())
                workers.append(worker)
                group.start_soon(worker.follow, kill_at if index == victim else None)
                await workers[victim].working.wait()
        fresh = await anyio.run_process(command, env=env, check=False)
        stats = sim.stats()
        served = {job.request_hash: served_sha256(sim, request_id)
                  for request_id, job in sim.state.book.jobs.items()}  # fmt: skip
    codes = [w.process.returncode for w in workers]
    assert codes[victim] == -signal.SIGKILL, f"the kill landed ({kill_at})"
    # A survivor whose loop stalled past the (short) timeout on a loaded machine is taken for
    # dead too: it must then stop at its next transition (exit 3, or 5 when the victim left
    # jobs uncertain), its work going on elsewhere.
    dead = {victim} | {i for i, w in enumerate(workers) if w.fenced()}
    assert all(code in (0, 5) for i, code in enumerate(codes) if i not in dead), codes
    assert all(codes[i] in (3, 5) for i in dead - {victim}), codes
    assert fresh.returncode in (0, 5), fresh.stderr.decode()[-2000:]
    assert stats["duplicate_charges"] == 0
    jobs = jobs_in(pg_url)
    uncertain = {job_id for job_id, (state, _) in jobs.items() if state == "uncertain"}
    assert {state for state, _ in jobs.values()} <= {"downloaded", "uncertain"}
    for job_id, (state, request_hash) in jobs.items():  # one writer a file: none spliced
        if state == "downloaded":
            video = (out / f"{job_id}.mp4").read_bytes()
            assert hashlib.sha256(video).hexdigest() == served[request_hash], job_id
    # A job is uncertain only if a dead worker had made its POST durable: the gateway got it,
    # or the end fell between the write-ahead and the bytes, which each of its two submitters
    # may be crossing at any instant.
    never_sent = {j for j in uncertain if jobs[j][1] not in stats["arrived_by_hash"]}
    sent_by_dead = set().union(*(workers[i].sent() for i in dead))
    assert uncertain - never_sent <= sent_by_dead, "uncertain: POSTs that left"
    assert len(never_sent) <= 2 * len(dead), never_sent
    print(f"seed={seed} kill_at={kill_at} uncertain={len(uncertain)} never_sent={len(never_sent)}")


async def test_status_shows_the_living_workers_and_a_worker_that_differs_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(4)])
    out = tmp_path / "out"
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(processing_median={"540p": 30.0}, processing_sigma=0.0)) as sim:
        command = fleet_command(sim, manifest, out, pg_url)
        worker = Worker(await anyio.open_process(command, env=env), anyio.Event())
        async with anyio.create_task_group() as group:
            group.start_soon(worker.follow)
            await worker.working.wait()
            status = await cli("status", "--out", str(out), "--state", pg_url, "--json", env=env)
            other_key = await anyio.run_process(
                command, env=cli_env(PIXAZO_API_KEY="another-key"), check=False
            )
            elsewhere = [*command, "--base-url", "http://127.0.0.1:9"]  # the last one counts
            other_gateway = await anyio.run_process(elsewhere, env=env, check=False)
            worker.process.terminate()
        stats = sim.stats()
    (living,) = json.loads(status.stdout)["workers"]
    assert living["in_flight"] >= 1 and living["silent_s"] < float(WORKER_TIMEOUT)
    assert other_key.returncode == 2 and b"another API key" in other_key.stderr
    assert other_gateway.returncode == 2, other_gateway.stderr.decode()[-500:]
    assert b"another gateway (http://127.0.0.1:" in other_gateway.stderr
    assert stats["accepted"] == 4, "only the first worker sent anything"


async def test_a_pause_one_worker_is_told_holds_every_worker(tmp_path: Path, pg_url: str) -> None:
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(30)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(rate_limit=6, rate_window=1.0, retry_after="seconds")
    async with simulator(scenario) as sim:
        command = fleet_command(sim, manifest, tmp_path / "out", pg_url, "--rps", "20")
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(lambda: anyio.run_process(command, env=env, check=True))
        stats = sim.stats()
    assert stats["rate_limited"] > 0, "the limit was met"
    assert stats["requests_in_retry_window"] == 0
    assert stats["duplicate_charges"] == 0
    assert {state for state, _ in jobs_in(pg_url).values()} == {"downloaded"}


async def test_workers_starting_together_keep_under_the_keys_rate(
    tmp_path: Path, pg_url: str
) -> None:
    # Each worker starting together first sees the fleet as it is at its own start (the first
    # of them alone with the whole key); their parts must still add up to --rps.
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(40)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast(rate_limit=10, rate_window=1.0)) as sim:
        command = fleet_command(sim, manifest, tmp_path / "out", pg_url, "--rps", "9")
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(lambda: anyio.run_process(command, env=env, check=True))
        stats = sim.stats()
    assert stats["rate_limited"] == 0, "the fleet went past the key's rate"
    assert {state for state, _ in jobs_in(pg_url).values()} == {"downloaded"}


async def test_the_budget_holds_to_the_cent_across_workers(tmp_path: Path, pg_url: str) -> None:
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(12)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    async with simulator(fast()) as sim:
        command = fleet_command(sim, manifest, tmp_path / "out", pg_url, "--max-spend", "1.00")
        codes: list[int] = []

        async def worker() -> None:
            done = await anyio.run_process(command, env=env, check=False)
            codes.append(done.returncode)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(worker)
        stats = sim.stats()
    assert stats["accepted"] == 5, "five jobs of $0.20 are exactly $1.00"
    assert stats["spent_cents"] == 100
    states = [state for state, _ in jobs_in(pg_url).values()]
    assert states.count("downloaded") == 5 and states.count("pending") == 7
    assert set(codes) <= {2, 3}, codes


async def test_max_in_flight_holds_for_the_whole_fleet(tmp_path: Path, pg_url: str) -> None:
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(12)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(processing_median={"540p": 1.0}, processing_sigma=0.0)
    async with simulator(scenario) as sim:
        command = fleet_command(sim, manifest, tmp_path / "out", pg_url, "--max-in-flight", "3")
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(lambda: anyio.run_process(command, env=env, check=True))
        spans = [(job.created, job.finished) for job in sim.state.book.jobs.values()]
    # Each job is in flight for the engine at least from its creation to its end at the
    # gateway, so at no instant may more than 3 of those spans overlap (9 if each worker kept
    # its own cap).
    most = max(sum(start <= at < end for start, end in spans) for at, _ in spans)
    assert len(spans) == 12 and most <= 3, most


async def test_workers_writing_into_one_bucket_put_each_video_there_once_and_whole(
    tmp_path: Path, pg_url: str, bucket: Any, moto_endpoint: str
) -> None:
    # Two workers on one machine share the bucket prefix and the local spool: each video is
    # claimed by one of them, fetched once, and lands whole under its own key.
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(16)])
    url = f"s3://{bucket.bucket_name}/fleet"
    env = bucket_env(tmp_path, moto_endpoint)
    scenario = fast(media_bytes=200_000, processing_median={"540p": 0.3}, processing_sigma=0.3)
    async with simulator(scenario) as sim:
        command = fleet_command(sim, manifest, tmp_path / "unused", pg_url, "--out", url)
        workers = [Worker(await anyio.open_process(command, env=env), anyio.Event())
                   for _ in range(2)]  # fmt: skip
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.follow)
        stats = sim.stats()
        served = {job.request_hash: served_sha256(sim, request_id)
                  for request_id, job in sim.state.book.jobs.items()}  # fmt: skip
        sizes = sum(sim.state.media_file(job).size for job in sim.state.book.jobs.values())
    assert [w.process.returncode for w in workers] == [0, 0]
    assert stats["accepted"] == 16 and stats["duplicate_charges"] == 0
    assert stats["media_bytes"] == sizes, "each video fetched once, by one worker"
    saved = [e["job_id"] for w in workers for e in w.events if e.get("event") == "downloaded"]
    assert sorted(saved) == sorted(jobs_in(pg_url)), "each video saved by one worker"
    videos = [key for key in keys(bucket, "fleet/") if key.endswith(".mp4")]
    assert videos == [f"fleet/job-{i:03d}.mp4" for i in range(16)]
    assert unfinished_uploads(bucket) == []
    for job_id, (state, request_hash) in jobs_in(pg_url).items():
        assert state == "downloaded"
        body = bucket.get_object(Bucket=bucket.bucket_name, Key=f"fleet/{job_id}.mp4")["Body"]
        assert hashlib.sha256(body.read()).hexdigest() == served[request_hash], job_id
    assert not list((tmp_path / "state").rglob("*.mp4*")), "the shared spool is left empty"


async def test_workers_called_back_each_on_its_own_url_settle_lost_answers_and_pay_once(
    tmp_path: Path, pg_url: str
) -> None:
    # Each worker listens for the callbacks of the jobs it sends (its own --webhook-url): a
    # POST whose answer was lost is settled by the request its callback names, the others'
    # callbacks bring their one status request forward, and nothing is paid twice.
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(16)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(
        webhook_allow_http=True, webhook_duplicate_rate=0.0, processing_median={"540p": 0.3},
        submit_lost_answer_rate=0.4, lost_answer_delay=0.05,
    )  # fmt: skip
    async with simulator(scenario) as sim:
        workers = []
        for _ in range(2):
            port = free_port()
            command = fleet_command(
                sim, manifest, tmp_path / "out", pg_url, "--poll-interval", "1",
                "--webhook-url", f"http://127.0.0.1:{port}/hooks",
                "--webhook-listen", f"127.0.0.1:{port}",
            )  # fmt: skip
            workers.append(Worker(await anyio.open_process(command, env=env), anyio.Event()))
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.follow)
        stats = sim.stats()

    def logged(event: str) -> list[str]:
        return [e["job_id"] for w in workers for e in w.events if e.get("event") == event]

    assert [w.process.returncode for w in workers] == [0, 0], logged("run_stopped")
    assert stats["accepted"] == 16 and stats["duplicate_charges"] == 0
    assert {state for state, _ in jobs_in(pg_url).values()} == {"downloaded"}
    for worker in workers:  # (one started late on a busy machine may have sent none)
        called_back = {e["job_id"] for e in worker.events if e.get("event") == "webhook"}
        assert worker.sent() <= called_back, "each job's callbacks came to its sender"
    lost = logged("submit_uncertain")
    assert lost and sorted(logged("uncertain_resolved")) == sorted(lost)
    # One status request a job, and one more to confirm each request a callback named (the
    # probes that end a pause after a lost answer ask for no job).
    polls = stats["polls_by_request"]
    assert sum(polls.values()) <= 16 + len(lost), polls


async def test_jobs_adopted_from_a_dead_worker_with_webhooks_are_polled_on_the_usual_plan(
    tmp_path: Path, pg_url: str
) -> None:
    # Their callbacks go to the dead worker's URL: on the fallback plan (4 times slower) the
    # survivor would first ask for them 20 s after they were sent, where they took 1 s.
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in range(2)])
    env = cli_env(PIXAZO_API_KEY=TEST_KEY)
    scenario = fast(webhook_allow_http=True, processing_median={"540p": 1.0}, processing_sigma=0.0)

    def command(sim: Simulator) -> list[str]:
        port = free_port()
        return fleet_command(
            sim, manifest, tmp_path / "out", pg_url, "--poll-interval", "5",
            "--webhook-url", f"http://127.0.0.1:{port}/hooks",
            "--webhook-listen", f"127.0.0.1:{port}",
        )  # fmt: skip

    async with simulator(scenario) as sim:
        dead = Worker(await anyio.open_process(command(sim), env=env), anyio.Event())
        await dead.follow(kill_at=("submitted", 2))
        with anyio.fail_after(15):
            survivor = await anyio.run_process(command(sim), env=env, check=False)
        stats = sim.stats()
    assert dead.process.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, survivor.stderr.decode()[-2000:]
    assert stats["accepted"] == 2
    assert {state for state, _ in jobs_in(pg_url).values()} == {"downloaded"}
