"""Helpers shared by the benchmark scripts: a simulator subprocess, manifests, child rusage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENCH_KEY = "bench-key"


@dataclass
class SimProcess:
    """A simulator running in its own process."""

    base_url: str
    media_url: str

    def stats(self) -> dict[str, Any]:
        """The simulator's counters."""
        with urllib.request.urlopen(f"{self.base_url}/_sim/stats") as answer:
            stats: dict[str, Any] = json.load(answer)
        return stats


@contextmanager
def sim_process(
    scenario: str,
    *,
    time_scale: float | None = None,
    journal: Path | None = None,
    **overrides: Any,
) -> Iterator[SimProcess]:
    """Start ``bench/sim_server.py`` and yield its URLs; stop it afterwards. With ``journal``,
    the simulator appends each job it accepts to that file (``pixazo_batch.sim.journal``)."""
    command = [
        PYTHON,
        str(ROOT / "bench" / "sim_server.py"),
        "--scenario",
        scenario,
        "--key",
        BENCH_KEY,
        "--set",
        json.dumps(overrides),
    ]
    if time_scale is not None:
        command += ["--time-scale", str(time_scale)]
    if journal is not None:
        command += ["--journal", str(journal)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=engine_env())
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().split()[1]
        media_url = process.stdout.readline().split()[1]
        yield SimProcess(base_url, media_url)
    finally:
        process.terminate()
        process.wait()


def quick_jobs(seconds: float, sigma: float, **more: Any) -> dict[str, Any]:
    """Scenario settings for jobs that all take about ``seconds``, never fail and are seen at
    once, with videos of a fixed size (``media_bytes`` in ``more``)."""
    return {
        "processing_median": {"540p": seconds, "720p": seconds, "1080p": seconds},
        "processing_sigma": sigma,
        "status_tick": [0.0, 0.0],
        "straggler_rate": 0.0,
        "failed_rate": 0.0,
        "error_rate": 0.0,
        "media_bitrate": None,
        "media_size_jitter": 0.0,
        **more,
    }


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_manifest(path: Path, count: int, *, prefix: str = "j", **fields: Any) -> Path:
    """A manifest of ``count`` distinct jobs (ids ``{prefix}0000000``...)."""
    with open(path, "w", encoding="utf-8") as sink:
        for index in range(count):
            line = {
                "id": f"{prefix}{index:07d}",
                "prompt": f"A lighthouse at dusk, take {index}",
                "image_url": f"https://images.example.com/{index}.jpg",
                **fields,
            }
            sink.write(json.dumps(line) + "\n")
    return path


@dataclass
class ChildCost:
    """What one child process cost."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int


def run_child(
    command: list[str], env: dict[str, str] | None = None, *, stderr: Path | None = None
) -> ChildCost:
    """Run a command to completion and measure it (CPU from rusage, peak RSS via wait4);
    its standard error goes to the file ``stderr`` when given."""
    start = time.perf_counter()
    with open(stderr or os.devnull, "wb") as errors:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildCost(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        returncode=process.returncode,
    )


def run_engine(manifest: Path, out: Path, base_url: str, *flags: str) -> ChildCost:
    """One pixazo-batch run as a child process (logs at warning level), measured."""
    command = [PYTHON, "-m", "pixazo_batch", "--log-level", "warning", "run", str(manifest),
               "--out", str(out), "--base-url", base_url, *flags]  # fmt: skip
    return run_child(command, env=engine_env())


def run_naive(manifest: Path, out: Path, base_url: str, *flags: str) -> ChildCost:
    """One run of the baseline script as a child process, measured."""
    naive = Path(__file__).with_name("naive.py")
    return run_child(
        [PYTHON, str(naive), str(manifest), str(out), base_url, *flags], env=engine_env()
    )


def engine_env() -> dict[str, str]:
    """The environment for an engine child: the bench key, nothing from PIXAZO_*, and bytecode
    caching on (a sandbox may set PYTHONDONTWRITEBYTECODE, which makes every start-up compile
    every module again: a cost of the machine, not of the engine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXAZO_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PIXAZO_API_KEY"] = BENCH_KEY
    return env


def table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    """Print a small table: figure, pixazo-batch, baseline, target."""
    print(f"\n{title}")
    header = ("figure", "pixazo-batch", "baseline", "target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
