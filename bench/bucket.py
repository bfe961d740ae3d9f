"""Benchmark 8: videos into a bucket. 20 videos of 100 MB from the simulator's media origin into
an S3-compatible bucket (moto's server on loopback), two ways in one run:

- pixazo-batch ``--out s3://bucket/engine``: each video is fetched into the local spool and
  checked, then uploaded to its final key while the next comes in;
- the baseline: the naive script downloads every video to disk, then boto3's managed transfer
  (``upload_file``, threads) uploads the folder.

Figures: end-to-end throughput (MB of video per second, from the first POST to the last object)
and each side's peak RSS. Target: throughput at least the baseline's, peak RSS at most 150 MB.
With ``--results-jobs N``, also a run over N new jobs that sends nothing (``--max-spend 0``) and
leaves ``results.jsonl`` and ``report.html`` in the bucket: its time and peak RSS, and the two
files' sizes. Usage: ``python bench/bucket.py [--jobs 20] [--mb 100] [--results-jobs N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import (
    PYTHON,
    engine_env,
    free_port,
    quick_jobs,
    run_child,
    run_naive,
    sim_process,
    table,
    write_manifest,
)

_UPLOAD = """
import sys, pathlib, boto3
from boto3.s3.transfer import TransferConfig
folder, bucket, prefix = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
client = boto3.client("s3")
config = TransferConfig(max_concurrency=4)
for path in sorted(folder.glob("*.mp4")):
    client.upload_file(str(path), bucket, f"{prefix}/{path.name}", Config=config)
"""


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in its own process; yields its endpoint URL."""
    port = free_port()
    moto = Path(PYTHON).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield endpoint
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--engine-flag", action="append", default=[], help="passed to the run")
    parser.add_argument("--results-jobs", type=int, default=0)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    scenario = quick_jobs(0.5, 0.1, media_bytes=size)
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch, moto_server() as s3:
        folder = Path(scratch)
        env = engine_env() | {
            "AWS_ENDPOINT_URL": s3,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "XDG_STATE_HOME": str(folder / "state"),
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        import boto3

        boto3.client("s3").create_bucket(Bucket="videos")
        with sim_process("fast", **scenario) as sim:
            manifest = write_manifest(folder / "a.jsonl", args.jobs, prefix="a")
            command = [PYTHON, "-m", "pixazo_batch", "--log-level", "warning", "run",
                       str(manifest), "--out", "s3://videos/engine", "--base-url", sim.base_url,
                       "--poll-interval", "0.5", *args.engine_flag]  # fmt: skip
            engine = run_child(command, env=env)
            baseline_manifest = write_manifest(folder / "b.jsonl", args.jobs, prefix="b")
            download = run_naive(baseline_manifest, folder / "disk", sim.base_url, "--poll", "0.5")
            upload = run_child(
                [PYTHON, "-c", _UPLOAD, str(folder / "disk"), "videos", "baseline"], env=env
            )
            if args.results_jobs:
                _results_into_bucket(folder, sim.base_url, args.results_jobs, env)
        objects = boto3.client("s3").list_objects_v2(Bucket="videos", Prefix="engine/")
        stored = [o for o in objects.get("Contents", []) if o["Key"].endswith(".mp4")]
    megabytes = args.jobs * size / 1e6
    baseline_wall = download.wall_s + upload.wall_s
    table(
        f"Into a bucket: {args.jobs} videos of {args.mb} MB, moto on loopback "
        f"(exits {engine.returncode}; baseline {download.returncode}, {upload.returncode}; "
        f"{len(stored)} objects)",
        [
            ("seconds, first POST to last object", f"{engine.wall_s:.1f}",
             f"{baseline_wall:.1f} ({download.wall_s:.1f} + {upload.wall_s:.1f})", "-"),
            ("throughput, MB/s", f"{megabytes / engine.wall_s:.1f}",
             f"{megabytes / baseline_wall:.1f}", ">= baseline"),
            ("CPU seconds (the engine; download + upload)", f"{engine.cpu_s:.1f}",
             f"{download.cpu_s + upload.cpu_s:.1f}", "-"),
            ("peak RSS, MB", f"{engine.peak_rss_mb:.0f}",
             f"{max(download.peak_rss_mb, upload.peak_rss_mb):.0f}", "<= 150"),
        ],
    )  # fmt: skip


def _results_into_bucket(folder: Path, base_url: str, jobs: int, env: dict[str, str]) -> None:
    """A run over ``jobs`` new jobs that sends nothing and leaves its results in the bucket."""
    import boto3  # its environment is set by main

    manifest = write_manifest(folder / "r.jsonl", jobs, prefix="r")
    command = [PYTHON, "-m", "pixazo_batch", "--log-level", "error", "run", str(manifest),
               "--out", "s3://videos/results", "--base-url", base_url,
               "--max-spend", "0"]  # fmt: skip
    run = run_child(command, env=env)
    client = boto3.client("s3")
    sizes = {
        name: client.head_object(Bucket="videos", Key=f"results/{name}")["ContentLength"] / 1e6
        for name in ("results.jsonl", "report.html")
    }
    table(
        f"Results into a bucket: {jobs} new jobs, nothing sent (exit {run.returncode})",
        [
            ("seconds, the whole run", f"{run.wall_s:.1f}", "-", "-"),
            ("peak RSS, MB", f"{run.peak_rss_mb:.0f}", "-", "<= 150"),
            ("results.jsonl, report.html in the bucket, MB",
             f"{sizes['results.jsonl']:.1f}, {sizes['report.html']:.1f}", "-", "-"),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
