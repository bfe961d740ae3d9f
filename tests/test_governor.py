"""RateGovernor on a virtual clock: pacing, the shared 429 pause, and AIMD."""

from __future__ import annotations

import itertools
from functools import partial

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


async def test_requests_are_paced_just_under_the_configured_rate() -> None:
    """Never exactly at it: the 21st request of a key allowed 10 a second is granted 2% later
    than 2 s, room for a new connection's set-up to delay the first without a 429."""
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    for _ in range(21):
        await governor.acquire()
    assert clock.time == pytest.approx(2.0 / 0.98, abs=0.01)


class LateClock(VirtualClock):
    """Wakes every sleeper 3 ms late, as a busy event loop does."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + 0.003)


async def test_a_loop_that_wakes_sleepers_late_costs_no_pace() -> None:
    """Each grant keeps the pace's schedule: twenty intervals take twenty intervals and one
    late wake-up, not twenty late wake-ups (4-10% of the pace on a busy loop)."""
    clock = LateClock()
    governor = RateGovernor(10.0, clock=clock)
    for _ in range(21):
        await governor.acquire()
    assert clock.time == pytest.approx(2.0 / 0.98 + 0.003, abs=0.001)


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


async def test_many_pollers_never_starve_a_submitter_nor_the_reverse() -> None:
    """Grants go in arrival order: a lone submitter waiting behind 30 busy pollers gets a
    request through every 31 grants, and the pollers keep theirs while submits queue."""
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    grants: list[str] = []

    async def sender(kind: str) -> None:
        while len(grants) < 310:
            await governor.acquire()
            grants.append(kind)

    async with anyio.create_task_group() as group:
        for _ in range(30):
            group.start_soon(sender, "poll")
        group.start_soon(sender, "submit")
    submits = [i for i, kind in enumerate(grants) if kind == "submit"]
    assert len(submits) >= 9
    assert max(b - a for a, b in itertools.pairwise(submits)) <= 31
    assert grants.count("poll") >= 270


async def test_a_status_read_goes_before_submits_waiting_for_a_token() -> None:
    """A poll may free a slot the submits wait for: it is granted right after the one submit
    already waiting for the next token, not after the whole queue."""
    clock = VirtualClock()
    governor = RateGovernor(1.0, clock=clock)
    grants: list[str] = []

    async def sender(name: str, *, ahead: bool = False) -> None:
        await governor.acquire(ahead=ahead)
        grants.append(name)

    async with anyio.create_task_group() as group:
        for name in ("submit-1", "submit-2", "submit-3", "submit-4"):
            group.start_soon(sender, name)
        while clock.now() == 0:  # until the submits queue, one of them waiting for a token
            await anyio.lowlevel.checkpoint()
        group.start_soon(partial(sender, "poll", ahead=True))
    assert grants == ["submit-1", "submit-2", "poll", "submit-3", "submit-4"]


async def test_a_worker_given_a_small_share_has_no_token_saved_at_the_whole_keys_rate() -> None:
    """A worker joining a fleet starts with the key's whole rate until it learns its share:
    sending at once on a token saved at that rate would go past its part."""
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    governor.share(0.5)
    await governor.acquire()
    # what is left of the token, 0.95, at 0.5 a second (paced at 98% of it)
    assert clock.now() == pytest.approx(0.95 / (0.98 * 0.5))


async def test_a_request_waiting_at_a_low_rate_goes_soon_after_the_rate_grows() -> None:
    """A fleet worker's share grows when another leaves: a wait worked out at the old rate
    (ten seconds for a token at 0.1 a second) must not be served out in full."""
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    governor.share(0.1)  # and the token saved at the whole key's rate is gone with it
    granted: list[float] = []

    async def waiter() -> None:
        await governor.acquire()
        granted.append(clock.now())

    async def grow_at_one_second() -> None:
        while clock.now() < 1.0:
            await anyio.lowlevel.checkpoint()
        governor.share(10.0)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(grow_at_one_second)
    assert granted[0] <= 1.5


async def test_rate_halves_on_429_and_recovers_additively_to_the_served_ceiling() -> None:
    clock = VirtualClock()
    governor = RateGovernor(40.0, clock=clock)
    for _ in range(40):  # 10 requests a second served for four seconds
        clock.time += 0.1
        governor.on_success()
    governor.on_rate_limited(0.0)
    assert governor.rate == pytest.approx(9.5, rel=0.06), "cut to 95% of what was being served"
    assert governor.ceiling == governor.rate
    cut = governor.rate
    for _ in range(40):  # served at the cut rate for four more seconds
        clock.time += 1 / cut
        governor.on_success()
    governor.on_rate_limited(0.0)
    assert governor.rate == pytest.approx(cut / 2, rel=0.02), "multiplicative decrease"
    ceiling, low = governor.ceiling, governor.rate
    governor.on_success()
    first_step = governor.rate - low
    governor.on_success()
    assert governor.rate - low == pytest.approx(2 * first_step), "constant step: additive"
    for _ in range(1000):
        governor.on_success()
    assert governor.rate == pytest.approx(ceiling), "climbs back to the ceiling, no further"


async def test_the_ceiling_creeps_up_with_time_but_never_past_the_configured_rate() -> None:
    clock = VirtualClock()
    governor = RateGovernor(8.0, clock=clock)
    governor.on_rate_limited(0.0)
    assert governor.ceiling == pytest.approx(4.0), "nothing served: half the rate"
    clock.time += 100.0
    governor.on_success()
    assert 4.0 < governor.ceiling < 8.0
    for _ in range(100):
        clock.time += 100.0
        governor.on_success()
    assert governor.rate == pytest.approx(8.0)


async def test_a_fleet_worker_learns_no_ceiling_while_its_share_is_a_guess() -> None:
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    governor.share(10.0)  # a worker of a fleet that has seen no other worker yet
    governor.on_rate_limited(0.0)
    assert governor.ceiling == pytest.approx(10.0), "a 429 before any success: nothing learned"
    for _ in range(7):  # others starting with it sent too: the key's limit is hit early
        clock.time += 0.1
        governor.on_success()
    before = governor.rate
    governor.on_rate_limited(0.0)
    assert governor.ceiling == pytest.approx(10.0), "its own 7 a second say nothing of the key"
    assert governor.rate == pytest.approx(before / 2), "the rate is still halved"
    for _ in range(40):  # a steady share, served at 8 a second: now the limit is known
        clock.time += 1 / 8
        governor.on_success()
    governor.on_rate_limited(0.0)
    assert governor.ceiling == pytest.approx(0.97 * 8, rel=0.07)


async def test_a_fleet_worker_learns_no_ceiling_while_its_share_moves() -> None:
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    governor.share(3.0)
    for share in (3.0, 3.0, 3.0, 6.0, 9.0, 9.0):  # its share tripled as it took on jobs
        governor.share(share)
        for _ in range(int(share)):
            clock.time += 1 / share
            governor.on_success()
    governor.on_rate_limited(0.0)
    assert governor.ceiling == pytest.approx(9.0)


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


async def test_a_request_that_leaves_late_moves_the_next_grant_back() -> None:
    """A POST writes its job ahead between its grant and its departure: when that write takes
    50 ms, the next request is granted one interval after the departure, not the grant (the
    gateway counts arrivals)."""
    clock = VirtualClock()
    governor = RateGovernor(10.0, clock=clock)
    await governor.acquire()
    writing_since = clock.now()
    clock.time += 0.05
    governor.departed(writing_since)
    await governor.acquire()
    assert clock.time == pytest.approx(0.05 + 1 / (0.98 * 10))
