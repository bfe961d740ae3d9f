"""JobRow: one job as the state file records it."""

from __future__ import annotations

from typing import Any, NamedTuple

from pixazo_batch.models import GenerationRequest, JobState


class JobRow(NamedTuple):
    """One job as the state file knows it (immutable; a named tuple, since the store builds one
    for every job it reads, and a frozen dataclass of 22 fields took ten times as long)."""

    id: str
    request_hash: str
    request_json: str
    price_cents: int
    output: str
    state: JobState
    attempts: int
    request_id: str | None
    polling_url: str | None
    remote_status: str | None
    media_url: str | None
    bytes: int | None
    sha256: str | None
    error: str | None
    created_at: float
    updated_at: float
    submitted_at: float | None
    finished_at: float | None
    #: what the downloaded video's headers say, and how it differs from the request
    video_seconds: float | None = None
    video_width: int | None = None
    video_height: int | None = None
    mismatch: str | None = None

    @property
    def request(self) -> GenerationRequest:
        """The request body this job submits."""
        return GenerationRequest.model_validate_json(self.request_json)


COLUMNS = ", ".join(JobRow._fields)


def row_from(found: tuple[Any, ...]) -> JobRow:
    """A JobRow from a ``SELECT {COLUMNS}`` result row."""
    values = list(found)
    values[5] = JobState(values[5])
    return JobRow._make(values)
