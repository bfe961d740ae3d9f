"""RateGovernor: one pace for every request to the gateway, adapted to what the gateway says.

A token bucket refills at the current rate. A 429 pauses every sender until the announced
``Retry-After`` (or a full-jitter exponential back-off when none is given) and halves the rate
(multiplicative decrease); each success adds back a small constant step (additive increase), the
AIMD scheme of TCP congestion control. Like TCP's slow-start threshold, a 429 also leaves a
ceiling just under the throughput that was actually being served when it came: the rate climbs
back quickly to that ceiling and the ceiling itself creeps up only slowly (a fraction of a per
cent a second), because with whole-second ``Retry-After`` values every probe that overshoots
stops all senders for a second. Waiters are served in arrival order (``anyio.Lock`` is fair), so
polls never starve submissions nor the reverse. A waiter takes its token when it was due, not
when the event loop woke it, so a busy loop's late wake-ups do not slow the pace.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import anyio

#: float slack, so rounding never leaves a waiter sleeping for a vanishing fraction forever
_EPSILON = 1e-9
#: the governor never paces above this share of the configured rate: requests leave on this
#: clock and are counted where they arrive, and a sliding window at exactly the limit turns
#: a few milliseconds of jitter (a new connection's set-up) into a 429 that pauses every sender
HEADROOM = 0.98
#: successes needed to climb back from a halved rate to the rate that was cut
RECOVERY_STEPS = 32
#: the ceiling left by a 429, as a share of the throughput served just before it
CEILING_SHARE = 0.97
#: how fast the ceiling creeps up while no 429 arrives, per second
CEILING_CREEP = 0.001
#: the window over which served throughput is measured
SERVED_WINDOW = 2.0
#: a fleet worker's share counts as steady while it moves by no more than this factor
STEADY_SHARE = 1.1
#: never measure throughput over less than this: a fresh window lets a burst through that the
#: limit will not sustain
MIN_SERVED_SPAN = 1.0
#: a request waiting for a token looks again at least this often (seconds): the rate may have
#: grown meanwhile (a fleet's share, a recovery), and a wait worked out at the old rate is long
TOKEN_LOOK = 0.25
#: how late a waiting request may wake and still keep the pace's schedule (seconds): the event
#: loop wakes a sleeper a few ms late, and a busy loop lost 4-10% of the pace to that lateness
#: (small next to the headroom, so arrivals stay under the gateway's window)
LATE_CARRY = 0.005


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
        self._ceiling = rps
        self._ceiling_stamp = self._stamp
        #: when each recent success came, and the share of the key's rate this process had then
        self._served: deque[tuple[float, float]] = deque()
        self._first_success = -float("inf")
        #: whether this process is one worker of a fleet sharing the key's rate
        self._in_fleet = False
        self._lock = anyio.Lock()
        #: requests without priority wait here, one at a time at ``_lock``
        self._queue = anyio.Lock()

    @property
    def paused_until(self) -> float:
        """Clock time before which no request may start."""
        return self._paused_until

    def hold(self, seconds: float) -> None:
        """Let no request start for ``seconds`` (what is left of a pause announced earlier)."""
        self._paused_until = max(self._paused_until, self.clock.now() + seconds)

    def share(self, rps: float) -> None:
        """Take ``rps`` as this process's part of the key's rate (a fleet of workers shares
        one key): the rate and its ceiling never exceed it."""
        self._in_fleet = True
        before, self.max_rps = self.max_rps, max(self.min_rps, rps)
        # What was learned of the limit scales with the share (a worker leaving frees its part).
        scale = self.max_rps / before
        self._ceiling = min(self._ceiling * scale, self.max_rps)
        self.rate = max(self.min_rps, min(self.rate * scale, self._ceiling))
        # A token saved up at the larger share is not this worker's to spend at the smaller
        # one: a worker joining a fleet at a small share would send at once, above its part.
        self._tokens *= min(1.0, scale)
        self._step = max(self.rate, self.min_rps) / RECOVERY_STEPS

    async def acquire(self, *, ahead: bool = False) -> None:
        """Wait until a request may start: after any announced pause, within the rate. With
        ``ahead`` (a status read, which may free a slot) it goes before every request waiting
        without it but one, which goes before every later one: nobody starves."""
        if ahead:
            await self._take()
            return
        async with self._queue:
            await self._take()

    def departed(self, since: float) -> None:
        """A request held since ``since`` by its write-ahead (a ``submitting`` row made durable)
        leaves only now: later grants move back by that delay, up to one token, so the gateway,
        counting requests where they arrive, sees them no closer together than the pace. (Time
        spent waiting for a connection is not counted: while connections are the bound, the
        same wait delays every request alike.)"""
        delay = self.clock.now() - since
        if delay > 0:
            self._tokens -= min(1.0, delay * self.pace)

    async def _take(self) -> None:
        async with self._lock:
            waited = False
            while True:
                now = self.clock.now()
                if now < self._paused_until:
                    await self.clock.sleep(self._paused_until - now)
                    waited = False  # a pause is an idle spell: nothing is carried over it
                    continue
                # A request that slept for its token takes it when it was due, not when the
                # loop woke it: the time it woke late goes to the next one.
                self._refill(now, carry=LATE_CARRY * self.pace if waited else 0.0)
                if self._tokens >= 1 - _EPSILON:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                waited = True
                await self.clock.sleep(min(TOKEN_LOOK, (1 - self._tokens) / self.pace))

    @property
    def pace(self) -> float:
        """Requests per second the governor lets through now: the rate, with headroom under
        the configured one."""
        return min(self.rate, HEADROOM * self.max_rps)

    def _refill(self, now: float, carry: float = 0.0) -> None:
        # No bursts: a limit counted over a sliding window is overrun by a burst after an idle
        # spell even when the average rate is below it. Only ``carry`` (a fraction of a token,
        # the lateness of a waiter's wake-up) may be saved beyond one token.
        self._tokens = min(1.0 + min(carry, 0.5), self._tokens + (now - self._stamp) * self.pace)
        self._stamp = now

    @property
    def ceiling(self) -> float:
        """The rate the governor climbs back to after a 429."""
        return self._ceiling

    def on_success(self) -> None:
        """A request was answered without 429: recover the rate additively, up to the ceiling."""
        now = self.clock.now()
        self._consecutive_429 = 0
        if not self._served and self._first_success == -float("inf"):
            self._first_success = now
        self._served.append((now, self.max_rps))
        while self._served[0][0] < now - SERVED_WINDOW:  # only the window is ever read
            self._served.popleft()
        self._ceiling = min(
            self.max_rps, self._ceiling * (1 + CEILING_CREEP * (now - self._ceiling_stamp))
        )
        self._ceiling_stamp = now
        self.rate = min(self._ceiling, self.rate + self._step)

    def on_rate_limited(self, retry_after: float | None) -> float:
        """A 429 arrived: pause everyone and cut the rate. Returns the pause in seconds."""
        now = self.clock.now()
        # Requests sent before the pause began answer 429 too: one congestion event, one cut.
        already_pausing = now < self._paused_until
        self._consecutive_429 += 1
        if retry_after is None:
            wait = self.backoff.delay(self._consecutive_429, self._rng)
        else:
            wait = max(0.0, retry_after)
        previous_pause_end = self._paused_until
        self._paused_until = max(self._paused_until, now + wait)
        if already_pausing:
            return wait
        # Throughput over the window, counted only since the run began and since the last pause
        # ended: idle seconds would make the limit look lower than it is.
        since = max(now - SERVED_WINDOW, self._first_success, previous_pause_end)
        while self._served and self._served[0][0] < since:
            self._served.popleft()
        if self._share_was_steady(now):
            # Each success counted against the share this process had when it came: what is
            # learned is the part of the share that was served.
            share_served = sum(1 / share for _, share in self._served)
            served = self.max_rps * share_served / max(MIN_SERVED_SPAN, now - since)
            self._ceiling = max(self.min_rps, CEILING_SHARE * served if served else self.rate / 2)
            self._ceiling_stamp = now
        self.rate = max(self.min_rps, min(self.rate / 2, self._ceiling))
        self._step = max(self.rate, self.min_rps) / RECOVERY_STEPS
        self._refill(now)
        self._tokens = 0.0
        return wait

    def _share_was_steady(self, now: float) -> bool:
        """Whether this process's share of the key's rate held over the window before a 429, so
        that what it served says where the key's limit is. A fleet worker's share is a guess in
        its first seconds (workers starting together each count themselves alone until they
        see the others) and while it moves: another worker's requests may have brought the 429."""
        if not self._in_fleet:
            return True
        shares = [share for _, share in self._served]
        if not shares or now - self._first_success < SERVED_WINDOW:
            return False  # nothing served yet, or too soon to have seen the other workers
        return max(shares) <= STEADY_SHARE * min(shares)
