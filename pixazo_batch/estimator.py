"""When to poll: learned completion times per resolution and duration.

A status request costs a rate-limit token and tells nothing until the job is done, so the first
one is aimed at a high quantile of how long similar jobs took (most first polls then find the job
finished), and later ones are spaced by a fraction of that time, never closer than the poll floor.
Before any job of a kind has finished, a prior stands in, expressed in poll intervals so that it
scales with ``--poll-interval``: the documentation's 5 s interval against its example's 111 s
job, and Ray 2 Flash's reported times per resolution.
"""

from __future__ import annotations

from collections import deque

Kind = tuple[str, str]

#: which quantile of recent completion times the first poll aims at
FIRST_POLL_QUANTILE = 0.8
#: a later poll waits this fraction of the expected time (but at least the poll floor)
LATER_POLL_FRACTION = 0.15
#: recent observations kept per kind
WINDOW = 64
#: evidence needed before the learned times replace the prior
MIN_SAMPLES = 3
#: prior completion time in poll intervals, per resolution, for 5 s videos
PRIOR_INTERVALS = {"540p": 14.0, "720p": 16.0, "1080p": 22.0}
#: 9 s videos take about this much longer
LONG_FACTOR = 1.6


class CompletionEstimator:
    """Learns how long jobs of each kind take from submit to a visible terminal status."""

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._samples: dict[Kind, deque[float]] = {}

    def observe(self, kind: Kind, seconds: float) -> None:
        """Record one job's submit-to-terminal time."""
        self._samples.setdefault(kind, deque(maxlen=WINDOW)).append(seconds)

    def expected(self, kind: Kind) -> float:
        """Seconds by which most jobs of this kind were seen finished."""
        samples = self._samples.get(kind)
        if samples is None or len(samples) < MIN_SAMPLES:
            return self._prior(kind)
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(FIRST_POLL_QUANTILE * len(ordered)))]

    def first_poll(self, kind: Kind, elapsed: float) -> float:
        """Seconds to wait before the first status request of a job submitted ``elapsed`` ago."""
        return max(self.poll_interval, self.expected(kind)) - elapsed

    def later_poll(self, kind: Kind) -> float:
        """Seconds between later status requests of a job not yet finished."""
        return max(self.poll_interval, LATER_POLL_FRACTION * self.expected(kind))

    def _prior(self, kind: Kind) -> float:
        resolution, duration = kind
        intervals = PRIOR_INTERVALS.get(resolution, max(PRIOR_INTERVALS.values()))
        if duration != "5s":
            intervals *= LONG_FACTOR
        return intervals * self.poll_interval
