"""The simulated service behind the gateway: a shared pool of generation slots and a job clock.

Each accepted job's whole future is drawn at submit time from the scenario (seeded, so a run is
reproducible): when it leaves the queue, when it finishes, how it ends. Its status at any instant
is then derived from the clock, quantised to the gateway's own refresh tick, so no background task
is needed to move jobs along.
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pixazo_batch.models import MODEL_ID, GenerationRequest, RemoteStatus
from pixazo_batch.sim.scenario import Scenario

FAILURE_REASONS = (
    "Contains blacklisted words",
    "Frame moderation failed",
    "Advanced prompt moderation failed",
    "Prompt processing failed",
)
KEYFRAME_LOOP_REASON = "Loop is not supported for keyframes"
UNREADABLE_FRAME_REASON = "Failed to read user input frames"
ERROR_REASON = "Generation timed out upstream"


def uuid7(now_ms: int, rng: random.Random) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond timestamp, version 7, variant 10, random rest."""
    rand = rng.getrandbits(74)
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 62) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


@dataclass(slots=True)
class SimJob:
    """One accepted request and its pre-drawn timeline (loop-clock seconds)."""

    request_id: str
    request: GenerationRequest
    request_hash: str
    created_wall: datetime
    created: float
    started: float
    finished: float
    outcome: RemoteStatus
    error: str | None
    tick: float
    media_size: int
    webhook_url: str | None = None
    webhook_mode: str = "terminal"
    #: generation of the media URL currently handed out; older ones answer 403
    media_generation: int = 0
    expired_generations: set[int] = field(default_factory=set)
    refunded: bool = False

    def visible(self, instant: float) -> float:
        """The first gateway tick at or after ``instant`` (when a change becomes visible)."""
        if self.tick <= 0 or instant <= self.created:
            return instant
        return self.created + math.ceil((instant - self.created) / self.tick) * self.tick

    def status_at(self, now: float) -> RemoteStatus:
        """What the gateway reports at loop time ``now``."""
        if now >= self.visible(self.finished):
            return self.outcome
        if now >= self.visible(self.started):
            return RemoteStatus.PROCESSING
        return RemoteStatus.QUEUED

    def wall(self, instant: float) -> datetime:
        """Wall-clock time of a loop-clock instant."""
        return self.created_wall + timedelta(seconds=instant - self.created)


def _gateway_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def status_body(job: SimJob, now: float, media_url: str | None) -> dict[str, object]:
    """The status JSON the gateway serves for ``job`` at ``now`` (also the webhook body)."""
    status = job.status_at(now)
    terminal = status.is_terminal
    if terminal:
        updated = job.visible(job.finished)
    elif status is RemoteStatus.PROCESSING:
        updated = job.visible(job.started)
    else:
        updated = job.created
    output: dict[str, object] | None = None
    if status is RemoteStatus.COMPLETED and media_url is not None:
        media_type = "video/mp4" if job.media_size % 2 == 0 else "application/octet-stream"
        output = {"media_url": [media_url], "media_type": media_type}
    return {
        "request_id": job.request_id,
        "status": status.value,
        "model_id": MODEL_ID,
        "error": job.error if status in (RemoteStatus.FAILED, RemoteStatus.ERROR) else None,
        "output": output,
        "created_at": job.created_wall.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "updated_at": _gateway_time(job.wall(updated)),
        "completed_at": _gateway_time(job.wall(job.visible(job.finished))) if terminal else None,
    }


class JobBook:
    """All jobs the simulated service accepted, the slot pool they share, and the wallet."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.jobs: dict[str, SimJob] = {}
        self.balance_cents = scenario.balance_cents
        self.spent_cents = 0
        self._slot_free_at: list[float] = []
        self._refunds: list[tuple[float, str]] = []

    def _processing_seconds(self, request: GenerationRequest) -> tuple[float, bool]:
        s = self.scenario
        if self.rng.random() < s.straggler_rate:
            return self.rng.uniform(*s.straggler_range), True
        median = s.processing_median.get(request.resolution.value, 35.0)
        if median <= 0:
            return 0.0, False
        seconds = self.rng.lognormvariate(math.log(median), s.processing_sigma)
        if request.duration.seconds > 5:
            seconds *= s.long_duration_factor
        return seconds, False

    def _outcome(self, request: GenerationRequest, capped: bool) -> tuple[RemoteStatus, str | None]:
        if request.loop and request.end_image_url:
            return RemoteStatus.FAILED, KEYFRAME_LOOP_REASON
        if any(u.split("/")[2].split(":")[0].endswith(".invalid") for u in _image_urls(request)):
            return RemoteStatus.FAILED, UNREADABLE_FRAME_REASON
        if capped:
            return RemoteStatus.ERROR, ERROR_REASON
        draw = self.rng.random()
        if draw < self.scenario.error_rate:
            return RemoteStatus.ERROR, ERROR_REASON
        if draw < self.scenario.error_rate + self.scenario.failed_rate:
            return RemoteStatus.FAILED, self.rng.choice(FAILURE_REASONS)
        return RemoteStatus.COMPLETED, None

    def _media_size(self, request: GenerationRequest) -> int:
        s = self.scenario
        if s.media_bitrate is None:
            base = float(s.media_bytes)
        else:
            base = (
                s.media_bitrate.get(request.resolution.value, 2.5e6) / 8 * request.duration.seconds
            )
        jitter = self.rng.uniform(-s.media_size_jitter, s.media_size_jitter)
        return max(4096, int(base * (1 + jitter)))

    def can_afford(self, now: float, price_cents: int) -> bool:
        """Whether the wallet covers ``price_cents`` (refunds of jobs ended in ERROR included)."""
        self._apply_refunds(now)
        return self.balance_cents is None or self.balance_cents >= price_cents

    def _apply_refunds(self, now: float) -> None:
        while self._refunds and self._refunds[0][0] <= now:
            _, request_id = heapq.heappop(self._refunds)
            job = self.jobs[request_id]
            job.refunded = True
            price = job.request.price_cents
            self.spent_cents -= price
            if self.balance_cents is not None:
                self.balance_cents += price

    def accept(self, request: GenerationRequest, now: float, request_hash: str) -> SimJob:
        """Create, charge and schedule a job; its timeline is fixed from here on."""
        s = self.scenario
        wall = datetime.now(UTC)
        request_id = f"{MODEL_ID}_{uuid7(int(wall.timestamp() * 1000), self.rng)}"
        ready = now + s.seconds(self.rng.uniform(*s.dispatch_delay))
        while len(self._slot_free_at) < s.slots:
            heapq.heappush(self._slot_free_at, now)
        started = max(ready, heapq.heappop(self._slot_free_at))
        processing, straggler = self._processing_seconds(request)
        capped = straggler and processing > s.processing_cap
        finished = started + s.seconds(min(processing, s.processing_cap))
        heapq.heappush(self._slot_free_at, finished)
        outcome, error = self._outcome(request, capped)
        job = SimJob(
            request_id=request_id,
            request=request,
            request_hash=request_hash,
            created_wall=wall,
            created=now,
            started=started,
            finished=finished,
            outcome=outcome,
            error=error,
            tick=s.seconds(self.rng.uniform(*s.status_tick)),
            media_size=self._media_size(request),
        )
        self.book(job)
        return job

    def book(self, job: SimJob) -> None:
        """Keep ``job`` and charge for it (refunded later if it ends in ERROR)."""
        self.jobs[job.request_id] = job
        price = job.request.price_cents
        self.spent_cents += price
        if self.balance_cents is not None:
            self.balance_cents -= price
        if job.outcome is RemoteStatus.ERROR or (
            job.outcome is RemoteStatus.FAILED and not self.scenario.failed_is_charged
        ):
            heapq.heappush(self._refunds, (job.visible(job.finished), job.request_id))


def _image_urls(request: GenerationRequest) -> list[str]:
    return [u for u in (request.image_url, request.end_image_url) if u]
