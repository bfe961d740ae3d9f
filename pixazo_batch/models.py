"""Typed shapes of everything pixazo-batch exchanges: API payloads, manifest jobs and job states.

The API payloads follow the Pixazo documentation for Luma Ray 2 Flash image-to-video exactly
(field names, enum values, defaults). Responses are parsed leniently (unknown fields ignored,
both timestamp formats the gateway emits accepted and read as UTC); requests are strict.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring_ascii as _json_text
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MODEL_ID = "luma-dream-machine-ray-2-flash-image-to-video"
SUBMIT_PATH = f"/{MODEL_ID}/v1/{MODEL_ID}-request"
STATUS_PATH_PREFIX = "/v2/requests/status/"
CENTS_PER_SECOND = 4


class AspectRatio(StrEnum):
    """Aspect ratios the API accepts."""

    WIDE = "16:9"
    TALL = "9:16"
    CLASSIC = "4:3"
    CLASSIC_TALL = "3:4"
    CINEMA = "21:9"
    CINEMA_TALL = "9:21"


class Resolution(StrEnum):
    """Output resolutions; the price does not depend on them."""

    P540 = "540p"
    P720 = "720p"
    P1080 = "1080p"


class Duration(StrEnum):
    """Output durations; the price is proportional to them."""

    SHORT = "5s"
    LONG = "9s"

    @property
    def seconds(self) -> int:
        """Length of the video in whole seconds."""
        return int(self.value.removesuffix("s"))

    @property
    def price_cents(self) -> int:
        """What one accepted submission of a video this long costs, in US cents."""
        return CENTS_PER_SECOND * self.seconds


class RemoteStatus(StrEnum):
    """Status of one request as the universal status endpoint reports it."""

    #: accepted, waiting for a generation slot
    QUEUED = "QUEUED"
    #: being generated
    PROCESSING = "PROCESSING"
    #: done; ``output.media_url`` holds the video
    COMPLETED = "COMPLETED"
    #: the model refused or failed; charged
    FAILED = "FAILED"
    #: system error; not charged
    ERROR = "ERROR"

    @property
    def is_terminal(self) -> bool:
        """True once the request will never change status again."""
        return self in {RemoteStatus.COMPLETED, RemoteStatus.FAILED, RemoteStatus.ERROR}


class GenerationRequest(BaseModel):
    """The submit body, with the documented defaults.

    Usage: ``GenerationRequest(prompt="...", image_url="https://...").model_dump(mode="json")``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    image_url: str = Field(min_length=1)
    end_image_url: str = ""
    aspect_ratio: AspectRatio = AspectRatio.WIDE
    loop: bool = False
    resolution: Resolution = Resolution.P540
    duration: Duration = Duration.SHORT

    @property
    def price_cents(self) -> int:
        """What one accepted submission of this request costs, in US cents."""
        return self.duration.price_cents

    def canonical_json(self) -> str:
        """A byte-stable JSON form: every field present, keys sorted, no whitespace."""
        return canonical_request(
            prompt=self.prompt,
            image_url=self.image_url,
            end_image_url=self.end_image_url,
            aspect_ratio=self.aspect_ratio,
            loop=self.loop,
            resolution=self.resolution,
            duration=self.duration,
        )

    def request_hash(self) -> str:
        """SHA-256 of the canonical JSON; equal requests hash equal whatever their spelling."""
        return canonical_hash(self.canonical_json())


def canonical_request(
    *,
    prompt: str,
    image_url: str,
    end_image_url: str,
    aspect_ratio: AspectRatio,
    loop: bool,
    resolution: Resolution,
    duration: Duration,
) -> str:
    """``GenerationRequest.canonical_json`` of the request with these (valid) fields: the bytes
    ``json.dumps(fields, sort_keys=True, separators=(",", ":"))`` writes, which every recorded
    ``request_hash`` was made from, at a third of its cost."""
    # An enum's value is plain ASCII, written as it is; each text goes through json's own
    # escaping (ASCII only, as ``json.dumps`` writes it by default).
    return (
        f'{{"aspect_ratio":"{aspect_ratio}","duration":"{duration}",'
        f'"end_image_url":{_json_text(end_image_url)},"image_url":{_json_text(image_url)},'
        f'"loop":{"true" if loop else "false"},"prompt":{_json_text(prompt)},'
        f'"resolution":"{resolution}"}}'
    )


def canonical_hash(canonical_json: str) -> str:
    """``GenerationRequest.request_hash`` of the request whose canonical JSON this is."""
    return hashlib.sha256(canonical_json.encode()).hexdigest()


def _assume_utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


#: The gateway mixes ``2026-05-22T13:17:32.110Z`` and ``2026-05-22 13:19:23`` (zone-less, UTC).
UtcTimestamp = Annotated[datetime | None, AfterValidator(_assume_utc)]


class SubmitAccepted(BaseModel):
    """The 202 answer to a submit."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1)
    status: RemoteStatus = RemoteStatus.QUEUED
    polling_url: str | None = None


class MediaOutput(BaseModel):
    """Where a finished video can be fetched."""

    model_config = ConfigDict(extra="ignore")

    media_url: list[str] = Field(default_factory=list)
    media_type: str | None = None


class StatusResponse(BaseModel):
    """The universal status answer (also the webhook callback body)."""

    model_config = ConfigDict(extra="ignore")

    request_id: str
    status: RemoteStatus
    model_id: str | None = None
    error: str | None = None
    output: MediaOutput | None = None
    created_at: UtcTimestamp = None
    updated_at: UtcTimestamp = None
    completed_at: UtcTimestamp = None

    @property
    def media_url(self) -> str | None:
        """The first media URL, when the request has one."""
        if self.output is None or not self.output.media_url:
            return None
        return self.output.media_url[0]


class ErrorBody(BaseModel):
    """An error answer in any of the shapes the gateway uses.

    Pixazo's service answers ``{error, message}``; the Azure API Management front answers
    ``{statusCode, message}``; a proxy may answer plain text. ``from_text`` accepts all three.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    error: str | None = None
    message: str | None = None
    status_code: int | None = Field(default=None, alias="statusCode")

    @property
    def from_api_front(self) -> bool:
        """True for the API front's ``{statusCode, message}`` shape (its backend may be lost)."""
        return self.status_code is not None and self.error is None

    @property
    def from_service(self) -> bool:
        """True for the service's own ``{error, message}`` shape."""
        return self.error is not None

    @property
    def from_gateway(self) -> bool:
        """True when the body is in one of the gateway's own shapes (not a proxy's page)."""
        return self.from_service or self.from_api_front

    @property
    def text(self) -> str:
        """One human-readable line."""
        parts = [p for p in (self.error, self.message) if p]
        return ": ".join(parts) if parts else "(no error message)"

    @classmethod
    def from_text(cls, body: str) -> ErrorBody:
        """Parse an error body leniently; never raises. Only a JSON object whose ``error`` and
        ``message`` (or ``statusCode`` and ``message``) are of the right types counts as one of
        the gateway's shapes."""
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):
            return cls(message=body.strip()[:500] or None)
        if not isinstance(data, dict):
            return cls(message=str(data)[:500])
        try:
            return cls.model_validate(data, strict=True)
        except ValueError:
            return cls(message=body.strip()[:500])


class JobState(StrEnum):
    """Where one manifest job stands; see ``docs/design.md``, section "Job lifecycle"."""

    #: known, not yet sent
    PENDING = "pending"
    #: the POST is on the wire; written durably once it holds its rate token and connection
    SUBMITTING = "submitting"
    #: the POST may or may not have been accepted; held until a callback, ``resolve`` or a flag
    UNCERTAIN = "uncertain"
    #: accepted (request_id known), remote QUEUED or PROCESSING
    SUBMITTED = "submitted"
    #: remote COMPLETED, media URL known
    COMPLETED = "completed"
    #: the verified video is at its final path
    DOWNLOADED = "downloaded"
    #: remote FAILED, rejected with 400, or retries exhausted
    FAILED = "failed"
    #: remote ERROR (not charged); resubmitted automatically up to the attempt limit
    ERRORED = "errored"


ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SUBMITTING}),
    JobState.SUBMITTING: frozenset(
        {JobState.SUBMITTED, JobState.UNCERTAIN, JobState.PENDING, JobState.FAILED}
    ),
    JobState.UNCERTAIN: frozenset({JobState.PENDING, JobState.SUBMITTED, JobState.FAILED}),
    JobState.SUBMITTED: frozenset({JobState.COMPLETED, JobState.FAILED, JobState.ERRORED}),
    JobState.COMPLETED: frozenset({JobState.DOWNLOADED, JobState.COMPLETED}),
    JobState.DOWNLOADED: frozenset({JobState.COMPLETED}),
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.ERRORED: frozenset({JobState.SUBMITTING, JobState.FAILED}),
}
"""Every state change the store accepts (``DOWNLOADED -> COMPLETED`` when the file vanished;
``ERRORED -> SUBMITTING`` when a job that ended in a remote ERROR is sent again)."""


class JobSpec(NamedTuple):
    """One valid manifest line: a job id, its request, and where its video goes.

    The request is held as its canonical JSON, what the state records and the gateway is sent:
    a line is read into it without building a request model (``JobSpec.of`` builds one from a
    model). A named tuple: made cheaply, a million times over, in the process that records them.
    """

    id: str
    #: ``GenerationRequest.canonical_json`` of the job's request
    request_json: str
    #: ``GenerationRequest.request_hash`` of the job's request
    request_hash: str
    #: what one accepted submission of the request costs, in US cents
    price_cents: int
    output: str
    line: int
    #: local images the request's placeholders name, by their key in the inputs bucket
    inputs: dict[str, Path] | None = None
    #: the line's ``manifest.line_digest`` when the line alone makes this job (it names its id
    #: and no image file), so a later run may know the line by it without reading it again
    digest: bytes | None = None

    @classmethod
    def of(
        cls,
        job_id: str,
        request: GenerationRequest,
        output: str,
        line: int,
        *,
        inputs: dict[str, Path] | None = None,
        digest: bytes | None = None,
    ) -> JobSpec:
        """The job of ``request``."""
        json_form = request.canonical_json()
        price, hashed = request.price_cents, canonical_hash(json_form)
        return cls(job_id, json_form, hashed, price, output, line, inputs or None, digest)

    @property
    def request(self) -> GenerationRequest:
        """The job's request, as a model (built on each use)."""
        return GenerationRequest.model_validate_json(self.request_json)
