"""Submitter: sends pending jobs and reports what the gateway's answer (or its absence) proves.

The write-ahead happens at the wire: a job becomes ``submitting`` (durably, with its price
committed and checked against the budget) only once its POST holds a rate token and a
connection, just before its bytes leave. Anything that stops it earlier leaves it ``pending``
with nothing counted. Once on the wire the POST is shielded: a stopping run lets it return
within ``--stop-deadline`` instead of cutting it off. See ``docs/design.md``, sections "Job
lifecycle" and "Who answered".
"""

from __future__ import annotations

import random
import uuid

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from pixazo_batch.context import RunContext
from pixazo_batch.errors import (
    AnswerLostError,
    AuthRefusedError,
    BudgetReachedError,
    FleetFullError,
    HttpStatusError,
    JobTakenError,
    NotSentError,
    SubmitStopError,
)
from pixazo_batch.gateway import RateLimitedError
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import (
    SENDABLE,
    Accepted,
    Action,
    AnswerLost,
    Declined,
    NotSent,
    Outcome,
    Refused,
    Rejected,
    TakenElsewhere,
)
from pixazo_batch.models import GenerationRequest, SubmitAccepted
from pixazo_batch.storage import storage_errors

log = structlog.get_logger(__name__)

#: the service's refusals that say "not now" rather than "never": retried, counted as attempts
_TRY_LATER = frozenset({500})
#: the gateway's answers that say "not now" for reasons not the job's: retried, never counted
_BUSY = frozenset({503})
#: seconds a submitter waits when the fleet has ``--max-in-flight`` jobs in flight
FLEET_FULL_WAIT = 0.2


class _StoppingError(Exception):
    """Raised from the on-wire hook of a run that is stopping: the POST must not leave."""


class _Post:
    """One POST of one job: whether it reached the wire, and the job as it then stood."""

    def __init__(self) -> None:
        self.row: JobRow | None = None
        self.scope = anyio.CancelScope()

    @property
    def on_wire(self) -> bool:
        """True once the ``submitting`` row is durable and the bytes may have left."""
        return self.row is not None


class Submitter:
    """Sends the jobs it receives, one at a time, and hands each outcome to the router."""

    def __init__(self, ctx: RunContext, *, backoff: BackoffPolicy | None = None) -> None:
        self.ctx = ctx
        self.backoff = backoff or BackoffPolicy(base=1.0, cap=60.0)
        self._rng = random.Random()
        #: the last retry is paced by the rate governor already (a 429 paused every sender)
        self._paced = False
        #: the attempt number of the last POST that went on the wire (for the log)
        self._sent_attempt: int | None = None
        #: the POST on the wire, or answered with its outcome not yet recorded
        self._unsettled: anyio.CancelScope | None = None

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Submit every job id received until the run ends (the engine owns the stream)."""
        async for job_id in jobs:
            await self.submit(job_id)

    async def submit(self, job_id: str) -> None:
        """Try the job until the router takes it elsewhere (or to rest)."""
        failures = 0
        while True:
            try:
                outcome = await self.attempt(job_id)
                step = await self.ctx.router.settle(job_id, outcome, from_stage=Action.SUBMIT)
            finally:
                # Only now may a price the POST committed be freed (a 429 withdraws it): a
                # sender waiting for the budget waits until then (``RunContext.posts_on_wire``).
                self._end_post()
            if isinstance(outcome, Accepted):  # logged once recorded: the line states a fact
                log.info(
                    "submitted",
                    job_id=job_id,
                    request_id=outcome.request_id,
                    attempt=self._sent_attempt,
                    state=step.state.value,
                )
            if step.action is not Action.RETRY:
                return
            # A connection refused waits in ``health.ready``; a 429 in the governor.
            if isinstance(outcome, (Refused, Declined)) and not self._paced:
                failures += 1
                await self.ctx.clock.sleep(self.backoff.delay(failures, self._rng))

    async def attempt(self, job_id: str) -> Outcome:
        """One POST of the job, and what its answer proves.

        Raises:
            RunStopError: the key was refused, or the gateway stayed unreachable too long.
        """
        ctx = self.ctx
        row = await self._before_sending(job_id)
        if not isinstance(row, JobRow):
            return row
        await ctx.health.ready(self._probe)
        self._paced = False
        post = _Post()
        try:
            request = await self._sendable(row)
        except ValueError as exc:  # a local image gone or changed: fix it, then run again
            log.error("input_unavailable", job_id=job_id, error=str(exc))
            return NotSent(str(exc), retry=False)
        try:
            accepted = await self._post(row, post, request)
        except _StoppingError:
            return NotSent(ctx.flags.stop_submitting or "the run is stopping", retry=False)
        except NotSentError as exc:
            return NotSent(str(exc), retry=True)
        except (JobTakenError, FleetFullError) as exc:
            return await self._fleet_refusal(job_id, exc)
        except BudgetReachedError as exc:
            if ctx.posts_on_wire:  # one of them may yet be declined and free its price
                await ctx.next_post_end()
                return NotSent(str(exc), retry=True)
            self._stop(job_id, exc)
            return NotSent(str(exc), retry=False)
        except SubmitStopError as exc:
            self._stop(job_id, exc)
            return Declined(str(exc), retry=False) if post.on_wire else NotSent(str(exc), False)
        except AuthRefusedError as exc:
            if post.on_wire:
                await ctx.router.settle(
                    job_id, Declined(str(exc), retry=False), from_stage=Action.SUBMIT
                )
            raise
        except AnswerLostError as exc:
            ctx.health.answer_lost(str(exc))
            log.warning("submit_uncertain", job_id=job_id, attempt=_attempt(post), error=str(exc))
            return AnswerLost(str(exc), callbacks=ctx.webhooks is not None)
        except HttpStatusError as exc:
            return self._refusal(job_id, post, exc)
        return Accepted(accepted.request_id, accepted.polling_url)

    async def _before_sending(self, job_id: str) -> JobRow | Outcome:
        """The job as it stands, or why it is not to be sent now, before a rate token is spent
        on it: the run is stopping, or (a fleet) another worker has it or the fleet is full."""
        if self.ctx.flags.stop_submitting:
            return NotSent(self.ctx.flags.stop_submitting, retry=False)
        # Read once for the whole attempt: the write-ahead checks the job afresh.
        row = self.ctx.store.get(job_id)
        refused = self._fleet_check(job_id, row)
        if refused is not None:
            return await self._fleet_refusal(job_id, refused)
        assert row is not None
        return row

    def _fleet_check(
        self, job_id: str, row: JobRow | None
    ) -> JobTakenError | FleetFullError | None:
        """Why this worker of a fleet cannot send the job (``row``, as just read) now: another
        worker moved it on, or the fleet is full (None: it may try; always, without a
        fleet)."""
        if self.ctx.store.worker is None:
            return None
        if row is None or row.state not in SENDABLE:
            return JobTakenError(f"job {job_id!r} was moved on by another worker")
        if not self.ctx.store.fleet_room():
            return FleetFullError("the fleet has --max-in-flight jobs in flight")
        return None

    async def _fleet_refusal(self, job_id: str, exc: JobTakenError | FleetFullError) -> Outcome:
        """A fleet's answer to the write-ahead: another worker holds the job (it is left to
        it), or the fleet has ``--max-in-flight`` jobs in flight (wait a little, try again)."""
        if isinstance(exc, JobTakenError):
            return TakenElsewhere(str(exc))
        log.debug("fleet_full", job_id=job_id, error=str(exc))
        # A slot of this worker's frees now; another worker's shows within the wait.
        with anyio.move_on_after(FLEET_FULL_WAIT):
            await self.ctx.router.next_slot_freed()
        self.ctx.store.fleet_room(fresh=True)
        return NotSent(str(exc), retry=True)

    def _refusal(self, job_id: str, post: _Post, exc: HttpStatusError) -> Outcome:
        """What a refusal in the gateway's own shape means for the job."""
        attempt = _attempt(post)
        if isinstance(exc, RateLimitedError) or exc.status in _BUSY:
            self._paced = isinstance(exc, RateLimitedError)
            log.info("submit_declined", job_id=job_id, http_status=exc.status, error=str(exc))
            return Declined(str(exc), retry=True)
        if exc.status in _TRY_LATER:
            left = (attempt or 0) < self.ctx.settings.max_attempts
            log.warning("submit_refused", job_id=job_id, attempt=attempt, error=str(exc))
            return Refused(str(exc), attempts_left=left)
        log.warning("submit_rejected", job_id=job_id, attempt=attempt, error=str(exc))
        return Rejected(str(exc))

    def _stop(self, job_id: str, exc: SubmitStopError) -> None:
        """Stop all submissions, saying why once."""
        if self.ctx.flags.stop(str(exc), exc.exit_code):
            log.error(
                "submissions_stopped",
                job_id=job_id,
                http_status=getattr(exc, "status", None),
                error=str(exc),
                retry_after_s=getattr(exc, "retry_after", None),
            )

    async def _sendable(self, row: JobRow) -> GenerationRequest:
        """The job's request as it goes on the wire: local images uploaded (once) and named by
        freshly signed URLs.

        Raises:
            ValueError: an image is gone or changed, or the bucket refused it.
        """
        uploader = self.ctx.uploader
        if uploader is None:
            return row.request
        try:
            return await uploader.sendable(row.request)
        except storage_errors() as exc:
            raise ValueError(f"the inputs bucket refused an image: {exc}") from exc

    async def _post(self, row: JobRow, post: _Post, request: GenerationRequest) -> SubmitAccepted:
        """The POST; shielded from the moment it goes on the wire, so a stopping run lets it
        return (within the stop deadline) rather than cut it off and leave it uncertain."""
        ctx, job_id = self.ctx, row.id
        hooks = ctx.webhooks
        webhook_url = None if hooks is None else hooks.url_for(job_id)

        async def on_wire() -> None:
            if ctx.flags.stop_submitting:
                raise _StoppingError
            # Counted from before its price is committed: a sender refused by the budget in
            # the meantime must wait for this POST, not stop every submission.
            ctx.posts_on_wire.add(post.scope)
            self._unsettled = post.scope
            try:
                # Once durable, the row says the POST left: nothing may cancel it before it does.
                with anyio.CancelScope(shield=True):
                    sent = await ctx.router.on_wire(row, ctx.settings.budget_cents)
            except BaseException:
                self._end_post()  # nothing was committed: this POST never leaves
                raise
            post.row = sent
            self._sent_attempt = sent.attempts
            post.scope.shield = True
            if ctx.flags.interrupted:
                post.scope.deadline = anyio.current_time() + ctx.settings.stop_deadline
            log.debug("submitting", job_id=job_id, attempt=sent.attempts)

        with post.scope:
            return await ctx.gateway.submit(
                request,
                on_wire=on_wire,
                webhook_url=webhook_url,
                webhook_mode=ctx.settings.webhook_mode,
            )
        raise AnswerLostError("the run stopped before the gateway answered")

    def _end_post(self) -> None:
        """This submitter's POST is over and its outcome recorded (or it never left)."""
        if self._unsettled is not None:
            self.ctx.post_ended(self._unsettled)
            self._unsettled = None

    async def _probe(self) -> None:
        """A request that any answer below 500 (a 404 for this made-up id) shows to be heard."""
        await self.ctx.gateway.status(f"health-probe-{uuid.uuid4()}")


def _attempt(post: _Post) -> int | None:
    return None if post.row is None else post.row.attempts
