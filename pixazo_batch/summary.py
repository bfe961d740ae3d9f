"""How a run ended: counts, money, every job that needs attention, and the exit code.

The summary is derived from the state file (not from what this run happened to see), so it is
the same whichever run of a night reports it. Its keys follow the vocabulary every command
shares (``docs/design.md``, "Output"): ``jobs``, ``problems``, ``*_usd``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pixazo_batch.errors import (
    EXIT_DECIDE,
    EXIT_FAILED_JOBS,
    EXIT_INCOMPLETE,
    EXIT_USAGE,
    RunStopError,
    worst_exit,
)
from pixazo_batch.jobrow import JobRow
from pixazo_batch.models import JobState
from pixazo_batch.statereader import StateReader

if TYPE_CHECKING:
    from pixazo_batch.context import StopFlags

#: each list in a summary names at most this many jobs (``status`` lists them all)
LIST_LIMIT = 100
#: states of jobs a later run finishes by itself (pending aside)
_IN_FLIGHT = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.COMPLETED, JobState.ERRORED)


@dataclass
class RunSummary:
    """What a run did and how it ended; ``exit_code`` follows ``docs/design.md``, "Exit codes".

    ``failed``, ``uncertain``, ``stalled`` and ``mismatched`` name the jobs that need attention
    (each at most ``LIST_LIMIT``); ``problems`` counts them with the manifest's bad lines.
    """

    exit_code: int
    jobs: int
    counts: dict[str, int]
    committed_usd: str
    spent_usd: str
    problems: int = 0
    manifest_issues: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


def summarise(
    store: StateReader, flags: StopFlags, issues: list[str], stopped_by: RunStopError | None
) -> RunSummary:
    """The summary of a run that ended with ``flags`` and ``issues``, from the state file."""
    counts = store.counts()
    failed = [
        {"id": row.id, "error": row.error} for row in _first(store.iter_jobs(JobState.FAILED))
    ]
    # In a fleet, a lost answer another worker waits for the callback of is its to settle.
    uncertain = [row.id for row in store.undecided(LIST_LIMIT)]
    mismatched = [
        {"id": row.id, "mismatch": row.mismatch}
        for row in _first(r for r in store.iter_mismatched() if r.state is JobState.DOWNLOADED)
    ]
    codes: set[int] = set()
    if stopped_by is not None:
        codes.add(stopped_by.exit_code)
    if uncertain:
        codes.add(EXIT_DECIDE)
    if flags.stop_submitting is not None:
        codes.add(flags.stop_exit_code)
    # Jobs left pending by a refused setting wait for the settings to be fixed (exit 2); any
    # other unfinished job resumes by itself (exit 3).
    waiting = _IN_FLIGHT if flags.stop_exit_code == EXIT_USAGE else (*_IN_FLIGHT, JobState.PENDING)
    # In a fleet, work left to living workers is theirs to finish, not this run's to resume.
    unfinished = any(counts.get(state, 0) for state in waiting) and not store.others_working()
    if flags.interrupted or flags.stalled or unfinished:
        codes.add(EXIT_INCOMPLETE)
    if issues:
        codes.add(EXIT_USAGE)
    if counts.get(JobState.FAILED, 0):
        codes.add(EXIT_FAILED_JOBS)
    attention = sum(counts.get(s, 0) for s in (JobState.FAILED, JobState.UNCERTAIN))
    return RunSummary(
        exit_code=worst_exit(codes),
        jobs=sum(counts.values()),
        counts={state.value: counts.get(state, 0) for state in JobState},
        committed_usd=f"{store.committed_cents() / 100:.2f}",
        spent_usd=f"{store.spent_cents() / 100:.2f}",
        problems=attention + len(flags.stalled) + len(mismatched) + len(issues),
        manifest_issues=issues,
        failed=failed,
        uncertain=uncertain,
        stalled=flags.stalled[:LIST_LIMIT],
        mismatched=mismatched,
        stop_reason=flags.stop_submitting,
    )


def _first(rows: Iterable[JobRow]) -> list[JobRow]:
    return list(itertools.islice(rows, LIST_LIMIT))
