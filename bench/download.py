"""Benchmark 4: download throughput of the engine against curl, same files, same run.

Serves N media files of SIZE bytes from the simulator's media origin. The engine runs the
manifest once, its videos are deleted, and the measured second run downloads them all again;
curl then fetches the same URLs (as many at once as the engine's ``--downloads``). Usage:
``python bench/download.py [--files N] [--mb SIZE]``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from common import run_engine, sim_process, table, write_manifest


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    total_mb = args.files * size / 1e6
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.files)
        with sim_process(
            "fast", media_bytes=size, media_size_jitter=0.0, media_chunk=1 << 20
        ) as sim:
            flags = ("--rps", "1000", "--poll-interval", "0.01", "--downloads", str(args.parallel))
            # The first run submits, polls and downloads; the simulator computes each file's
            # MD5 ETag on its first GET, so this run also warms what curl will find warm.
            first = run_engine(manifest, folder / "engine", sim.base_url, *flags)
            for video in (folder / "engine").glob("*.mp4"):
                video.unlink()
            # The second run finds every file gone and downloads them all again: the
            # download path alone (plus interpreter start-up), against the same warm origin.
            engine = run_engine(manifest, folder / "engine", sim.base_url, *flags)
            urls = [
                f"{sim.media_url}/v1/{rid}/output.mp4?v=0"
                for rid in sim.stats()["polls_by_request"]
            ]
            (folder / "curl").mkdir()
            started = time.perf_counter()
            commands = [
                ["curl", "-sS", "-o", str(folder / "curl" / f"{i}.mp4"), url]
                for i, url in enumerate(urls)
            ]
            running: list[subprocess.Popen[bytes]] = []
            for command in commands:
                if len(running) >= args.parallel:
                    running.pop(0).wait()
                running.append(subprocess.Popen(command))
            for process in running:
                process.wait()
            curl_seconds = time.perf_counter() - started
    table(
        f"Download throughput: {args.files} files of {args.mb} MB, {args.parallel} at once "
        f"(engine exits {first.returncode}, {engine.returncode}; the engine's time includes"
        " start-up, sha256, fsync and rename; its first run, with submit and poll, took"
        f" {first.wall_s:.1f} s)",
        [
            (
                "MB/s",
                f"{total_mb / engine.wall_s:.0f}",
                f"{total_mb / curl_seconds:.0f} (curl)",
                ">= 0.9x curl",
            ),
            ("ratio to curl", f"{curl_seconds / engine.wall_s:.2f}", "1.00", ">= 0.90"),
            (
                "engine CPU s per GB (hash, copy, HTTP)",
                f"{engine.cpu_s / (total_mb / 1000):.2f}",
                "-",
                "-",
            ),
        ],
    )


if __name__ == "__main__":
    main()
