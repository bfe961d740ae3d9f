"""How a run stops: the first SIGINT or SIGTERM cancels every submit not yet on the wire and
gives those on it ``--stop-deadline`` to return (``docs/design.md``, "Write-ahead at the wire"),
a second leaves at once; the error that stopped the pipeline is found in its exception group,
said in one log line, and decides the exit code ("Errors", "Exit codes"); once the pipeline
has stopped, what it was told and could not record is recorded, if the state takes it then.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import TypeVar

import anyio
import structlog

from pixazo_batch.context import RunContext
from pixazo_batch.errors import (
    EXIT_INCOMPLETE,
    AuthRefusedError,
    ManifestError,
    RunStopError,
    StateDamagedError,
    StateError,
    StateWriteError,
)
from pixazo_batch.estimator import CompletionEstimator
from pixazo_batch.pgstate import PgStateStore
from pixazo_batch.router import Router
from pixazo_batch.state import StateStore

log = structlog.get_logger(__name__)
_E = TypeVar("_E", bound=BaseException)


def database_failure(store: StateStore, error: Exception) -> RunStopError:
    """Why the run stops when the state refuses a read: a damaged file, or a database gone."""
    if isinstance(error, sqlite3.DatabaseError):
        return StateDamagedError(f"the state file is damaged: {error}")
    return StateWriteError(f"the state database {store.path} failed: {error}")


def log_stop(error: RunStopError, ctx: RunContext) -> None:
    """One log line saying why the run stopped."""
    if isinstance(error, AuthRefusedError):
        log.error("auth_refused", http_status=error.status, error=str(error))
    elif isinstance(error, StateWriteError):
        log.error("state_write_failed", error=str(error))
    elif not isinstance(error, ManifestError):
        log.error("run_stopped", error=str(error), exit_code=error.exit_code)
    ctx.flags.stop(str(error), error.exit_code)


def first_of(group: BaseExceptionGroup[_E], kind: type[_E]) -> _E:
    """The first exception of ``kind`` in a (possibly nested) exception group."""
    matched, _ = group.split(kind)
    assert matched is not None
    leaves: list[BaseException] = list(matched.exceptions)
    while isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    first = leaves[0]
    assert isinstance(first, kind)
    return first


async def watch_signals(ctx: RunContext, scope: anyio.CancelScope) -> None:
    """First SIGINT/SIGTERM: stop submitting, give POSTs on the wire the stop deadline, cancel.
    Second: leave at once (every transition is already committed, so the file is consistent)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            if ctx.flags.interrupted:
                log.error("second_signal", signal=received)
                os._exit(EXIT_INCOMPLETE)
            ctx.flags.interrupted = True
            ctx.flags.stop(f"stopped by signal {signal.Signals(received).name}")
            log.warning("stopping", signal=received, posts_on_wire=len(ctx.posts_on_wire))
            # Submits not yet on the wire are simply cancelled (their jobs stay pending); the
            # POSTs on it are shielded and get the stop deadline to return.
            deadline = anyio.current_time() + ctx.settings.stop_deadline
            for post in ctx.posts_on_wire:
                post.deadline = deadline
            scope.cancel()


async def wind_down(
    store: StateStore, router: Router, origin: str, estimator: CompletionEstimator
) -> None:
    """Reach the state again if the database stopped the run by closing its connection (it may
    be back), record the acceptances it refused meanwhile, then keep what this run learned of
    the gateway's speed, so the next night starts from it.

    Raises:
        StateWriteError: the database cannot be reached again (there is no summary to give).
    """
    if isinstance(store, PgStateStore):
        store.reconnect_if_lost()
    await router.record_late_acceptances()
    try:
        store.keep_speed(origin, estimator.scales)
    except StateError as exc:  # only the next run's first polls are the worse for it
        log.warning("speed_not_recorded", error=str(exc))
