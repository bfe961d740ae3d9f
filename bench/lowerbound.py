"""What polling could achieve on the very jobs a run sent: benchmark 2's lower bound.

The simulator's journal (``bench/sim_server.py --journal``) holds each accepted job's timeline:
when it was accepted, when it ended, and the status tick on which the gateway shows a change.
From it, ``makespan_bound`` is the makespan had every job's end been seen the instant the
gateway showed it; ``best_schedule`` the best a poll schedule could do within a budget of polls
a job, chosen knowing every job's time (so no real schedule of that form does better), either
blind to the status's timestamps or polling on each job's own tick (which it would have to
learn from them).
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Shown:
    """One accepted job: when, how many seconds later the gateway showed its end, and the
    period of the tick it shows changes on."""

    accepted: float
    seconds: float
    tick: float


@dataclass(frozen=True)
class Schedule:
    """Polls from ``first`` seconds after submission, then every ``every`` seconds (on the
    job's own tick: at its first tick from ``first``, then at every tick; ``every`` is 0)."""

    first: float
    every: float
    polls_per_job: float
    makespan: float


def read_journal(journal: Path) -> list[Shown]:
    """The jobs of a simulator journal, in the order they were accepted."""
    jobs = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        tick, finished = entry["tick"], entry["finished"]
        # The gateway shows a change on the job's first tick at or after it (sim/jobs.py).
        seconds = math.ceil(finished / tick) * tick if tick > 0 else finished
        accepted = datetime.fromisoformat(entry["created_wall"]).timestamp()
        jobs.append(Shown(accepted, seconds, tick))
    return sorted(jobs, key=lambda job: job.accepted)


def makespan(seconds_held: list[float], slots: int) -> float:
    """Seconds until the last job is done when ``slots`` places each take the next job, in
    order, the moment their previous one is done, and job i holds its place for
    ``seconds_held[i]``."""
    free = [0.0] * slots
    for held in seconds_held:
        heapq.heappush(free, heapq.heappop(free) + held)
    return max(free)


def makespan_bound(jobs: list[Shown], slots: int) -> float:
    """The makespan from the first acceptance had each job's end been seen as soon as the
    gateway showed it and the next job been sent at once (no start-up, no download)."""
    return makespan([job.seconds for job in jobs], slots)


def best_schedule(
    jobs: list[Shown], slots: int, polls_per_job: float, step: float, *, on_tick: bool = False
) -> Schedule | None:
    """Of the schedules "first poll at a, then every b" (a and b multiples of ``step``; with
    ``on_tick``, a job's polls fall on its own ticks from a), the one with the shortest
    makespan whose polls a job stay within ``polls_per_job``."""
    reach = math.ceil(max(job.seconds for job in jobs) / step) + 2
    best: Schedule | None = None
    for first in (i * step for i in range(1, reach)):
        for every in [0.0] if on_tick else (j * step for j in range(1, reach)):
            seen = [_seen(job, first, every) for job in jobs]
            mean = sum(polls for polls, _ in seen) / len(seen)
            if mean > polls_per_job:
                continue
            span = makespan([held for _, held in seen], slots)
            if best is None or span < best.makespan:
                best = Schedule(first, every, mean, span)
    return best


def _seen(job: Shown, first: float, every: float) -> tuple[int, float]:
    """(polls, seconds after submission of the poll that sees the end) for one job."""
    if every == 0 and job.tick > 0:
        first, every = math.ceil(first / job.tick - 1e-9) * job.tick, job.tick
    polls = 1 + max(0, math.ceil((job.seconds - first) / every - 1e-9))
    return polls, first + (polls - 1) * every
