"""RateGovernor: one pace for every request to the gateway, adapted to what the gateway says.

A token bucket refills at the current rate. A 429 pauses every sender until the announced
``Retry-After`` (or a full-jitter exponential back-off when none is given) and halves the rate
(multiplicative decrease); each success adds back a small constant step (additive increase) up to
the configured ceiling, the AIMD scheme TCP congestion control uses. Waiters are served in arrival
order (``anyio.Lock`` is fair), so polls never starve submissions nor the reverse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import anyio

#: float slack, so rounding never leaves a waiter sleeping for a vanishing fraction forever
_EPSILON = 1e-9
#: successes needed to climb back from a halved rate to the rate that was cut (about 1.5% 429s)
RECOVERY_STEPS = 64


class Clock(Protocol):
    """Time source of the governor and the poller; tests inject a virtual one."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class MonotonicClock:
    """The event loop's clock."""

    def now(self) -> float:
        """Seconds on the event loop's monotonic clock."""
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of real time."""
        await anyio.sleep(seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """Full-jitter exponential back-off: a uniform wait in ``[0, min(cap, base * 2**n)]``."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after ``failures`` consecutive failures (``failures >= 1``)."""
        return rng.uniform(0, min(self.cap, self.base * 2 ** max(0, failures - 1)))


class RateGovernor:
    """Paces every gateway request: token bucket, shared 429 pause, AIMD rate.

    Usage: ``await governor.acquire()`` before each request, then ``governor.on_success()`` or
    ``governor.on_rate_limited(retry_after)`` with what the answer said.
    """

    def __init__(
        self,
        rps: float,
        *,
        clock: Clock | None = None,
        backoff: BackoffPolicy | None = None,
        min_rps: float = 0.05,
        seed: int | None = None,
    ) -> None:
        if rps <= 0:
            raise ValueError("rps must be positive")
        self.clock: Clock = clock or MonotonicClock()
        self.max_rps = rps
        self.rate = rps
        self.min_rps = min(min_rps, rps)
        self.backoff = backoff or BackoffPolicy()
        self._rng = random.Random(seed)
        self._tokens = 1.0
        self._stamp = self.clock.now()
        self._paused_until = -float("inf")
        self._step = rps / RECOVERY_STEPS
        self._consecutive_429 = 0
        self._lock = anyio.Lock()

    @property
    def paused_until(self) -> float:
        """Clock time before which no request may start."""
        return self._paused_until

    async def acquire(self) -> None:
        """Wait until a request may start: after any announced pause, within the rate."""
        async with self._lock:
            while True:
                now = self.clock.now()
                if now < self._paused_until:
                    await self.clock.sleep(self._paused_until - now)
                    continue
                self._refill(now)
                if self._tokens >= 1 - _EPSILON:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self.clock.sleep((1 - self._tokens) / self.rate)

    def _refill(self, now: float) -> None:
        # A burst of at most one second's worth keeps a recovered rate from overshooting.
        self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def on_success(self) -> None:
        """A request was answered without 429: recover the rate additively."""
        self._consecutive_429 = 0
        self.rate = min(self.max_rps, self.rate + self._step)

    def on_rate_limited(self, retry_after: float | None) -> float:
        """A 429 arrived: pause everyone and cut the rate. Returns the pause in seconds."""
        now = self.clock.now()
        self._consecutive_429 += 1
        if retry_after is None:
            wait = self.backoff.delay(self._consecutive_429, self._rng)
        else:
            wait = max(0.0, retry_after)
        self._paused_until = max(self._paused_until, now + wait)
        self._step = max(self.rate / 2, self.min_rps) / RECOVERY_STEPS
        self.rate = max(self.min_rps, self.rate / 2)
        self._refill(now)
        self._tokens = 0.0
        return wait
