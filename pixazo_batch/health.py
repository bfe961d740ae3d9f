"""GatewayHealth: whether submitting may go on, and how long the gateway has been out of reach.

Two things pause submissions. A submit whose answer was lost (the backend may be failing after
taking the job) pauses them until any request is answered again, so an outage costs at most the
submissions already in flight. A refused connection (DNS, refused, TLS) pauses them too, and the
gateway is then out of reach until a request is answered; after ``--outage-deadline`` seconds of
that, the run stops (exit 3) and the untouched jobs stay ``pending``. While paused, one probe (a
status request for a made-up id: any answer below 500 will do) retries with full-jitter back-off;
polls and downloads go on where they can. See ``docs/design.md``, section "Outages".

The media host (``MediaHostHealth``) and a bucket (``bucketsink.BucketHealth``) are watched the
same way: a refused connection holds the calls that need them behind one probe, spends no try,
and past the deadline stops the run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
import structlog

from pixazo_batch.errors import (
    GatewayUnreachableError,
    RequestError,
    RunStopError,
    ServiceUnreachableError,
)
from pixazo_batch.governor import BackoffPolicy, Clock

log = structlog.get_logger(__name__)


class GatewayHealth:
    """Shared by every request to the gateway: answers mark it sound, refused connections and
    lost answers pause submissions (a subclass watches another ``service`` the same way).

    Usage: the gateway client calls ``answered()`` / ``unreachable()``; the submitter calls
    ``await ready(probe)`` before each POST and ``answer_lost()`` after losing an answer.
    """

    #: the service watched, as named in log events and messages
    service = "gateway"
    #: what stops the run once the service has been out of reach past the deadline
    outage_error: type[RunStopError] = GatewayUnreachableError

    def __init__(
        self,
        *,
        outage_deadline: float,
        clock: Clock,
        backoff: BackoffPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        self.outage_deadline = outage_deadline
        self.clock = clock
        self.backoff = backoff or BackoffPolicy(base=1.0, cap=60.0)
        self._rng = random.Random(seed)
        self._sound = anyio.Event()
        self._sound.set()
        self._probing = False
        #: when the gateway stopped taking connections (clock time), while it does not
        self.down_since: float | None = None
        #: why submitting is paused, while it is
        self.reason: str | None = None
        #: when the next probe goes (clock time), while submitting is paused
        self.next_try_at: float | None = None

    @property
    def sound(self) -> bool:
        """True while submitting may go on."""
        return self._sound.is_set()

    def answered(self) -> None:
        """The gateway answered a request (below 500): it is reachable and its backend works."""
        self.down_since = None
        if not self._sound.is_set():
            log.info(f"{self._event}_back", paused_for=self.reason)
            self.reason = self.next_try_at = None
            self._sound.set()

    def unreachable(self, reason: str) -> None:
        """A connection to the service could not be made.

        Raises:
            GatewayUnreachableError: (``outage_error``) it has been so for longer than the
                outage deadline.
        """
        now = self.clock.now()
        if self.down_since is None:
            self.down_since = now
        self._pause(f"{self.service} unreachable: {reason}")
        if now - self.down_since > self.outage_deadline:
            raise self.outage_error(
                f"the {self.service} could not be reached for {now - self.down_since:.0f} s "
                f"(--outage-deadline {self.outage_deadline:g}): {reason}"
            )

    def answer_lost(self, reason: str) -> None:
        """A submit's answer was lost: submit nothing more until a request is answered."""
        self._pause(f"a submit's answer was lost: {reason}")

    async def ready(self, probe: Callable[[], Awaitable[object]]) -> None:
        """Return once submitting may go on. While it may not, the first caller probes with
        back-off and the others wait for the outcome.

        Raises:
            GatewayUnreachableError: the outage outlasted the deadline.
        """
        failures = 0
        while not self._sound.is_set():
            if self._probing:
                await self._sound.wait()
                continue
            self._probing = True
            try:
                failures += 1
                delay = self.backoff.delay(failures, self._rng)
                self.next_try_at = self.clock.now() + delay
                down = self.down_since is not None
                event = f"{self._event}_unreachable" if down else "submits_paused"
                log.warning(event, reason=self.reason, next_try_s=round(delay, 1))
                await self.clock.sleep(delay)
                # An answer, even a 404, has already marked the gateway sound.
                with contextlib.suppress(RequestError):
                    await probe()
            finally:
                self._probing = False

    @property
    def _event(self) -> str:
        return self.service.replace(" ", "_")

    def _pause(self, reason: str) -> None:
        if self._sound.is_set():
            self._sound = anyio.Event()
            self.reason = reason


class MediaHostHealth(GatewayHealth):
    """Shared by every download of a run: a connection the media host refuses (or does not
    make in time) pauses them until it answers again, without spending a video's tries, and
    past ``--outage-deadline`` stops the run (exit 3); the next run downloads what is left."""

    service = "media host"
    outage_error = ServiceUnreachableError
    #: what a media request raises when no connection could be made (in time)
    REFUSED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

    def __init__(
        self, session: aiohttp.ClientSession, *, outage_deadline: float, clock: Clock
    ) -> None:
        super().__init__(outage_deadline=outage_deadline, clock=clock)
        self._session = session

    async def probe(self, url: str) -> None:
        """Ask for the first byte of the video at ``url``: any answer shows the host back.

        Raises:
            ServiceUnreachableError: the host has been out of reach past the deadline.
        """
        try:
            async with self._session.get(url, headers={"Range": "bytes=0-0"}):
                pass  # the status line is the answer; the body is not read
        except self.REFUSED as exc:
            self.unreachable(f"{type(exc).__name__}: {exc}")
            return
        except (aiohttp.ClientError, TimeoutError):
            pass  # the host took the connection
        self.answered()
