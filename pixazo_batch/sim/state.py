"""State shared by the simulator's two origins: jobs, counters, rate windows, fault draws."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from pixazo_batch.sim.jobs import JobBook, SimJob
from pixazo_batch.sim.journal import record, replay
from pixazo_batch.sim.scenario import Scenario

if TYPE_CHECKING:
    from pixazo_batch.sim.media import MediaFile

KEY_HEADER = "Ocp-Apim-Subscription-Key"


@dataclass
class SimStats:
    """Counters the tests read through ``GET /_sim/stats``."""

    submit_requests: int = 0
    status_requests: int = 0
    accepted: int = 0
    #: submissions that reached the gateway, accepted or not, per request hash of the body
    arrived_by_hash: Counter[str] = field(default_factory=Counter)
    #: accepted (created and charged) submissions per request hash
    accepted_by_hash: Counter[str] = field(default_factory=Counter)
    polls_by_request: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    #: requests from a key that arrived before the end of a window the gateway announced to it
    requests_in_retry_window: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    media_requests: int = 0
    media_range_requests: int = 0
    media_bytes: int = 0
    media_truncated: int = 0
    media_expired: int = 0
    #: requests to the media origin that carried an API key
    key_leaks: int = 0
    webhooks_sent: int = 0
    #: image URLs the simulated model fetched, and how many could not be read
    image_fetches: int = 0
    image_fetch_failures: int = 0

    def as_json(self, book: JobBook) -> dict[str, object]:
        """A JSON-ready snapshot, with derived totals."""
        return {
            "submit_requests": self.submit_requests,
            "status_requests": self.status_requests,
            "gateway_requests": self.submit_requests + self.status_requests,
            "accepted": self.accepted,
            "arrived_by_hash": dict(self.arrived_by_hash),
            "accepted_by_hash": dict(self.accepted_by_hash),
            "duplicate_charges": sum(n - 1 for n in self.accepted_by_hash.values() if n > 1),
            "polls_by_request": dict(self.polls_by_request),
            "rate_limited": self.rate_limited,
            "requests_in_retry_window": self.requests_in_retry_window,
            "faults": dict(self.faults),
            "media_requests": self.media_requests,
            "media_range_requests": self.media_range_requests,
            "media_bytes": self.media_bytes,
            "media_truncated": self.media_truncated,
            "media_expired": self.media_expired,
            "key_leaks": self.key_leaks,
            "webhooks_sent": self.webhooks_sent,
            "image_fetches": self.image_fetches,
            "image_fetch_failures": self.image_fetch_failures,
            "spent_cents": book.spent_cents,
            "balance_cents": book.balance_cents,
        }


def media_clip(job: SimJob, scenario: Scenario) -> bytes:
    """The clip a job's video is made of: the one matching its request, unless the scenario
    serves every job the same 16:9, 5-second clip (a provider returning the wrong video)."""
    from pixazo_batch.sim.media import clip  # noqa: PLC0415  (cycle: media uses state)

    if scenario.media_clip == "fixed":
        return clip()
    return clip(job.request.aspect_ratio.value, job.request.duration.value)


class SimState:
    """Everything both simulator origins share; one per running simulator."""

    def __init__(self, scenario: Scenario, *, journal: Path | None = None) -> None:
        self.scenario = scenario
        #: where accepted jobs are remembered across restarts (``--sandbox``), if anywhere
        self.journal = journal
        self.reset()

    def restore(self) -> int:
        """Take back the jobs the journal remembers; returns how many."""
        if self.journal is None:
            return 0
        jobs = list(replay(self.journal, self.now()))
        for job in jobs:
            self.book.book(job)
        return len(jobs)

    def remember(self, job: SimJob) -> None:
        """Append an accepted job to the journal (flushed: it survives a kill of the process)."""
        if self.journal is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            with os.fdopen(os.open(self.journal, flags, 0o600), "a", encoding="utf-8") as sink:
                sink.write(record(job) + "\n")

    def reset(self) -> None:
        """Forget every job and counter, as after a restart of the service."""
        self.book = JobBook(self.scenario)
        self.stats = SimStats()
        self.fault_rng = random.Random(self.scenario.seed + 1)
        self._bursts: Counter[str] = Counter()
        self._windows: dict[str, deque[float]] = {}
        #: per key: when the last 429 was sent, and the end of the window it announced
        self._announced: dict[str, tuple[float, float]] = {}
        self._media: dict[str, MediaFile] = {}

    @staticmethod
    def now() -> float:
        """The simulator's clock (the event loop's monotonic time)."""
        return asyncio.get_running_loop().time()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` of real time (used for injected latency)."""
        if seconds > 0:
            await asyncio.sleep(seconds)

    def draw(self, kind: str, rate: float) -> bool:
        """Whether a fault of ``kind`` strikes now; a fault lasts ``fault_burst`` draws in a row."""
        if self._bursts[kind] > 0:
            self._bursts[kind] -= 1
            self.stats.faults[kind] += 1
            return True
        if rate > 0 and self.fault_rng.random() < rate:
            self._bursts[kind] = self.scenario.fault_burst - 1
            self.stats.faults[kind] += 1
            return True
        return False

    def carries_key(self, request: web.Request) -> bool:
        """Whether a request carries any API key, in a header or in its query string."""
        keys = self.scenario.keys | self.scenario.forbidden_keys | self.scenario.quota_keys
        if KEY_HEADER in request.headers:
            return True
        values = [*request.headers.values(), request.query_string]
        return any(key in value for key in keys for value in values)

    def media_file(self, job: SimJob) -> MediaFile:
        """The (cached) video of a completed job."""
        from pixazo_batch.sim.media import MediaFile  # noqa: PLC0415  (cycle: media uses state)

        media = self._media.get(job.request_id)
        if media is None:
            head = media_clip(job, self.scenario)
            media = self._media[job.request_id] = MediaFile(job.request_id, job.media_size, head)
        return media

    def media_generation(self, job: SimJob) -> int:
        """The generation of media URL to hand out now; the first may be born expired."""
        if job.media_generation in job.expired_generations:
            job.media_generation += 1
        elif job.media_generation == 0 and self.draw(
            "media_expire", self.scenario.media_expire_rate
        ):
            job.expired_generations.add(0)
        return job.media_generation

    def rate_limit(self, key: str) -> web.Response | None:
        """Count one request from ``key``; the 429 answer when it is over the limit."""
        now = self.now()
        announced_at, until = self._announced.get(key, (math.inf, -math.inf))
        if announced_at + self.scenario.retry_window_grace <= now < until:
            self.stats.requests_in_retry_window += 1
        limit = self.scenario.rate_limit
        if limit is None:
            return None
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - self.scenario.rate_window:
            window.popleft()
        if len(window) < limit:
            window.append(now)
            return None
        wait = max(1, math.ceil(window[0] + self.scenario.rate_window - now))
        self.stats.rate_limited += 1
        return self._too_many(key, wait)

    def _too_many(self, key: str, wait: int) -> web.Response:
        wall_now = time.time()
        headers: dict[str, str] = {}
        style = self.scenario.retry_after
        if style in ("seconds", "absent"):
            # "absent" still announces the wait, in the body's "Try again in N seconds"
            until_wall = wall_now + wait
            if style == "seconds":
                headers["Retry-After"] = str(wait)
        else:
            # A date has whole seconds: announce the next whole second at or after the wait.
            until_wall = float(math.ceil(wall_now + wait))
            moment = datetime.fromtimestamp(until_wall, UTC)
            if style == "http-date":
                headers["Retry-After"] = format_datetime(moment, usegmt=True)
            else:
                headers["Retry-After"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        now = self.now()
        self._announced[key] = (now, now + (until_wall - wall_now))
        body = {
            "statusCode": 429,
            "message": f"Rate limit is exceeded. Try again in {wait} seconds.",
        }
        return web.json_response(body, status=429, headers=headers)
