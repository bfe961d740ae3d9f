"""Benchmark 1: the engine's own cost per job on the near-zero-latency simulator.

Prints jobs per second, CPU seconds per job and peak RSS for pixazo-batch and the naive baseline,
the same CPU figure for jobs of about 5 s with a thousand waiting at once (what the poller's
planning costs; ``--waiting-jobs 0`` leaves it out), and peak RSS of ``validate`` on a large
manifest. Usage:
``python bench/overhead.py [--jobs N] [--waiting-jobs N] [--validate-lines N]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import (
    PYTHON,
    ChildCost,
    quick_jobs,
    run_child,
    run_engine,
    run_naive,
    sim_process,
    table,
    write_manifest,
)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--waiting-jobs", type=int, default=3000)
    parser.add_argument("--validate-lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        with sim_process("fast", media_bytes=4096, media_size_jitter=0.0) as sim:
            engine = run_engine(
                manifest,
                folder / "engine",
                sim.base_url,
                "--rps",
                "100000",
                "--concurrency",
                "32",
                "--max-in-flight",
                "1000",
                "--poll-interval",
                "0",
            )
            stats = sim.stats()
        with sim_process("fast", media_bytes=4096, media_size_jitter=0.0) as sim:
            naive = run_naive(
                manifest,
                folder / "naive",
                sim.base_url,
                "--poll",
                "0.001",
                "--concurrency",
                "32",
            )
        waiting = run_waiting(folder, args.waiting_jobs) if args.waiting_jobs > 0 else None
        big = write_manifest(folder / "big.jsonl", args.validate_lines)
        validate = run_child([PYTHON, "-m", "pixazo_batch", "validate", str(big)])
    jobs = args.jobs
    rows = [
        ("jobs per second", f"{jobs / engine.wall_s:.0f}", f"{jobs / naive.wall_s:.0f}", "-"),
        (
            "CPU ms per job",
            f"{1000 * engine.cpu_s / jobs:.2f}",
            f"{1000 * naive.cpu_s / jobs:.2f}",
            "<= 2x naive",
        ),
        ("peak RSS MB", f"{engine.peak_rss_mb:.0f}", f"{naive.peak_rss_mb:.0f}", "<= 150"),
    ]
    if waiting is not None:
        engine_waiting, naive_waiting = waiting
        rows += [
            (
                f"CPU ms per job, {args.waiting_jobs} jobs of ~5 s, 1,000 in flight",
                f"{1000 * engine_waiting.cpu_s / args.waiting_jobs:.2f}",
                f"{1000 * naive_waiting.cpu_s / args.waiting_jobs:.2f}",
                "<= 2x naive",
            ),
            (
                f"peak RSS MB, {args.waiting_jobs} jobs of ~5 s",
                f"{engine_waiting.peak_rss_mb:.0f}",
                f"{naive_waiting.peak_rss_mb:.0f}",
                "<= 150",
            ),
        ]
    rows += [
        (
            f"validate {args.validate_lines:,} lines: peak RSS MB",
            f"{validate.peak_rss_mb:.0f}",
            "-",
            "<= 150",
        ),
        (f"validate {args.validate_lines:,} lines: seconds", f"{validate.wall_s:.1f}", "-", "-"),
    ]
    table(
        f"Overhead: {jobs} jobs, fast scenario, 4 KiB media (engine exit {engine.returncode}, "
        f"{stats['accepted']} accepted, {stats['duplicate_charges']} duplicate charges)",
        rows,
    )


def run_waiting(folder: Path, jobs: int) -> tuple[ChildCost, ChildCost]:
    """The engine, then the baseline (polling every second), on jobs of about 5 s with up to
    1,000 in flight: each finished job teaches the poller something while many others wait."""
    manifest = write_manifest(folder / "waiting.jsonl", jobs)
    scenario = quick_jobs(5.0, 0.3, media_bytes=4096)
    with sim_process("fast", **scenario) as sim:
        engine = run_engine(manifest, folder / "engine-waiting", sim.base_url, "--rps", "100000",
                            "--concurrency", "32", "--max-in-flight", "1000")  # fmt: skip
    with sim_process("fast", **scenario) as sim:
        naive = run_naive(manifest, folder / "naive-waiting", sim.base_url, "--poll", "1",
                          "--concurrency", "1000")  # fmt: skip
    return engine, naive


if __name__ == "__main__":
    main()
