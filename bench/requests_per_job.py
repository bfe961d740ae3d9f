"""Benchmark 2: gateway requests per completed job on the realistic scenario, time-scaled.

The floor is 2 (one submit, one poll that sees COMPLETED); with webhooks a callback replaces that
poll. The baseline polls every 5 s (the documentation's typical workflow), time-scaled like the
simulator. The lower bound of each run's makespan, and the best any poll schedule blind to the
status's timestamps could do on the same jobs within 2.3 requests a job, come from the
simulator's journal of the jobs it accepted (``lowerbound.py``). With ``--nights N``, N - 1 more
manifests of new jobs follow the first on the same simulator and state file, as nightly runs
would: each starts from the speed the runs before it learned. Usage:
``python bench/requests_per_job.py [--jobs N] [--time-scale F] [--nights N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    SimProcess,
    free_port,
    run_engine,
    run_naive,
    sim_process,
    table,
    write_manifest,
)
from lowerbound import Schedule, best_schedule, makespan_bound, read_journal

#: jobs in flight at once, for the engine and the baseline alike (the gateway has 10 slots)
IN_FLIGHT = 10
#: the issue's budget: one submit and 1.3 polls a job
REQUESTS_TARGET = 2.3


def per_job(stats: dict[str, Any]) -> float:
    """Submits and polls per accepted job."""
    return float(stats["gateway_requests"]) / max(1, int(stats["accepted"]))


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60)
    # The gateway's completed_at has whole seconds; keep jobs long enough for that to matter
    # little (at 0.1, a 540p job takes 6 to 11 s).
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--nights", type=int, default=1)
    args = parser.parse_args()
    scale = args.time_scale
    # Rate limit off: this figure is about polling, benchmark 3 is about the limit.
    settings: dict[str, Any] = {
        "rate_limit": None,
        "failed_rate": 0.0,
        "error_rate": 0.0,
        "straggler_rate": 0.0,
        "media_bitrate": None,
        "media_bytes": 4096,
    }
    poll = 5.0 * scale
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        flags = ("--rps", "1000", "--max-in-flight", str(IN_FLIGHT), "--poll-interval", str(poll))
        engine_journal, naive_journal = folder / "engine.journal", folder / "naive.journal"
        with sim_process("realistic", time_scale=scale, journal=engine_journal, **settings) as sim:
            engine = run_engine(manifest, folder / "engine", sim.base_url, *flags)
            engine_end = time.time()
            engine_stats = sim.stats()
            engine_jobs = read_journal(engine_journal)  # the first night's alone
            nights = [engine_stats]
            later = [
                _next_night(sim, folder, night, args.jobs, flags, engine_journal, nights)
                for night in range(2, args.nights + 1)
            ]
        with sim_process("realistic", time_scale=scale, webhook_allow_http=True, **settings) as sim:
            hook = f"127.0.0.1:{free_port()}"
            hooked = run_engine(
                manifest,
                folder / "hooked",
                sim.base_url,
                *flags,
                "--webhook-url",
                f"http://{hook}/hook",
                "--webhook-listen",
                hook,
            )
            hooked_stats = sim.stats()
        with sim_process("realistic", time_scale=scale, journal=naive_journal, **settings) as sim:
            naive = run_naive(
                manifest,
                folder / "naive",
                sim.base_url,
                "--poll",
                str(poll),
                "--concurrency",
                str(IN_FLIGHT),
            )
            naive_end = time.time()
            naive_stats = sim.stats()
        naive_jobs = read_journal(naive_journal)
    # From the first job accepted to the end of the process (start-up left out, the last
    # download and the summary kept): what the bound can be compared with.
    engine_span = engine_end - engine_jobs[0].accepted
    naive_span = naive_end - naive_jobs[0].accepted
    engine_bound = makespan_bound(engine_jobs, IN_FLIGHT)
    naive_bound = makespan_bound(naive_jobs, IN_FLIGHT)
    budget, step = REQUESTS_TARGET - 1, poll / 5
    blind = best_schedule(engine_jobs, IN_FLIGHT, budget, step)
    on_tick = best_schedule(engine_jobs, IN_FLIGHT, budget, step, on_tick=True)
    table(
        f"Requests per job: {args.jobs} jobs, realistic scenario x{scale} "
        f"(engine exit {engine.returncode}, {engine_stats['accepted']} accepted)",
        [
            (
                "gateway requests per job",
                f"{per_job(engine_stats):.2f}",
                f"{per_job(naive_stats):.2f}",
                f"<= {REQUESTS_TARGET}",
            ),
            ("makespan s", f"{engine.wall_s:.1f}", f"{naive.wall_s:.1f}", "<= naive"),
            (
                "from first job accepted s",
                f"{engine_span:.1f}",
                f"{naive_span:.1f}",
                "-",
            ),
            (
                "lower bound s (each end seen as shown)",
                f"{engine_bound:.1f}",
                f"{naive_bound:.1f}",
                "-",
            ),
            (
                "from first job accepted / lower bound",
                f"{engine_span / engine_bound:.2f}",
                f"{naive_span / naive_bound:.2f}",
                "<= 1.15",
            ),
            (
                f"best schedule blind to timestamps, <= {REQUESTS_TARGET} requests: makespan s",
                _described(blind),
                "-",
                "-",
            ),
            (
                f"best schedule on each job's tick, <= {REQUESTS_TARGET} requests: makespan s",
                _described(on_tick),
                "-",
                "-",
            ),
            (
                "gateway requests per job, with webhooks",
                f"{per_job(hooked_stats):.2f} (exit {hooked.returncode})",
                "-",
                "-",
            ),
            ("makespan s, with webhooks", f"{hooked.wall_s:.1f}", "-", "-"),
            *later,
        ],
    )


def _next_night(  # noqa: PLR0917  (one call, the bench's own state)
    sim: SimProcess,
    folder: Path,
    night: int,
    jobs: int,
    flags: tuple[str, ...],
    journal: Path,
    nights: list[dict[str, Any]],
) -> tuple[str, str, str, str]:
    """Run one more night of new jobs into the same output folder and state file; its row."""
    manifest = write_manifest(folder / f"night{night}.jsonl", jobs, prefix=f"n{night}-")
    started = time.time()
    run = run_engine(manifest, folder / "engine", sim.base_url, *flags)
    ended = time.time()
    stats = sim.stats()
    before = nights[-1]
    nights.append(stats)
    accepted = int(stats["accepted"]) - int(before["accepted"])
    requests = (int(stats["gateway_requests"]) - int(before["gateway_requests"])) / max(1, accepted)
    tonight = [job for job in read_journal(journal) if job.accepted >= started]
    span = ended - tonight[0].accepted
    bound = makespan_bound(tonight, IN_FLIGHT)
    return (
        f"night {night} (speed learned kept): requests per job; from first accepted / bound",
        f"{requests:.2f}; {span:.1f} / {bound:.1f} s = {span / bound:.2f} (exit {run.returncode})",
        "-",
        f"<= {REQUESTS_TARGET}; <= 1.15",
    )


def _described(schedule: Schedule | None) -> str:
    """A schedule's makespan, requests a job and shape, for the table."""
    if schedule is None:
        return "-"
    every = "on its tick" if schedule.every == 0 else f"every {schedule.every:.1f} s"
    return (
        f"{schedule.makespan:.1f} ({schedule.polls_per_job + 1:.2f} requests: "
        f"from {schedule.first:.1f} s, then {every})"
    )


if __name__ == "__main__":
    main()
