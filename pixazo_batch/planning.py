"""``run --dry-run``: what a run would submit now, and its price.

It decides through ``lifecycle.next_step``, as the run does, so the two never disagree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from pixazo_batch.config import Settings
from pixazo_batch.lifecycle import Action, Listed, next_step
from pixazo_batch.manifest import read_manifest
from pixazo_batch.manifestline import ManifestIssue
from pixazo_batch.stores import open_store


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
    flags = settings.run_flags
    with contextlib.ExitStack() as stack:
        store = None
        if settings.state_url is not None or settings.state_file.is_file():
            store = stack.enter_context(open_store(settings.state_location, lock=False))
        for item in read_manifest(settings.manifest):
            if isinstance(item, ManifestIssue):
                totals.issues += 1
                on_issue(item)
                continue
            row = store.get(item.id) if store is not None else None
            if row is not None:
                if row.request_hash != item.request.request_hash():
                    totals.issues += 1
                    on_issue(
                        ManifestIssue(str(settings.manifest), item.line, "id", "request changed")
                    )
                    continue
                listed = Listed(flags, attempts_left=row.attempts < settings.max_attempts)
                if next_step(row.state, listed).action is not Action.SUBMIT:
                    continue
            totals.jobs += 1
            totals.cents += item.request.price_cents
            price = f"{item.request.price_cents / 100:.2f}"
            state = row.state.value if row else "new"
            on_job({"id": item.id, "state": state, "price_usd": price, "output": item.output})
    return totals
