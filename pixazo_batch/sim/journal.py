"""The simulator's memory across restarts: every accepted job, appended to a JSONL file.

``run --sandbox`` keeps one in the output folder, so an interrupted sandbox run resumes like a
real one: the restarted simulator still knows (and finishes) the requests it accepted before.
Times are kept as wall-clock instants and read back onto the new event loop's clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pixazo_batch.models import GenerationRequest, RemoteStatus
from pixazo_batch.sim.jobs import SimJob


def record(job: SimJob) -> str:
    """One journal line for an accepted job."""
    entry: dict[str, Any] = {
        "request_id": job.request_id,
        "request": json.loads(job.request.canonical_json()),
        "request_hash": job.request_hash,
        "created_wall": job.created_wall.isoformat(),
        "started": job.started - job.created,
        "finished": job.finished - job.created,
        "outcome": job.outcome.value,
        "error": job.error,
        "tick": job.tick,
        "media_size": job.media_size,
    }
    return json.dumps(entry, separators=(",", ":"))


def replay(path: Path, now: float) -> Iterator[SimJob]:
    """The jobs a journal holds, placed on a clock that reads ``now`` at this instant. A line
    cut short by a crash is skipped."""
    if not path.is_file():
        return
    wall = time.time()
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            created_wall = datetime.fromisoformat(entry["created_wall"])
            created = now - (wall - created_wall.timestamp())
            yield SimJob(
                request_id=entry["request_id"],
                request=GenerationRequest.model_validate(entry["request"]),
                request_hash=entry["request_hash"],
                created_wall=created_wall,
                created=created,
                started=created + entry["started"],
                finished=created + entry["finished"],
                outcome=RemoteStatus(entry["outcome"]),
                error=entry["error"],
                tick=entry["tick"],
                media_size=entry["media_size"],
            )
