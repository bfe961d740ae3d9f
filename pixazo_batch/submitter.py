"""Submitter: pending -> submitting -> submitted | uncertain | failed (DESIGN sections 3 and 4).

The ``submitting`` row is durable before the POST leaves; the answer decides whether money may
have been taken. Only an answer that proves the job was not created (a refusal in the service's
own shape, or a connection that never opened) lets the job be sent again.
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
    BalanceError,
    GatewayError,
    HttpStatusError,
    NotSentError,
    QuotaExhaustedError,
    StateWriteError,
)
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.models import GenerationRequest, SubmitAccepted

log = structlog.get_logger(__name__)

#: 4xx answers that mean "this job, as written, will never be accepted"
_REJECTED = frozenset({400, 404, 409, 413, 415, 422})


class Submitter:
    """Sends pending jobs to the gateway, at most ``max_in_flight`` unfinished at once."""

    def __init__(self, ctx: RunContext, *, backoff: BackoffPolicy | None = None) -> None:
        self.ctx = ctx
        self.backoff = backoff or BackoffPolicy(base=1.0, cap=60.0)
        self._rng = random.Random()

    async def run(self, jobs: MemoryObjectReceiveStream[str]) -> None:
        """Submit every job id received until the run ends (the engine owns the stream)."""
        async for job_id in jobs:
            await self.submit(job_id)

    async def submit(self, job_id: str) -> None:
        """Take one pending job to ``submitted`` (and on to the poller) or to a resting state."""
        ctx = self.ctx
        if ctx.flags.stop_submitting:
            ctx.ledger.leave()
            return
        await ctx.in_flight.acquire_on_behalf_of(job_id)
        handed_on = False
        try:
            handed_on = await self._submit_with_retries(job_id)
        finally:
            if not handed_on:
                ctx.in_flight.release_on_behalf_of(job_id)
                ctx.ledger.leave()

    async def _submit_with_retries(self, job_id: str) -> bool:
        ctx = self.ctx
        failures = 0
        while True:
            await self._wait_for_healthy_gateway()
            if ctx.flags.stop_submitting:
                return False
            row = ctx.store.begin_submit(job_id, ctx.settings.budget_cents)
            if row is None:
                ctx.flags.stop("--max-spend reached")
                log.warning("budget_reached", job_id=job_id, cap_usd=str(ctx.settings.max_spend))
                return False
            log.debug("submitting", job_id=job_id, attempt=row.attempts)
            try:
                accepted = await self._post(job_id, row.request)
            except NotSentError as exc:
                retry = self._refused(job_id, row.attempts, str(exc), retryable=True)
            except AnswerLostError as exc:
                ctx.store.submit_uncertain(job_id, str(exc))
                ctx.gateway.mark_unhealthy()
                log.warning("submit_uncertain", job_id=job_id, attempt=row.attempts, error=str(exc))
                if ctx.webhooks is None:
                    return False
                # The gateway's callback names the request if the job was created (it may have
                # come already, while the POST was out): the poller looks for it, waits up to
                # --uncertain-wait, and the job is then tracked without being paid for twice.
                await ctx.queues.poll.send(job_id)
                return True
            except (BalanceError, QuotaExhaustedError) as exc:
                ctx.store.submit_refused(job_id, str(exc), final=False)
                ctx.flags.stop(str(exc))
                log.error(
                    "submissions_stopped",
                    job_id=job_id,
                    http_status=exc.status,
                    error=str(exc),
                    retry_after_s=exc.retry_after,
                )
                return False
            except AuthRefusedError as exc:
                ctx.store.submit_refused(job_id, str(exc), final=False)
                raise
            except HttpStatusError as exc:
                retryable = exc.status not in _REJECTED
                retry = self._refused(job_id, row.attempts, str(exc), retryable=retryable)
            else:
                try:
                    ctx.store.submit_accepted(job_id, accepted.request_id, accepted.polling_url)
                except StateWriteError:
                    # The job will come back uncertain; the log is what can still name its
                    # request for the operator.
                    log.error(
                        "accepted_not_recorded",
                        job_id=job_id,
                        request_id=accepted.request_id,
                        state="submitting",
                    )
                    raise
                log.info(
                    "submitted",
                    job_id=job_id,
                    request_id=accepted.request_id,
                    attempt=row.attempts,
                    state="submitted",
                )
                await ctx.queues.poll.send(job_id)
                return True
            if not retry:
                return False
            failures += 1
            await anyio.sleep(self.backoff.delay(failures, self._rng))

    def _refused(self, job_id: str, attempts: int, reason: str, *, retryable: bool) -> bool:
        """Record a refusal that cost nothing; returns whether to try the job again."""
        final = not retryable or attempts >= self.ctx.settings.max_attempts
        self.ctx.store.submit_refused(job_id, reason, final=final)
        log.warning(
            "submit_refused",
            job_id=job_id,
            attempt=attempts,
            error=reason,
            state="failed" if final else "pending",
        )
        return not final

    async def _post(self, job_id: str, request: GenerationRequest) -> SubmitAccepted:
        """The POST, shielded: a run that is stopping lets it return (within the stop deadline)
        rather than cutting it off and leaving an uncertain job."""
        ctx = self.ctx
        hooks = ctx.webhooks
        webhook_url = None if hooks is None else hooks.url_for(job_id)
        webhook_mode = "terminal" if hooks is None else hooks.mode
        with anyio.CancelScope(shield=True) as scope:
            ctx.open_posts.add(scope)
            try:
                if ctx.flags.interrupted:
                    scope.deadline = anyio.current_time() + ctx.settings.stop_deadline
                return await ctx.gateway.submit(
                    request, webhook_url=webhook_url, webhook_mode=webhook_mode
                )
            finally:
                ctx.open_posts.discard(scope)
        raise AnswerLostError("the run stopped before the gateway answered")

    async def _wait_for_healthy_gateway(self) -> None:
        """After a lost answer, submit nothing until a status request is answered again, so an
        outage costs at most the submissions that were already in flight."""
        gateway = self.ctx.gateway
        failures = 0
        while not gateway.healthy.is_set():
            with anyio.move_on_after(self.backoff.delay(failures + 1, self._rng) + 0.5):
                await gateway.healthy.wait()
            if gateway.healthy.is_set():
                return
            failures += 1
            try:
                # Any answer below 500 (a 404 for this made-up id) shows the backend is back.
                await gateway.status(f"health-probe-{uuid.uuid4()}")
            except (AuthRefusedError, QuotaExhaustedError):
                raise
            except GatewayError:
                continue
