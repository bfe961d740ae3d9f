"""Peak memory against hostile input: a 400 MB answer to a submit, a video announcing 50 GiB,
a manifest line of 100 MB, and 200 manifest lines of 1 MiB. Each is refused after reading at
most its cap (1 MiB for an answer, ``--max-video-mb`` for a video, 1 MiB for a line), and lines
are read a batch of at most about 1 MiB at a time, so memory stays flat.

Usage: ``python bench/hostile.py [--line-mb 100] [--long-lines 200]``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from common import (
    PYTHON,
    ROOT,
    ChildCost,
    engine_env,
    free_port,
    run_child,
    run_engine,
    table,
    write_manifest,
)


def against(mode: str, folder: Path) -> ChildCost:
    """One engine run of one job against the hostile server in ``mode``."""
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / "hostile_server.py"), mode, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        manifest = write_manifest(folder / f"{mode}.jsonl", 1)
        return run_engine(
            manifest, folder / mode, f"http://127.0.0.1:{port}", "--download-tries", "1"
        )
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    """Run the three cases and print their peak RSS."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--line-mb", type=int, default=100)
    parser.add_argument("--long-lines", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixazo-hostile-") as scratch:
        folder = Path(scratch)
        answer = against("answer", folder)
        media = against("media", folder)
        manifest = folder / "long.jsonl"
        # Written piece by piece: a forked child's peak RSS counts its parent's pages until exec.
        with open(manifest, "w", encoding="utf-8") as sink:
            sink.write('{"prompt": "')
            for _ in range(args.line_mb):
                sink.write("x" * (1 << 20))
            sink.write('"}\n{"prompt": "a fine line", "image_url": "https://x.example/a.jpg"}\n')
        line = run_child([PYTHON, "-m", "pixazo_batch", "validate", str(manifest)])
        # Many lines just under the bound: read a batch at a time, and a batch must not hold
        # them all (a run's reading sends batches to worker processes: --dry-run reads as a
        # run does, without the network).
        many = folder / "many.jsonl"
        with open(many, "w", encoding="utf-8") as sink:
            for _ in range(args.long_lines):
                sink.write('{"prompt": "' + "x" * ((1 << 20) - 100) + '"}\n')
        dry = [PYTHON, "-m", "pixazo_batch", "run", str(many), "--out", str(folder / "dry")]
        lines = run_child([*dry, "--dry-run"], env=engine_env())

    def peak(cost: ChildCost) -> str:
        return f"{cost.peak_rss_mb:.0f} (exit {cost.returncode})"

    rows = [
        ("400 MB answer to a submit: peak RSS MB", peak(answer), "-", "<= 150"),
        ("video announcing 50 GiB: peak RSS MB", peak(media), "-", "<= 150"),
        (f"{args.line_mb} MB manifest line (validate): peak RSS MB", peak(line), "-", "<= 150"),
        (f"{args.line_mb} MB manifest line (validate): s", f"{line.wall_s:.1f}", "-", "-"),
        (
            f"{args.long_lines} lines of 1 MiB (run --dry-run): peak RSS MB",
            peak(lines),
            "-",
            "<= 150",
        ),
    ]
    table("Hostile input: peak RSS of one pixazo-batch process", rows)


if __name__ == "__main__":
    main()
