"""When to poll: one speed model shared by every kind of job, learned once and kept.

A status request costs a rate-limit token and tells nothing until the job is done, so the first
one is aimed at a high quantile of how long jobs take (most first polls then find the job
finished), and later ones are spaced by a fraction of that time, never closer than the poll
floor. Kinds of job (resolution and duration) differ by a fixed **shape**, Ray 2 Flash's relative
render times; what is learned is one **scale**, in seconds, so the first finished job of any
kind informs all of them. Each observation is divided by its kind's shape and kept in the state
file per gateway (``speed_samples``), so the next night starts where the last one ended.

Until anything is known, the first jobs of a run scout: they poll at the floor, then at twice
it, four times, ... after submission (a geometric series), which finds a one-second job at the
first poll and a two-minute one within a few; the other jobs wait on a prior (14 poll floors),
and every waiting job is re-planned the moment a scout finishes (later, only when the learned
scale moves by more than ``REPLAN_CHANGE``: each re-plan visits every waiting job). The first
jobs of every run scout even when a model was kept, until a job of that run finishes, so a model
kept from a night when the gateway was slow cannot hold a faster gateway's jobs back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

Kind = tuple[str, str]

#: which quantile of the learned scale the first poll aims at
FIRST_POLL_QUANTILE = 0.8
#: a later poll waits this fraction of the expected time (but at least the poll floor)
LATER_POLL_FRACTION = 0.15
#: recent observations kept (and persisted) per gateway
WINDOW = 64
#: render time of each resolution relative to 540p (Ray 2 Flash's reported medians, 35/45/70 s)
RESOLUTION_SHAPE = {"540p": 1.0, "720p": 45 / 35, "1080p": 70 / 35}
#: a 9-second video takes about this much longer than a 5-second one
LONG_FACTOR = 1.7
#: the scouting series doubles from the poll floor, up to this many floors between polls
SCOUT_CEILING = 32
#: before anything is known, a job that is not scouting first waits this many poll floors
#: (times its shape): the documentation's 5 s interval against its example's 111 s job
PRIOR_FLOORS = 14.0
#: the scale plans use moves only when what was learned moves it by more than this fraction:
#: every move re-plans every waiting job, and a plan a few percent off costs less than the jitter
REPLAN_CHANGE = 0.05


def shape(kind: Kind) -> float:
    """How long a job of ``kind`` takes, relative to a 540p, 5-second one."""
    resolution, duration = kind
    factor = RESOLUTION_SHAPE.get(resolution, max(RESOLUTION_SHAPE.values()))
    return factor * (LONG_FACTOR if duration != "5s" else 1.0)


class CompletionEstimator:
    """Learns one speed scale from finished jobs and plans each job's polls from it.

    Usage: ``estimator.observe(kind, seconds)`` for each finished job; ``estimator.first_poll``
    and ``estimator.later_poll`` give the next poll's time after submission.
    """

    def __init__(self, poll_interval: float, scales: Iterable[float] = ()) -> None:
        self.poll_interval = poll_interval
        #: what earlier runs learned: used until this run learns something of its own, since the
        #: gateway may be faster or slower tonight
        self._kept: list[float] = [s for s in scales if s > 0][-WINDOW:]
        self._scales: deque[float] = deque(maxlen=WINDOW)
        #: the scale plans use (seconds a 540p, 5-second job takes; None before anything is known)
        self._scale = _quantile(self._kept)
        #: bumped whenever the scale plans use moves, so waiting polls can be re-planned; the
        #: first job this run sees finish always bumps it
        self.version = 0

    @property
    def scales(self) -> list[float]:
        """The most recent scales, oldest first (what the state file keeps for the next run)."""
        return [*self._kept, *self._scales][-WINDOW:]

    def observe(self, kind: Kind, seconds: float) -> None:
        """Record one job's submit-to-terminal time."""
        if seconds <= 0:
            return
        self._scales.append(seconds / shape(kind))
        learned = _quantile(self._scales)
        assert learned is not None
        moved = self._scale is None or abs(learned - self._scale) > REPLAN_CHANGE * self._scale
        if moved or self.version == 0:
            self._scale = learned
            self.version += 1

    def expected(self, kind: Kind) -> float | None:
        """Seconds by which most jobs of this kind are done; None before anything is known."""
        return None if self._scale is None else self._scale * shape(kind)

    def first_poll(self, kind: Kind) -> float:
        """Seconds after submission of a job's first status request (before anything is known,
        a prior: the scouts find the real figure long before it)."""
        return max(self.poll_interval, self._expected_or_prior(kind))

    def later_poll(self, kind: Kind, since_submit: float) -> float:
        """Seconds after submission of the next status request of a job found unfinished
        ``since_submit`` seconds after it was sent."""
        # A job still unfinished past the expected time shows the estimate short for it: space
        # its polls by the time it has already taken instead.
        spacing = LATER_POLL_FRACTION * max(self._expected_or_prior(kind), since_submit)
        return since_submit + max(self.poll_interval, spacing)

    def _expected_or_prior(self, kind: Kind) -> float:
        expected = self.expected(kind)
        if expected is None:
            return PRIOR_FLOORS * shape(kind) * max(self.poll_interval, 1e-3)
        return expected

    def scout_poll(self, since_submit: float | None) -> float:
        """The scouting schedule: the poll floor after submission, then double the time since
        submission at each unfinished poll (at most ``SCOUT_CEILING`` floors apart)."""
        floor = max(self.poll_interval, 1e-3)
        if since_submit is None:
            return floor
        return since_submit + min(max(floor, since_submit), SCOUT_CEILING * floor)


def _quantile(scales: Iterable[float]) -> float | None:
    """The scale most jobs finish within (``FIRST_POLL_QUANTILE``); None for no scales."""
    known = sorted(scales)
    return known[min(len(known) - 1, int(FIRST_POLL_QUANTILE * len(known)))] if known else None
