"""``resolve``: a person settles one uncertain job, durably, without paying for it twice.

Three answers to "was this POST accepted?": the request id found in the Pixazo dashboard (checked
with one status request before it is recorded; the next run polls and downloads the job), "it was
never sent" (the job is submitted again by the next run, and the lost attempt no longer counts as
committed spend), or "give it up". Decided through ``lifecycle.next_step`` like every other step.
"""

from __future__ import annotations

from pathlib import Path

from pixazo_batch.errors import HttpStatusError, UsageError
from pixazo_batch.gateway import GatewayClient, usable_request_id
from pixazo_batch.lifecycle import (
    OperatorAbandoned,
    OperatorFoundRequest,
    OperatorNotSent,
    next_step,
)
from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore
from pixazo_batch.stores import open_store
from pixazo_batch.transitions import record

Choice = OperatorFoundRequest | OperatorNotSent | OperatorAbandoned


async def resolve_job(
    state_file: Path | str, job_id: str, choice: Choice, gateway: GatewayClient | None = None
) -> str:
    """Apply the operator's ``choice`` to uncertain job ``job_id``; returns what was done.

    ``gateway`` is needed to check a request id (``OperatorFoundRequest``).

    Raises:
        UsageError: no such job, the job is not uncertain, or the request id is malformed,
            another job's, or unknown to the gateway. Nothing changed.
        RequestError: the gateway could not be asked; nothing changed.
        StateLockedError: a run holds the state file.
    """
    folder = state_file.parent if isinstance(state_file, Path) else None
    with open_store(state_file, folder=folder) as store:
        row = store.get(job_id)
        if row is None:
            raise UsageError(f"no job {job_id!r} in {store.path}")
        if row.state is not JobState.UNCERTAIN:
            raise UsageError(f"job {job_id!r} is {row.state.value}, not uncertain: nothing to do")
        if isinstance(choice, OperatorFoundRequest):
            await _check_request(store, job_id, choice.request_id, gateway)
        step = next_step(row.state, choice)
        record(store, row, step, choice)
        return f"job {job_id!r}: {row.state.value} -> {step.state.value} ({step.reason})"


async def _check_request(
    store: StateStore, job_id: str, request_id: str, gateway: GatewayClient | None
) -> None:
    if not usable_request_id(request_id):
        raise UsageError(f"--request-id {request_id!r} is not a request id")
    owner = store.owner_of(request_id)
    if owner is not None:
        raise UsageError(f"request {request_id} already belongs to job {owner!r}")
    assert gateway is not None
    try:
        status = await gateway.status(request_id)
    except HttpStatusError as exc:
        if exc.status == 404:
            raise UsageError(
                f"the gateway does not know request {request_id} ({exc}); nothing changed"
            ) from None
        raise
    if status.request_id != request_id:
        raise UsageError(f"the gateway answered for {status.request_id}, not {request_id}")
