"""What a run does with each manifest job it finds in the state file, and ``run --dry-run``.

One decision serves both the real run and the dry run, so the dry run never disagrees with
what would happen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pixazo_batch.config import Settings
from pixazo_batch.jobrow import JobRow
from pixazo_batch.manifest import ManifestIssue, read_manifest
from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore


class Action(Enum):
    """What to do with a manifest job on this run."""

    #: submit it (it is pending)
    SUBMIT = "submit"
    #: move it back to pending, then submit it
    REQUEUE = "requeue"
    #: mark it failed for good
    GIVE_UP = "give_up"
    #: leave it as it is (finished, in flight, or held)
    LEAVE = "leave"


@dataclass(frozen=True, slots=True)
class Decision:
    """An action and the reason recorded with it."""

    action: Action
    reason: str | None = None


def decide(settings: Settings, row: JobRow) -> Decision:
    """The action the flags call for, given the job's recorded state."""
    state = row.state
    if state is JobState.PENDING:
        return Decision(Action.SUBMIT)
    if state is JobState.UNCERTAIN:
        if settings.resubmit_uncertain:
            return Decision(Action.REQUEUE, "resubmitted by --resubmit-uncertain")
        if settings.abandon_uncertain:
            return Decision(Action.GIVE_UP, "abandoned by --abandon-uncertain")
    elif state is JobState.FAILED and settings.retry_failed:
        return Decision(Action.REQUEUE, "retried by --retry-failed")
    elif state is JobState.ERRORED:
        if row.attempts >= settings.max_attempts:
            return Decision(
                Action.GIVE_UP, f"remote ERROR on all {row.attempts} attempts: {row.error}"
            )
        return Decision(Action.REQUEUE, row.error)
    return Decision(Action.LEAVE)


@dataclass
class DryRunTotals:
    """What ``run --dry-run`` found: jobs that would be submitted and their price."""

    jobs: int = 0
    cents: int = 0
    issues: int = 0

    def as_json(self) -> dict[str, object]:
        """The totals line."""
        return {
            "would_submit": self.jobs,
            "price_usd": f"{self.cents / 100:.2f}",
            "manifest_issues": self.issues,
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
    with contextlib.ExitStack() as stack:
        store = None
        if settings.state_file.is_file():
            store = stack.enter_context(StateStore.open(settings.state_file, lock=False))
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
                if decide(settings, row).action not in (Action.SUBMIT, Action.REQUEUE):
                    continue
            totals.jobs += 1
            totals.cents += item.request.price_cents
            price = f"{item.request.price_cents / 100:.2f}"
            state = row.state.value if row else "new"
            on_job({"id": item.id, "state": state, "price_usd": price, "output": item.output})
    return totals
