"""results.jsonl: one line per job, derived from the state file, in the manner of a batch API."""

from __future__ import annotations

import csv
import itertools
import json
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pixazo_batch.bucketpath import BucketPath
from pixazo_batch.jobrow import JobRow
from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore

#: one encoder for every line (``json.dumps`` with separators builds one a call)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def result_record(
    row: JobRow, request_ids: list[str], cents: int, where: BucketPath | None = None
) -> dict[str, Any]:
    """The public record of one job (never the key, never the request body); ``location`` is
    the object's ``s3://`` URL when the videos go to a bucket."""
    return {
        "id": row.id,
        "state": row.state.value,
        "request_id": row.request_id,
        "request_ids": request_ids,
        "output": row.output,
        "location": row.output if where is None else where.url(row.output),
        "bytes": row.bytes,
        "sha256": row.sha256,
        "cost_usd": f"{cents / 100:.2f}",
        "attempts": row.attempts,
        "error": row.error,
        "video_seconds": row.video_seconds,
        "video_width": row.video_width,
        "video_height": row.video_height,
        "mismatch": row.mismatch,
    }


def iter_results(store: StateStore, where: BucketPath | None = None) -> Iterator[dict[str, Any]]:
    """Every job's record, in the order jobs were first seen."""
    for row, request_ids, cents in store.iter_ledger():
        yield result_record(row, request_ids, cents, where)


def result_line(record: dict[str, Any]) -> str:
    """A record as its line of ``results.jsonl``."""
    return _COMPACT.encode(record) + "\n"


def results_current(store: StateStore, path: Path) -> bool:
    """Whether ``results.jsonl`` at ``path`` already reflects every job as it stands: this run
    changed none, and the one before it ended (a run writes the file just before it records
    its end)."""
    return not store.job_changes and store.previous_run_ended(store.run_id) and path.is_file()


CSV_FIELDS = (
    "id", "state", "request_id", "output", "location", "bytes", "sha256", "cost_usd",
    "attempts", "error",
    "video_seconds", "video_width", "video_height", "mismatch",
)  # fmt: skip


def write_csv(store: StateStore, sink: IO[str], where: BucketPath | None = None) -> None:
    """Every job's record as CSV (request_ids joined with spaces)."""
    writer = csv.DictWriter(sink, fieldnames=[*CSV_FIELDS, "request_ids"], extrasaction="ignore")
    writer.writeheader()
    for record in iter_results(store, where):
        writer.writerow({**record, "request_ids": " ".join(record["request_ids"])})


def resolve_commands(job_id: str, out: Path | str | None, state: Path | None = None) -> list[str]:
    """The command lines that settle an uncertain job, one per possible answer."""
    where = f"--out {shlex.quote(str(out or 'DIR'))}"
    if state is not None:
        where += f" --state {shlex.quote(str(state))}"
    base = f"pixazo-batch resolve {shlex.quote(job_id)} {where}"
    return [f"{base} --request-id REQUEST_ID", f"{base} --not-sent", f"{base} --abandon"]


def status_summary(
    store: StateStore,
    *,
    out: Path | str | None = None,
    state: Path | None = None,
    where: BucketPath | None = None,
) -> dict[str, Any]:
    """What ``status`` shows: counts, money, where the videos are, the oldest pending job,
    every job that needs attention (failed, uncertain, errored, or downloaded but not what was
    asked; each with its ``location``), and for each uncertain job when its POST left, what
    was lost, and how to settle it."""
    counts = {state.value: n for state, n in store.counts().items()}
    oldest = store.db.execute(
        "SELECT id, created_at FROM jobs WHERE state = 'pending' ORDER BY created_at LIMIT 1"
    ).fetchone()
    attention = [
        {
            "id": row.id,
            "state": row.state.value,
            "request_id": row.request_id,
            "error": row.error,
            "mismatch": row.mismatch,
            "location": row.output if where is None else where.url(row.output),
        }
        for row in itertools.chain(
            store.iter_jobs(JobState.FAILED, JobState.UNCERTAIN, JobState.ERRORED),
            store.iter_mismatched(),
        )
    ]
    last_run = store.db.execute(
        "SELECT id, started_at, ended_at, exit_code FROM runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return {
        "counts": counts,
        "jobs": sum(counts.values()),
        "location": str(out) if where is None else where.url(),
        "workers": store.live_workers(),
        "committed_usd": f"{store.committed_cents() / 100:.2f}",
        "spent_usd": f"{store.spent_cents() / 100:.2f}",
        "oldest_pending": None if oldest is None else {"id": oldest[0], "since": _iso(oldest[1])},
        "uncertain": [
            {
                "id": row.id,
                "post_sent": _iso(store.last_post(row.id)),
                "lost": row.error,
                "resolve": resolve_commands(row.id, out, state),
            }
            for row in store.iter_jobs(JobState.UNCERTAIN)
        ],
        "problems": len(attention),
        "attention": attention,
        "last_run": None
        if last_run is None
        else {
            "id": last_run[0],
            "started": _iso(last_run[1]),
            "ended": _iso(last_run[2]),
            "exit_code": last_run[3],
        },
    }


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
