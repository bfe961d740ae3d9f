"""Benchmark 9: a fleet. One worker against three on one PostgreSQL state database (a throwaway
server, as the tests start it), on two scenarios:

- rate-limited: the gateway allows R requests a second per key, and the workers are given the
  key's rate (``--rps R``, which a fleet divides among its living workers): three workers must
  not beat one (the key's rate is the bound) nor lose to it (target: within 1.05x);
- download-bound: every media connection is capped, so a worker's ``--downloads`` bound its
  throughput; three workers must reach at least twice the throughput of one.

Each comparison is run ``--pairs`` times (one worker, then three, on fresh databases): this
machine's run-to-run spread is as large as the margins, so the median is the figure and the
range is printed beside it. Usage:
``python bench/fleet.py [--jobs 120] [--limit 10] [--videos 24] [--pairs 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import PYTHON, ROOT, engine_env, quick_jobs, sim_process, table, write_manifest

sys.path.insert(0, str(ROOT))
from tests.pgserver import fresh_database, postgres_server


def fleet(workers: int, manifest: Path, out: Path, url: str, base_url: str, *flags: str) -> float:
    """Seconds from starting ``workers`` worker processes until all have finished the
    manifest."""
    command = [PYTHON, "-m", "pixazo_batch", "--log-level", "warning", "run", str(manifest),
               "--out", str(out), "--base-url", base_url, "--state", url, *flags]  # fmt: skip
    start = time.perf_counter()
    running = [
        subprocess.Popen(command, env=engine_env(), stdout=subprocess.DEVNULL)
        for _ in range(workers)
    ]
    codes = [process.wait() for process in running]
    if any(code not in (0, 3) for code in codes):
        raise SystemExit(f"a worker failed: exits {codes}")
    return time.perf_counter() - start


def working_span(url: str) -> float:
    """Seconds from the first job accepted by the gateway to the last video on disk, as the
    database recorded them (the processes' start-up left out)."""
    import psycopg

    with psycopg.connect(url) as db:
        found = db.execute("SELECT min(submitted_at), max(updated_at) FROM jobs").fetchone()
    assert found is not None  # an aggregate always has its one row
    first, last = found
    return float(last - first)


def compare(server: str, scenario: dict[str, Any], jobs: int, *flags: str) -> list[float]:
    """Makespan of one worker, then of three, each on a fresh database and simulator, then
    their working spans."""
    times, spans = [], []
    for workers in (1, 3):
        with (
            tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch,
            sim_process("fast", **scenario) as sim,
        ):
            folder = Path(scratch)
            manifest = write_manifest(folder / "jobs.jsonl", jobs)
            url = fresh_database(server)
            times.append(fleet(workers, manifest, folder / "out", url, sim.base_url, *flags))
            spans.append(working_span(url))
    return [*times, *spans]


def spread(values: list[float]) -> str:
    """The median, and the range when there is more than one value."""
    median = f"{statistics.median(values):.2f}"
    return median if len(values) == 1 else f"{median} ({min(values):.2f} to {max(values):.2f})"


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    quick = quick_jobs(0.5, 0.1)
    limited = {**quick, "rate_limit": args.limit, "rate_window": 1.0, "media_bytes": 4096}
    capped = {**quick, "media_bytes": 4_000_000, "media_throughput": 1_000_000}
    rate_runs, download_runs = [], []
    with postgres_server() as server:
        for _ in range(args.pairs):
            rate_runs.append(
                compare(server, limited, args.jobs, "--rps", str(args.limit), "--poll-interval",
                        "0.5")
            )  # fmt: skip
            download_runs.append(compare(server, capped, args.videos, "--downloads", "2"))
    one, three, one_span, three_span = (statistics.median(run[i] for run in rate_runs)
                                        for i in range(4))  # fmt: skip
    one_dl, three_dl = (statistics.median(run[i] for run in download_runs) for i in range(2))
    rate_ratios = [run[1] / run[0] for run in rate_runs]
    download_ratios = [run[0] / run[1] for run in download_runs]
    megabytes = args.videos * 4
    table(
        f"A fleet on PostgreSQL: 1 worker against 3 ({args.jobs} jobs at {args.limit} requests/s "
        f"per key; {args.videos} videos of 4 MB at 1 MB/s per connection, --downloads 2; "
        f"medians of {args.pairs} pairs)",
        [
            ("rate-limited: makespan, s (3 workers | 1)", f"{three:.1f}", f"{one:.1f}",
             "3 workers within 1.05x of 1"),
            ("rate-limited: ratio 3 workers / 1", spread(rate_ratios), "-", "<= 1.05"),
            ("rate-limited: first job sent to last video, s (3 workers | 1)", f"{three_span:.1f}",
             f"{one_span:.1f}", "-"),
            ("download-bound: MB/s (3 workers | 1)", f"{megabytes / three_dl:.1f}",
             f"{megabytes / one_dl:.1f}", ">= 2x"),
            ("download-bound: ratio 3 workers / 1", spread(download_ratios), "-", ">= 2"),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
