"""The live display of a run on a terminal (rich), drawn from the state file and the run's view.

One ``Console`` on standard error carries both the logs (printed above the live region through
``logs.ConsoleSink``) and the display: bars for jobs sent, rendered and downloaded out of the
manifest's whole size (counted once, up front), money committed and spent, gateway requests per
minute, a visible pause with its countdown, and an ETA from learned completion times. Off a
terminal nothing is drawn: cron gets JSON-line logs instead.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pixazo_batch.context import RunView
from pixazo_batch.models import JobState

REFRESH_SECONDS = 0.5
#: the window requests per minute are measured over
RATE_WINDOW = 60.0
_SENT = (JobState.SUBMITTED, JobState.COMPLETED, JobState.DOWNLOADED, JobState.FAILED)
_RENDERED = (JobState.COMPLETED, JobState.DOWNLOADED)


def count_manifest_jobs(path: Path) -> int:
    """How many lines of the manifest may be jobs (not blank, not comments), read in pieces."""
    jobs = 0
    with open(path, "rb") as lines:
        for line in lines:
            stripped = line.strip()
            jobs += bool(stripped) and not stripped.startswith(b"#")
    return jobs


class TerminalProgress:
    """Bars, money, request rate, pauses and an ETA, redrawn twice a second.

    Usage: ``run_batch(settings, observer=TerminalProgress(console))`` with the console the
    logs go through (``logs.configure_logging(console=...)``).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._requests: deque[tuple[float, int]] = deque()

    async def watch(self, view: RunView) -> None:
        """Redraw until cancelled; the last frame stays on the screen."""
        listed = await anyio.to_thread.run_sync(count_manifest_jobs, view.settings.manifest)
        started = time.monotonic()
        finished_before = self._finished(view)
        with Live(console=self.console, auto_refresh=False, transient=False) as live:
            try:
                while True:
                    live.update(self.render(view, listed, started, finished_before), refresh=True)
                    await anyio.sleep(REFRESH_SECONDS)
            finally:  # the run is over: the last frame shows where it ended
                live.update(self.render(view, listed, started, finished_before), refresh=True)

    @staticmethod
    def _finished(view: RunView) -> int:
        counts = view.store.counts()
        return counts.get(JobState.DOWNLOADED, 0) + counts.get(JobState.FAILED, 0)

    def render(self, view: RunView, listed: int, started: float, finished_before: int) -> Group:
        """The display for this instant."""
        counts = view.store.counts()
        total = max(listed, sum(counts.values()))
        bars = Table.grid(padding=(0, 1))
        for label, states in (("sent", _SENT), ("rendered", _RENDERED)):
            done = sum(counts.get(state, 0) for state in states)
            bars.add_row(
                label, ProgressBar(total=total or 1, completed=done, width=40), f"{done}/{total}"
            )
        downloaded = counts.get(JobState.DOWNLOADED, 0)
        bars.add_row(
            "downloaded",
            ProgressBar(total=total or 1, completed=downloaded, width=40),
            f"{downloaded}/{total}",
        )
        store = view.store
        line = Text(
            f"${store.committed_cents() / 100:.2f} committed · "
            f"${store.spent_cents() / 100:.2f} spent · "
            f"{self._per_minute(view.gateway.requests):.0f} requests/min · "
            f"ETA {self._eta(view, counts, total, started, finished_before)}"
        )
        parts: list[Text | Table] = [bars, line]
        paused = waiting_for(view)
        if paused:
            parts.append(Text(paused, style="yellow"))
        return Group(*parts)

    def _per_minute(self, requests: int) -> float:
        now = time.monotonic()
        self._requests.append((now, requests))
        while self._requests and self._requests[0][0] < now - RATE_WINDOW:
            self._requests.popleft()
        first_at, first = self._requests[0]
        span = now - first_at
        return (requests - first) / span * 60 if span > 0 else 0.0

    def _eta(
        self,
        view: RunView,
        counts: dict[JobState, int],
        total: int,
        started: float,
        finished_before: int,
    ) -> str:
        finished = counts.get(JobState.DOWNLOADED, 0) + counts.get(JobState.FAILED, 0)
        remaining = total - finished
        if remaining <= 0:
            return "-"
        elapsed = time.monotonic() - started
        done_here = finished - finished_before
        if done_here > 0 and elapsed > 0:
            seconds = remaining / (done_here / elapsed)
        else:
            # Nothing finished yet: waves of --max-in-flight jobs, each taking as long as the
            # estimator has learned (or its prior says) a job takes.
            expected = view.estimator.expected(("540p", "5s"))
            if expected is None:
                return "learning"
            waves = math.ceil(remaining / view.settings.max_in_flight)
            seconds = waves * expected
        return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def waiting_for(view: RunView) -> str | None:
    """What the run is waiting for (a rate limit, the gateway, a media host, a bucket), with a
    countdown, if it is waiting."""
    now = view.governor.clock.now()
    if view.governor.paused_until > now:
        return f"rate limited, {view.governor.paused_until - now:.0f} s"
    health = view.health
    if not health.sound and health.next_try_at is not None:
        wait = max(0.0, health.next_try_at - now)
        if health.down_since is not None:
            return f"gateway unreachable, next try in {wait:.0f} s"
        return f"submitting paused ({health.reason}), next try in {wait:.0f} s"
    for gate in view.outages():
        if gate.next_try_at is not None:
            wait = max(0.0, gate.next_try_at - now)
            return f"{gate.service} unreachable, next try in {wait:.0f} s"
    return None
