"""A live progress display for runs on a terminal (rich), drawn from the state file.

Off a terminal nothing is drawn: cron gets JSON-lines logs instead.
"""

from __future__ import annotations

import time

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore

REFRESH_SECONDS = 0.5
_DONE = (JobState.DOWNLOADED, JobState.FAILED)


class TerminalProgress:
    """Jobs per state, throughput, money committed and an ETA, redrawn twice a second."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    async def watch(self, store: StateStore) -> None:
        """Redraw until cancelled."""
        started = time.monotonic()
        baseline = self._finished(store)
        with Live(console=self.console, transient=False, auto_refresh=False) as live:
            while True:
                live.update(self.render(store, started, baseline), refresh=True)
                await anyio.sleep(REFRESH_SECONDS)

    @staticmethod
    def _finished(store: StateStore) -> int:
        counts = store.counts()
        return sum(counts.get(state, 0) for state in _DONE)

    def render(self, store: StateStore, started: float, baseline: int) -> Table:
        """The table for the current moment."""
        counts = store.counts()
        total = sum(counts.values())
        finished = sum(counts.get(state, 0) for state in _DONE)
        elapsed = max(1e-6, time.monotonic() - started)
        rate = (finished - baseline) / elapsed * 60
        remaining = total - finished
        eta = f"{remaining / rate:.1f} min" if rate > 0 and remaining else "-"
        table = Table(title="pixazo-batch", show_header=True)
        for state in JobState:
            table.add_column(state.value, justify="right")
        table.add_row(*(str(counts.get(state, 0)) for state in JobState))
        table.caption = (
            f"{finished}/{total} done · {rate:.1f} jobs/min · "
            f"${store.committed_cents() / 100:.2f} committed · ETA {eta}"
        )
        return table
