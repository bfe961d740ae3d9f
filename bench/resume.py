"""Benchmark 5: resuming a finished state file of many jobs, and reading its status.

Builds a state file of N downloaded jobs (directly, without the network), then times ``run`` on
the same manifest (it must send zero requests), ``status``, and ``run`` on the manifest with one
line added (how long reading it took, from the run's own log). Usage:
``python bench/resume.py [--jobs N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PYTHON, engine_env, run_child, sim_process, table, write_manifest

from pixazo_batch.manifest import read_manifest
from pixazo_batch.models import JobSpec
from pixazo_batch.state import StateStore


def build_finished_state(manifest: Path, out: Path) -> None:
    """Record every manifest job as downloaded, with a tiny file in place."""
    out.mkdir(parents=True, exist_ok=True)
    with StateStore.open(out / ".pixazo-batch.db") as store:
        store.db.execute("BEGIN")
        now = time.time()
        for item in read_manifest(manifest):
            assert isinstance(item, JobSpec)
            store.db.execute(
                "INSERT INTO jobs (id, request_hash, request_json, price_cents, output, state,"
                " attempts, request_id, bytes, sha256, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'downloaded', 1, ?, 4, 'x', ?, ?)",
                (
                    item.id,
                    item.request_hash,
                    item.request_json,
                    item.price_cents,
                    item.output,
                    f"r-{item.id}",
                    now,
                    now,
                ),
            )
            (out / item.output).write_bytes(b"\0\0\0\0")
        store.db.execute("COMMIT")


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixazo-bench-") as scratch:
        folder = Path(scratch)
        manifest = write_manifest(folder / "jobs.jsonl", args.jobs)
        out = folder / "out"
        build_finished_state(manifest, out)
        command = [PYTHON, "-m", "pixazo_batch", "--log-level", "warning", "run", str(manifest)]
        command += ["--out", str(out)]
        with sim_process("fast") as sim:
            # The first run reads and checks every line (the state file was built without one);
            # it records the manifest's digest, so the next run over the same file need not, and
            # each line's, so a run over the manifest edited need not read the lines it knows.
            first = run_child([*command, "--base-url", sim.base_url], env=engine_env())
            resumed = run_child([*command, "--base-url", sim.base_url], env=engine_env())
            requests = sim.stats()["gateway_requests"]
            status = run_child([PYTHON, "-m", "pixazo_batch", "status", "--out", str(out)])
            # A line added: the manifest is read again, its other lines known by their digest.
            write_manifest(folder / "extra.jsonl", 1, prefix="extra")
            with open(manifest, "ab") as sink:
                sink.write((folder / "extra.jsonl").read_bytes())
            log = folder / "edited.log"
            verbose = [*command[:4], "info", "--log-format", "json", *command[5:]]
            edited = run_child([*verbose, "--base-url", sim.base_url], env=engine_env(), stderr=log)
        reading = _logged_seconds(log, "manifest_read")
    table(
        f"Resume: {args.jobs:,} downloaded jobs"
        f" (run exits {first.returncode}, {resumed.returncode}, {edited.returncode})",
        [
            ("run on a finished state file, s", f"{resumed.wall_s:.2f}", "-", "<= 3"),
            ("the same, manifest read in full, s", f"{first.wall_s:.2f}", "-", "-"),
            ("gateway requests during that run", str(requests), "-", "0"),
            ("status, s", f"{status.wall_s:.2f}", "-", "<= 1"),
            ("a line added: run, s", f"{edited.wall_s:.2f}", "-", "-"),
            ("a line added: reading the manifest, s", f"{reading:.2f}", "-",
             f"<= {15 * args.jobs / 1_000_000:.1f} (15 s a million)"),
            ("a line added: peak RSS MB", f"{edited.peak_rss_mb:.0f}", "-", "<= 150"),
        ],
    )  # fmt: skip


def _logged_seconds(log: Path, event: str) -> float:
    """The ``seconds`` of the first JSON log line of ``event`` (NaN when there is none)."""
    with open(log, encoding="utf-8") as lines:
        for line in lines:
            if f'"{event}"' in line:
                return float(json.loads(line)["seconds"])
    return float("nan")


if __name__ == "__main__":
    main()
