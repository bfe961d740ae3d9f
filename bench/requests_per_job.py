"""Benchmark 2: gateway requests per completed job on the realistic scenario, time-scaled.

The floor is 2 (one submit, one poll that sees COMPLETED); with webhooks a callback replaces that
poll. The baseline polls every 5 s (the documentation's typical workflow), time-scaled like the
simulator. Usage:
``python bench/requests_per_job.py [--jobs N] [--time-scale F]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from common import free_port, run_engine, run_naive, sim_process, table, write_manifest


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
    args = parser.parse_args()
    scale = args.time_scale
    # Rate limit off: this figure is about polling, benchmark 3 is about the limit.
    settings = {
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
        flags = ("--rps", "1000", "--max-in-flight", "10", "--poll-interval", str(poll))
        with sim_process("realistic", time_scale=scale, **settings) as sim:
            engine = run_engine(manifest, folder / "engine", sim.base_url, *flags)
            engine_stats = sim.stats()
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
        with sim_process("realistic", time_scale=scale, **settings) as sim:
            naive = run_naive(
                manifest,
                folder / "naive",
                sim.base_url,
                "--poll",
                str(poll),
                "--concurrency",
                "10",
            )
            naive_stats = sim.stats()
    table(
        f"Requests per job: {args.jobs} jobs, realistic scenario x{scale} "
        f"(engine exit {engine.returncode}, {engine_stats['accepted']} accepted)",
        [
            (
                "gateway requests per job",
                f"{per_job(engine_stats):.2f}",
                f"{per_job(naive_stats):.2f}",
                "<= 2.6",
            ),
            ("makespan s", f"{engine.wall_s:.1f}", f"{naive.wall_s:.1f}", "-"),
            (
                "gateway requests per job, with webhooks",
                f"{per_job(hooked_stats):.2f} (exit {hooked.returncode})",
                "-",
                "-",
            ),
            ("makespan s, with webhooks", f"{hooked.wall_s:.1f}", "-", "-"),
        ],
    )


if __name__ == "__main__":
    main()
