"""Benchmark 3: makespan under a gateway rate limit the engine is not told about.

The simulator allows R requests per second per key (a sliding 1 s window); the engine is given
``--rps`` five times higher and must find the limit itself. The lower bound is the time the
limit needs for the floor of two requests per job (one submit, one poll). Usage:
``python bench/rate_limited.py [--jobs N] [--limit R]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from common import run_engine, run_naive, sim_process, table, write_manifest


def share_429(stats: dict[str, Any]) -> str:
    """429 answers as a share of all gateway requests."""
    return f"{100 * stats['rate_limited'] / max(1, stats['gateway_requests']):.1f}%"


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()
    limit = args.limit
    settings = {
        "rate_limit": limit,
        "rate_window": 1.0,
        "media_bytes": 4096,
        "media_size_jitter": 0.0,
    }
    bound = 2 * args.jobs / limit
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        with sim_process("fast", **settings) as sim:
            engine = run_engine(
                manifest,
                folder / "engine",
                sim.base_url,
                "--rps",
                str(5 * limit),
                "--max-in-flight",
                "100",
                "--poll-interval",
                "0.05",
            )
            engine_stats = sim.stats()
        with sim_process("fast", **settings) as sim:
            naive = run_naive(
                manifest,
                folder / "naive",
                sim.base_url,
                "--poll",
                "0.05",
                "--concurrency",
                "20",
            )
            naive_stats = sim.stats()
    table(
        f"Rate-limited makespan: {args.jobs} jobs, limit {limit} req/s, engine --rps {5 * limit} "
        f"(engine exit {engine.returncode}; bound {bound:.1f} s)",
        [
            (
                "makespan / bound",
                f"{engine.wall_s / bound:.2f}",
                f"{naive.wall_s / bound:.2f}",
                "<= 1.10",
            ),
            ("429 share of requests", share_429(engine_stats), share_429(naive_stats), "<= 3%"),
            (
                "requests inside Retry-After windows",
                str(engine_stats["requests_in_retry_window"]),
                str(naive_stats["requests_in_retry_window"]),
                "0",
            ),
            (
                "gateway requests per job",
                f"{engine_stats['gateway_requests'] / args.jobs:.2f}",
                f"{naive_stats['gateway_requests'] / args.jobs:.2f}",
                "-",
            ),
        ],
    )


if __name__ == "__main__":
    main()
