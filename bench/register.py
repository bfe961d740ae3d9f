"""Benchmark 11: registering a manifest of new lines inside a run (the issue's "manifest
registration of 1,000,000 lines in under 15 s within 150 MB").

A run over N new lines with ``--max-spend 0``: every line is read, every job recorded and
offered, nothing sent. The figure is the run's own ``manifest_read`` seconds; the memory is
sampled from ``/proc`` for the run and every process under it (its worker processes included),
every 0.1 s. The same run is repeated on one core (``taskset -c 0``: no worker processes) when
``taskset`` is there. Usage: ``python bench/register.py [--lines 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import PYTHON, engine_env, sim_process, table, write_manifest


@dataclass
class Registered:
    """What one run's registration took."""

    seconds: float = float("nan")
    workers: int = -1
    jobs: int = 0
    wall_s: float = 0.0
    largest_mb: float = 0.0
    #: proportional set size: a page shared by several processes counted once
    together_mb: float = 0.0


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.lines)
        with sim_process("fast") as sim:
            every = _register(manifest, folder / "all", sim.base_url, [])
            one = (
                _register(manifest, folder / "one", sim.base_url, ["taskset", "-c", "0"])
                if shutil.which("taskset")
                else None
            )
    rows = [
        ("worker processes", str(every.workers), str(one.workers) if one else "-", "-"),
        ("manifest_read, s", f"{every.seconds:.1f}", f"{one.seconds:.1f}" if one else "-",
         f"<= {15 * args.lines / 1_000_000:.1f} (15 s a million)"),
        ("jobs recorded", f"{every.jobs:,}", f"{one.jobs:,}" if one else "-", f"{args.lines:,}"),
        ("the whole run, s", f"{every.wall_s:.1f}", f"{one.wall_s:.1f}" if one else "-", "-"),
        ("largest process, peak RSS MB", f"{every.largest_mb:.0f}",
         f"{one.largest_mb:.0f}" if one else "-", "<= 150"),
        ("all its processes together, peak PSS MB", f"{every.together_mb:.0f}",
         f"{one.together_mb:.0f}" if one else "-", "-"),
    ]  # fmt: skip
    table(f"Registering {args.lines:,} new lines in a run (every core | one core)", rows)


def _register(manifest: Path, out: Path, base_url: str, prefix: list[str]) -> Registered:
    """One run over ``manifest`` that may spend nothing, measured."""
    log = out.with_suffix(".log")
    command = [*prefix, PYTHON, "-m", "pixazo_batch", "--log-level", "info", "--log-format",
               "json", "run", str(manifest), "--out", str(out), "--base-url", base_url,
               "--max-spend", "0"]  # fmt: skip
    found = Registered()
    started = time.perf_counter()
    with open(log, "wb") as errors:
        process = subprocess.Popen(
            command, env=engine_env(), stdout=subprocess.DEVNULL, stderr=errors
        )
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(process.pid, found, stop))
        sampler.start()
        process.wait()
        stop.set()
        sampler.join()
    found.wall_s = time.perf_counter() - started
    with open(log, encoding="utf-8") as lines:
        for line in lines:
            if '"manifest_read"' in line:
                event = json.loads(line)
                found.seconds, found.workers = event["seconds"], event["workers"]
                found.jobs = event["jobs"]
    return found


def _sample(root: int, found: Registered, stop: threading.Event) -> None:
    """Record the largest RSS of one process under ``root`` and the PSS of all of them."""
    while not stop.wait(0.1):
        tree = _tree(root)
        sizes = [_memory_mb(pid, "status", "VmRSS:") for pid in tree]
        found.largest_mb = max(found.largest_mb, *sizes, 0.0)
        together = sum(_memory_mb(pid, "smaps_rollup", "Pss:") for pid in tree)
        found.together_mb = max(found.together_mb, together)


def _tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        found.append(pid)
        waiting.extend(children.get(pid, []))
    return found


def _memory_mb(pid: int, name: str, field: str) -> float:
    """The figure ``field`` of ``/proc/PID/NAME``, in MB (0 for a process gone)."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    main()
