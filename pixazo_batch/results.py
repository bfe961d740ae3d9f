"""results.jsonl: one line per job, derived from the state file, in the manner of a batch API."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pixazo_batch.state import JobRow, StateStore


def result_record(store: StateStore, row: JobRow) -> dict[str, Any]:
    """The public record of one job (never the key, never the request body)."""
    return {
        "id": row.id,
        "state": row.state.value,
        "request_id": row.request_id,
        "request_ids": store.request_ids(row.id),
        "output": row.output,
        "bytes": row.bytes,
        "sha256": row.sha256,
        "cost_usd": f"{store.job_committed_cents(row.id) / 100:.2f}",
        "attempts": row.attempts,
        "error": row.error,
    }


def iter_results(store: StateStore) -> Iterator[dict[str, Any]]:
    """Every job's record, in the order jobs were first seen."""
    for row in store.iter_jobs():
        yield result_record(store, row)


def write_results(store: StateStore, path: Path) -> int:
    """Write ``results.jsonl`` atomically; returns the number of lines."""
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "w", encoding="utf-8") as sink:
        for record in iter_results(store):
            sink.write(json.dumps(record, separators=(",", ":")) + "\n")
            count += 1
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(temporary, path)
    return count
