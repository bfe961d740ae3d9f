"""Benchmark 6: the first night. A fresh state file, a gateway whose jobs take about a second,
30 jobs, default flags: how long until every video is on disk, and how many requests it took.

Nothing is known of the gateway's speed yet, so this measures the scouting schedule (polls at
the 5 s floor, then doubling) against the old fixed prior of 14 to 35 poll intervals.
Usage: ``python bench/first_night.py [--jobs 30]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import quick_jobs, run_engine, sim_process, table, write_manifest


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    quick = quick_jobs(1.0, 0.2, dispatch_delay=[0.0, 0.2], media_bytes=65536)
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        with sim_process("fast", **quick) as sim:
            first = run_engine(manifest, folder / "out", sim.base_url)
            stats = sim.stats()
            more = write_manifest(folder / "more.jsonl", args.jobs, prefix="k")
            second = run_engine(more, folder / "out", sim.base_url)
            both = sim.stats()
    requests = stats["gateway_requests"] / max(1, stats["accepted"])
    later = (both["gateway_requests"] - stats["gateway_requests"]) / max(
        1, both["accepted"] - stats["accepted"]
    )
    table(
        f"First night: {args.jobs} jobs of about 1 s, fresh state file, default flags "
        f"(exits {first.returncode}, {second.returncode})",
        [
            ("seconds until every video is on disk", f"{first.wall_s:.1f}", "-", "<= 30"),
            ("gateway requests per job", f"{requests:.2f}", "-", "-"),
            ("the next night (model kept): seconds", f"{second.wall_s:.1f}", "-", "-"),
            ("the next night: requests per job", f"{later:.2f}", "-", "-"),
        ],
    )


if __name__ == "__main__":
    main()
