"""Benchmark 10: the engine on a disk whose every fsync is slow, against the same disk as is.

Each fsync and fdatasync of the engine is held ``--fsync-ms`` longer by strace's fault injection
(a laptop's disk, a network volume), on the near-zero-latency simulator, so what is measured is
how much the state file's durability stalls the run. Needs ``strace``. Usage:
``python bench/slow_disk.py [--jobs N] [--fsync-ms MS]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import PYTHON, engine_env, run_child, sim_process, table, write_manifest

FLAGS = ("--rps", "100000", "--concurrency", "32", "--max-in-flight", "1000")


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--fsync-ms", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("bench/slow_disk.py needs strace (apt install strace)")
    delay_us = round(args.fsync_ms * 1000)
    slow = ["strace", "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null"]
    slow += ["-e", "trace=fsync,fdatasync", "-e", f"inject=fsync,fdatasync:delay_exit={delay_us}"]
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        costs = []
        for name, prefix in (("as is", []), ("slow", slow)):
            with sim_process("fast", media_bytes=4096, media_size_jitter=0.0) as sim:
                command = [*prefix, PYTHON, "-m", "pixazo_batch", "--log-level", "warning"]
                command += ["run", str(manifest), "--out", str(folder / name)]
                command += ["--base-url", sim.base_url, "--poll-interval", "0", *FLAGS]
                costs.append(run_child(command, env=engine_env()))
    plain, stalled = costs
    added_ms = 1000 * (stalled.wall_s - plain.wall_s) / args.jobs
    table(
        f"Slow disk: {args.jobs} jobs, fast scenario, every fsync {args.fsync_ms:g} ms longer "
        f"(exits {plain.returncode}, {stalled.returncode})",
        [
            ("wall s, disk as is", f"{plain.wall_s:.1f}", "-", "-"),
            ("wall s, slow fsync", f"{stalled.wall_s:.1f}", "-", "-"),
            ("added per job, ms", f"{added_ms:.1f}", "-", "-"),
        ],
    )


if __name__ == "__main__":
    main()
