"""``run --dry-run``: what a run would submit now, and its price.

It decides through ``lifecycle.next_step``, as the run does, so the two never disagree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pixazo_batch.config import Settings
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import OFFERABLE, Action, Listed, next_step
from pixazo_batch.manifest import read_manifest
from pixazo_batch.manifestjob import KnownJob
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.models import JobSpec
from pixazo_batch.stores import open_store
from pixazo_batch.workpool import workers_for


@dataclass
class DryRunTotals:
    """What ``run --dry-run`` found: jobs that would be submitted and their price."""

    jobs: int = 0
    cents: int = 0
    issues: int = 0

    def as_json(self) -> dict[str, object]:
        """The totals line."""
        return {
            "jobs": self.jobs,
            "price_usd": f"{self.cents / 100:.2f}",
            "problems": self.issues,
        }


def plan_run(
    settings: Settings,
    *,
    on_issue: Callable[[ManifestIssue], None],
    on_job: Callable[[dict[str, object]], None],
) -> DryRunTotals:
    """Walk the manifest against the state file (read-only, if there is one) and report each
    job ``run`` would submit now, with its price. Sends nothing, writes nothing."""
    totals = DryRunTotals()

    def would_send(row: JobRow) -> bool:
        listed = Listed(settings.run_flags, attempts_left=row.attempts < settings.max_attempts)
        return next_step(row.state, listed).action is Action.SUBMIT

    def report(job_id: str, state: str, cents: int, output: str) -> None:
        totals.jobs += 1
        totals.cents += cents
        on_job({"id": job_id, "state": state, "price_usd": f"{cents / 100:.2f}", "output": output})

    with contextlib.ExitStack() as stack:
        store = None
        if settings.state_url is not None or settings.state_file.is_file():
            store = stack.enter_context(open_store(settings.state_location, lock=False))
        workers = workers_for(settings.manifest)
        items: Iterator[JobSpec | KnownJob | ManifestIssue] = stack.enter_context(
            contextlib.closing(
                read_manifest(settings.manifest, store.recorded_lines, workers=workers)
                if store is not None and store.keeps_lines()
                else read_manifest(settings.manifest, workers=workers)
            )
        )
        for item in items:
            if isinstance(item, ManifestIssue):
                totals.issues += 1
                on_issue(item)
                continue
            if isinstance(item, KnownJob):
                # A line read before, as it was: its recorded job decides (read only when its
                # state may be sent, as a run offers it).
                if item.state in OFFERABLE and store is not None:
                    row = store.get(item.id)
                    if row is not None and would_send(row):
                        report(row.id, row.state.value, row.price_cents, row.output)
                continue
            row = store.get(item.id) if store is not None else None
            if row is not None:
                if row.request_hash != item.request_hash:
                    totals.issues += 1
                    on_issue(
                        ManifestIssue(str(settings.manifest), item.line, "id", "request changed")
                    )
                    continue
                if not would_send(row):
                    continue
            state = row.state.value if row else "new"
            report(item.id, state, item.price_cents, item.output)
    return totals
