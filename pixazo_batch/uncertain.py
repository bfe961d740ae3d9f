"""An uncertain job's way back without a second payment: the request a callback named for it.

An uncertain job (its POST's answer lost) has nothing to poll. A callback naming a request for
it, kept in the state file by the receiver or delivered while this run waits
(``--uncertain-wait``), is a hint: it is believed once a status request shows the gateway knows
that request and no other job of ours holds it (``docs/design.md``, "Webhooks").
"""

from __future__ import annotations

import random
from functools import partial

import anyio
import structlog

from pixazo_batch.context import RunContext
from pixazo_batch.errors import HttpStatusError, RequestError, SubmitStopError
from pixazo_batch.governor import BackoffPolicy
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import CallbackNamed, NoCallback, Outcome
from pixazo_batch.models import StatusResponse

log = structlog.get_logger(__name__)


async def await_callback(
    ctx: RunContext, row: JobRow, backoff: BackoffPolicy, rng: random.Random
) -> Outcome:
    """``CallbackNamed`` once a named request is confirmed; ``NoCallback`` when none is in time."""
    earlier = set(ctx.store.request_ids(row.id))
    tried: set[str] = set()
    deadline = anyio.current_time() + ctx.settings.uncertain_wait
    failures = 0
    while True:
        named = [*ctx.store.callback_hints(row.id)]
        if ctx.webhooks is not None:
            named += ctx.webhooks.box.request_ids(row.id)
        for request_id in dict.fromkeys(named):
            if request_id in earlier or request_id in tried:
                continue
            confirmed = await _confirm(ctx, row, request_id)
            if confirmed is True:
                return CallbackNamed(request_id)
            if confirmed is False:
                tried.add(request_id)
            else:
                failures += 1
        patience = deadline - anyio.current_time()
        if patience <= 0 or ctx.webhooks is None:
            log.warning("uncertain_unresolved", job_id=row.id, state="uncertain")
            return NoCallback()
        if failures:
            patience = min(patience, backoff.delay(failures, rng))
        seen = frozenset(named) | tried | earlier
        await ctx.webhooks.box.wait(row.id, partial(_unseen, seen), patience)


async def _confirm(ctx: RunContext, row: JobRow, request_id: str) -> bool | None:
    """Whether the gateway knows ``request_id`` (and no other job of ours has it); None when it
    cannot tell now."""
    owner = ctx.store.owner_of(request_id)
    if owner is not None and owner != row.id:
        log.warning("callback_refused", job_id=row.id, request_id=request_id, owner=owner)
        return False
    try:
        status = await ctx.gateway.status(request_id)
    except HttpStatusError as exc:
        if exc.status == 404 and exc.body.from_gateway:
            log.warning("callback_refused", job_id=row.id, request_id=request_id, error=exc)
            return False
        return None
    except (RequestError, SubmitStopError):
        return None
    if status.request_id != request_id:
        return False
    log.warning("uncertain_resolved", job_id=row.id, request_id=request_id, state="submitted")
    return True


def _unseen(seen: frozenset[str], status: StatusResponse) -> bool:
    return status.request_id not in seen
