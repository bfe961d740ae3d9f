"""RateGovernor on a virtual clock: pacing, the shared 429 pause, and AIMD."""

from __future__ import annotations

import anyio
import pytest

from pixazo_batch.governor import BackoffPolicy, RateGovernor

pytestmark = pytest.mark.anyio


class VirtualClock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


async def test_requests_are_paced_at_the_configured_rate() -> None:
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    for _ in range(21):
        await governor.acquire()
    assert clock.time == pytest.approx(2.0, abs=0.01)


async def test_a_429_pauses_every_sender_until_retry_after() -> None:
    clock = VirtualClock()
    governor = RateGovernor(100.0, clock=clock)
    await governor.acquire()
    governor.on_rate_limited(7.0)
    starts: list[float] = []

    async def sender() -> None:
        await governor.acquire()
        starts.append(clock.now())

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(sender)
    assert min(starts) >= 7.0


async def test_rate_halves_on_429_and_recovers_additively() -> None:
    governor = RateGovernor(8.0, clock=VirtualClock())
    governor.on_rate_limited(0.0)
    assert governor.rate == pytest.approx(4.0)
    governor.on_success()
    first_step = governor.rate - 4.0
    governor.on_success()
    assert governor.rate - 4.0 == pytest.approx(2 * first_step), "constant step: additive"
    for _ in range(10_000):
        governor.on_success()
    assert governor.rate == pytest.approx(8.0), "never above the configured ceiling"


async def test_missing_retry_after_uses_growing_jittered_backoff() -> None:
    governor = RateGovernor(
        8.0, clock=VirtualClock(), backoff=BackoffPolicy(base=1.0, cap=60.0), seed=3
    )
    waits = [governor.on_rate_limited(None) for _ in range(8)]
    assert all(0 <= wait <= 60 for wait in waits)
    assert max(waits[5:]) > max(waits[:2]), "the ceiling of the jitter grows"


def test_rps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateGovernor(0)
