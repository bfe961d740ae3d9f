"""Router: the one place that moves jobs between stages.

A stage reports an outcome; the router asks ``lifecycle.next_step`` where it takes the job,
records the transition in the state store (durably, before anything acts on it), and sends the
job on. It also owns what the lifecycle does not decide: the in-flight slots that bound jobs
submitted and not yet finished (``--max-in-flight``), and the set of jobs moving in this run,
which tells the engine when the run's work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from pixazo_batch.errors import InvalidTransitionError, JobTakenError, StateError
from pixazo_batch.groupcommit import GroupCommits
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import (
    SENDABLE,
    Accepted,
    Action,
    CallbackNamed,
    OnWire,
    Outcome,
    Resumed,
    Step,
    TakenElsewhere,
    next_step,
)
from pixazo_batch.models import JobState
from pixazo_batch.state import StateStore
from pixazo_batch.transitions import record

log = structlog.get_logger(__name__)

#: actions after which a job occupies one of the ``--max-in-flight`` slots
_IN_FLIGHT = (Action.SUBMIT, Action.POLL, Action.AWAIT_CALLBACK)
#: actions the reporting stage carries out itself: the job does not change hands
_STAYS = (Action.RETRY, Action.SEND)


@dataclass
class Queues:
    """Send ends of the stage queues; each carries job ids. Unbounded: the in-flight slots,
    taken before a job is queued, are what bounds them."""

    submit: MemoryObjectSendStream[str]
    poll: MemoryObjectSendStream[str]
    download: MemoryObjectSendStream[str]


class Router:
    """Moves each job on as its outcomes decide; the only code that queues jobs for a stage.

    Usage: the producer calls ``await router.admit(row, outcome)`` for each job it finds; a
    stage calls ``await router.settle(job_id, outcome)`` when it is done with a job, and tries
    again itself when the returned step says ``RETRY``.
    """

    def __init__(self, store: StateStore, queues: Queues, *, max_in_flight: int) -> None:
        self.store = store
        self.queues = queues
        #: fires once intake is closed and no job is moving: the run's work is done
        self.settled = anyio.Event()
        #: each job moving in this run, and the stage it was last sent to
        self._stage: dict[str, Action] = {}
        self._intake_closed = False
        self._slots = anyio.CapacityLimiter(max_in_flight)
        self._holding: set[str] = set()
        self._slot_freed = anyio.Event()
        self._commits = GroupCommits(store)
        #: acceptances the state refused to record while the run went on (the money is known,
        #: only the write failed), tried again by ``record_late_acceptances``
        self._unrecorded: dict[str, Accepted] = {}
        #: what a store refusing a transition raises (a refused write, a database gone, a job
        #: a fleet moved on)
        self._refused: tuple[type[Exception], ...] = (StateError, *store.database_errors)

    @property
    def moving(self) -> int:
        """How many jobs are moving through this run."""
        return len(self._stage)

    async def next_slot_freed(self) -> None:
        """Wait until a job of this run leaves flight (a fleet's submitters wake on it)."""
        await self._slot_freed.wait()

    async def admit(self, row: JobRow, outcome: Outcome) -> Step:
        """Take in a job the producer found (``Listed``, ``Resumed``, ``Interrupted``) or a
        callback brought back; a job already moving is left where it is."""
        if row.id in self._stage:
            return Step(row.state, Action.REST)
        step = await self._apply_durably(row.id, outcome, row)
        if step.action is not Action.REST:
            await self._dispatch(row.id, step.action)
        return step

    async def take_over(self, row: JobRow) -> bool:
        """Take in a completed job this worker of a fleet claimed for its idle downloaders.
        A job still queued here to be sent (another worker sent it meanwhile) goes to the
        downloader at once; the submitter's later report on it is dropped. Returns False when
        the job moves here in another stage (it is left there)."""
        stage = self._stage.get(row.id)
        if stage is not None and stage is not Action.SUBMIT:
            return False
        self._stage.pop(row.id, None)
        await self.admit(row, Resumed(file_present=False))
        return True

    def waiting_to_send(self) -> list[str]:
        """The jobs queued here for the submitter (or in its hands)."""
        return [job_id for job_id, stage in self._stage.items() if stage is Action.SUBMIT]

    def let_go(self, job_id: str) -> None:
        """Stop waiting for a job queued here to be sent that another worker of the fleet sent
        meanwhile: it no longer holds an in-flight slot nor keeps the run from ending, and the
        submitter's later report on it is dropped."""
        if self._stage.get(job_id) is not Action.SUBMIT:
            return
        del self._stage[job_id]
        if job_id in self._holding:
            self._free_slot(job_id)
        self._check_settled()

    async def settle(
        self, job_id: str, outcome: Outcome, *, from_stage: Action | None = None
    ) -> Step:
        """Record what a stage reports and send the job on. Returns the step; with ``RETRY``
        the reporting stage keeps the job and tries again. A report ``from_stage`` on a job
        that stage no longer holds here (``take_over``, ``let_go``) is stale: dropped, and the
        step is REST."""
        if from_stage is not None and self._stage.get(job_id) is not from_stage:
            log.debug("stale_report_dropped", job_id=job_id, stage=from_stage.value)
            return Step(self._state_of(job_id), Action.REST, "no longer this stage's")
        try:
            step = await self._apply_durably(job_id, outcome)
        except InvalidTransitionError:
            if self.store.worker is None or (row := self.store.get(job_id)) is None:
                raise
            # A fleet: another worker moved the job on meanwhile (sent it, downloaded it); what
            # this stage learned is news to nobody, unless it names a request the job does not.
            named = (Accepted, CallbackNamed)
            if isinstance(outcome, named) and outcome.request_id != row.request_id:
                self._not_recorded(job_id, outcome)
            log.info("moved_on_elsewhere", job_id=job_id, state=row.state.value)
            taken = TakenElsewhere(f"job {job_id!r} is {row.state.value}")
            step = await self._apply_durably(job_id, taken, row)
        if step.action not in _STAYS:
            await self._dispatch(job_id, step.action)
        return step

    def _state_of(self, job_id: str) -> JobState:
        row = self.store.get(job_id)
        if row is None:
            raise InvalidTransitionError(f"unknown job {job_id!r}")
        return row.state

    def _apply(self, job_id: str, outcome: Outcome, row: JobRow | None) -> Step:
        """Decide the job's step and write its transition, without moving the job (inside a
        commit group: durable once the group commits). The step is decided on ``row`` when
        given, else on the job as the transition reads it (one read, not two)."""
        if row is not None:
            step = next_step(row.state, outcome)
            record(self.store, row, step, outcome)
            return step
        with self.store.deciding(job_id) as current:
            step = next_step(current.state, outcome)
            record(self.store, current, step, outcome)
        return step

    async def _apply_durably(
        self, job_id: str, outcome: Outcome, row: JobRow | None = None
    ) -> Step:
        """``_apply``, returning once the transition is committed (with those of other jobs)."""
        try:
            step = await self._commits.write(lambda: self._apply(job_id, outcome, row))
        except self._refused as exc:  # a database gone too: what it was told is kept here
            if not (isinstance(exc, InvalidTransitionError) and self.store.worker is not None):
                self._not_recorded(job_id, outcome)  # (a fleet's job moved on: ``settle``)
            raise
        if step.state is JobState.UNCERTAIN and step.action is Action.REST:
            # Nobody here waits for its callback: another worker of a fleet may settle it.
            self.store.release(job_id)
        return step

    def _not_recorded(self, job_id: str, outcome: Outcome) -> None:
        if isinstance(outcome, (Accepted, CallbackNamed)):
            # The gateway holds (and charges) the job; this line keeps its request_id for
            # ``resolve``, should the run's end not record it either (the job is then uncertain).
            log.error("accepted_not_recorded", job_id=job_id, request_id=outcome.request_id)
        if isinstance(outcome, Accepted):
            self._unrecorded[job_id] = outcome

    async def record_late_acceptances(self) -> None:
        """Once the pipeline has stopped, record the acceptances the state refused while it ran
        (a database back after dropping the connection, a disk with room again), so the next
        run polls those jobs instead of asking a person to ``resolve`` them. One still refused,
        or whose job moved on meanwhile (a fleet reaped it), keeps its ``accepted_not_recorded``
        line."""
        for job_id, accepted in self._unrecorded.items():
            try:
                row = self.store.get(job_id)
                if row is None or row.state is not JobState.SUBMITTING:
                    continue
                step = await self._commits.write(partial(self._apply, job_id, accepted, row))
            except self._refused as exc:
                log.error(
                    "accepted_not_recorded",
                    job_id=job_id, request_id=accepted.request_id, error=str(exc),
                )  # fmt: skip
                continue
            log.info("accepted_recorded_late", job_id=job_id, state=step.state.value)
        self._unrecorded.clear()

    async def on_wire(self, row: JobRow, budget_cents: int | None) -> JobRow:
        """The write-ahead of a POST about to leave: ``submitting``, durably, within budget.
        ``row`` is the job as the submitter read it; the transition checks the job afresh.
        Returns the job as it now stands.

        Raises:
            BudgetReachedError: the budget refuses the job; nothing changed.
            JobTakenError: another worker of the fleet holds the job.
            FleetFullError: the fleet has ``--max-in-flight`` jobs in flight.
        """
        job_id = row.id
        if self.store.worker is not None and row.state not in SENDABLE:
            raise JobTakenError(f"job {job_id!r} is {row.state.value} by another worker")
        next_step(row.state, OnWire())
        return await self._commits.write(lambda: self.store.begin_submit(job_id, budget_cents))

    def close_intake(self) -> None:
        """No more jobs will be admitted."""
        self._intake_closed = True
        self._check_settled()

    async def _dispatch(self, job_id: str, action: Action) -> None:
        if action is Action.REST:
            self._stage.pop(job_id, None)
        else:
            self._stage[job_id] = action  # before any wait: the job is moving from now on
        if action in _IN_FLIGHT:
            if job_id not in self._holding:
                await self._slots.acquire_on_behalf_of(job_id)
                self._holding.add(job_id)
                if self._stage.get(job_id) is not action:  # taken over while it waited
                    self._free_slot(job_id)
                    return
        elif job_id in self._holding:
            self._free_slot(job_id)
        match action:
            case Action.SUBMIT:
                self.queues.submit.send_nowait(job_id)
            case Action.POLL | Action.AWAIT_CALLBACK:
                self.queues.poll.send_nowait(job_id)
            case Action.DOWNLOAD:
                self.queues.download.send_nowait(job_id)
            case _:
                self._check_settled()

    def _free_slot(self, job_id: str) -> None:
        self._holding.discard(job_id)
        self._slots.release_on_behalf_of(job_id)
        self._slot_freed.set()
        self._slot_freed = anyio.Event()

    def _check_settled(self) -> None:
        if self._intake_closed and not self._stage:
            self.settled.set()
