"""The router on a real state file: a job taken over from the submit stage by a fleet worker's
idle downloaders goes to the downloader at once, its in-flight slot is freed, and the
submitter's late report on it changes nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from pixazo_batch.fleet import let_go_of_jobs_sent_elsewhere
from pixazo_batch.jobrow import JobRow
from pixazo_batch.lifecycle import Action, CallbackNamed, Listed, RunFlags, TakenElsewhere
from pixazo_batch.models import GenerationRequest, JobSpec, JobState
from pixazo_batch.pgstate import PgStateStore
from pixazo_batch.pgworkers import FleetIdentity
from pixazo_batch.router import Queues, Router
from pixazo_batch.state import StateStore
from tests.conftest import LogTap

pytestmark = pytest.mark.anyio


@dataclass
class Stages:
    """The receive ends of the router's queues, as the stages would hold them."""

    submit: MemoryObjectReceiveStream[str]
    poll: MemoryObjectReceiveStream[str]
    download: MemoryObjectReceiveStream[str]


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[tuple[StateStore, Router, Stages]]:
    submit_in, submit_out = anyio.create_memory_object_stream[str](100)
    poll_in, poll_out = anyio.create_memory_object_stream[str](100)
    download_in, download_out = anyio.create_memory_object_stream[str](100)
    streams = (submit_in, submit_out, poll_in, poll_out, download_in, download_out)
    with StateStore.open(tmp_path / "state.db") as store, contextlib.ExitStack() as closing:
        for stream in streams:
            closing.enter_context(stream)
        router = Router(store, Queues(submit_in, poll_in, download_in), max_in_flight=1)
        yield store, router, Stages(submit_out, poll_out, download_out)


def register(store: StateStore, job_id: str) -> JobRow:
    request = GenerationRequest(prompt=f"prompt {job_id}", image_url="https://x.example/a.jpg")
    row = store.register(JobSpec.of(job_id, request, f"{job_id}.mp4", line=1))
    assert isinstance(row, JobRow)
    return row


def completed_elsewhere(store: StateStore, job_id: str) -> JobRow:
    """What another worker of the fleet did meanwhile: sent the job, and it completed."""
    store.begin_submit(job_id, None)
    store.submit_accepted(job_id, f"req-{job_id}", None)
    store.remote_finished(
        job_id, JobState.COMPLETED, remote_status="COMPLETED", media_url="https://cdn.x/v.mp4"
    )
    row = store.get(job_id)
    assert row is not None
    return row


async def test_a_job_waiting_to_be_sent_is_taken_over_for_download_and_the_late_report_dropped(
    routed: tuple[StateStore, Router, Stages],
) -> None:
    store, router, stages = routed
    listed = Listed(RunFlags(), attempts_left=True)
    await router.admit(register(store, "a"), listed)
    assert stages.submit.receive_nowait() == "a"

    assert await router.take_over(completed_elsewhere(store, "a"))
    assert stages.download.receive_nowait() == "a"

    # The in-flight slot "a" held as a job to send is free: with --max-in-flight 1 the next
    # job is queued for sending at once.
    with anyio.fail_after(1):
        await router.admit(register(store, "b"), listed)
    assert stages.submit.receive_nowait() == "b"

    # The submitter reaches "a" at last and finds it moved on: its report is dropped, and the
    # job stays with the downloader (the run is not done while it downloads).
    step = await router.settle("a", TakenElsewhere("moved on"), from_stage=Action.SUBMIT)
    assert step.action is Action.REST
    router.close_intake()
    await router.settle("b", TakenElsewhere("moved on"), from_stage=Action.SUBMIT)
    assert router.moving == 1
    assert not router.settled.is_set()


async def test_a_job_this_run_polls_or_downloads_is_not_taken_over(
    routed: tuple[StateStore, Router, Stages],
) -> None:
    store, router, stages = routed
    register(store, "a")
    row = completed_elsewhere(store, "a")
    assert await router.take_over(row)
    assert stages.download.receive_nowait() == "a"

    assert not await router.take_over(row)
    with pytest.raises(anyio.WouldBlock):
        stages.download.receive_nowait()


async def test_a_job_taken_over_while_it_waited_for_a_slot_gives_the_slot_back(
    routed: tuple[StateStore, Router, Stages],
) -> None:
    store, router, stages = routed
    listed = Listed(RunFlags(), attempts_left=True)
    await router.admit(register(store, "a"), listed)
    waiting = register(store, "b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(router.admit, waiting, listed)
        await anyio.wait_all_tasks_blocked()
        assert await router.take_over(completed_elsewhere(store, "b"))
        assert stages.download.receive_nowait() == "b"
        await router.settle("a", TakenElsewhere("moved on"), from_stage=Action.SUBMIT)
    # "b" never reached the submit queue, and the slot it got once "a" left is free again.
    assert stages.submit.receive_nowait() == "a"
    with pytest.raises(anyio.WouldBlock):
        stages.submit.receive_nowait()
    with anyio.fail_after(1):
        await router.admit(register(store, "c"), listed)
    assert stages.submit.receive_nowait() == "c"


async def test_jobs_queued_here_and_sent_by_another_worker_stop_holding_the_run(
    routed: tuple[StateStore, Router, Stages],
) -> None:
    """The fleet's sweep lets go of a job another worker sent (its slot is freed and the run
    may end without it); it keeps a job still pending, and one being sent, which may be this
    worker's own POST on the wire."""
    store, router, _ = routed
    listed = Listed(RunFlags(), attempts_left=True)
    wide = Router(store, router.queues, max_in_flight=3)
    for job_id in ("sent", "sending", "pending"):
        await wide.admit(register(store, job_id), listed)
    store.begin_submit("sent", None)
    store.submit_accepted("sent", "req-sent", None)
    store.begin_submit("sending", None)

    let_go_of_jobs_sent_elsewhere(wide, store)

    assert sorted(wide.waiting_to_send()) == ["pending", "sending"]
    with anyio.fail_after(1):  # the slot "sent" held is free
        await wide.admit(register(store, "next"), listed)
    step = await wide.settle("sent", TakenElsewhere("moved on"), from_stage=Action.SUBMIT)
    assert step.action is Action.REST and step.state is JobState.SUBMITTED
    wide.close_intake()
    for job_id in ("sending", "pending", "next"):
        assert not wide.settled.is_set()
        await wide.settle(job_id, TakenElsewhere("moved on"), from_stage=Action.SUBMIT)
    assert wide.settled.is_set()


@contextlib.contextmanager
def pg_router(url: str, identity: FleetIdentity) -> Iterator[tuple[PgStateStore, Router]]:
    """A worker of a fleet on the database at ``url``: its store and its router."""
    streams = [anyio.create_memory_object_stream[str](100) for _ in range(3)]
    with PgStateStore.open_database(url, fleet=identity) as store, contextlib.ExitStack() as out:
        for send, receive in streams:
            out.enter_context(send)
            out.enter_context(receive)
        queues = Queues(*(send for send, _ in streams))
        yield store, Router(store, queues, max_in_flight=10)


@pytest.mark.parametrize(
    ("second_heard", "errors"), [("req-0", []), ("req-other", ["accepted_not_recorded"])]
)
async def test_a_request_two_workers_were_told_of_is_recorded_once_and_alarms_nobody(
    pg_url: str, log_tap: LogTap, second_heard: str, errors: list[str]
) -> None:
    """Both workers of a fleet heard of the request of a job whose answer was lost (a callback
    each was told of): the first records it, the second finds the job moved on and says so in
    one info line, with no error line about a request the state did not record; a request
    the job does not hold keeps its error line (it is paid for, and ``resolve`` needs it)."""
    identity = FleetIdentity(manifest="jobs.jsonl", base_url="http://gw", api_key="k")
    with (
        pg_router(pg_url, identity) as (first, first_router),
        pg_router(pg_url, identity) as (_, second_router),
    ):
        register(first, "job-0")
        first.begin_submit("job-0", None)
        first.submit_uncertain("job-0", "answer lost")
        first.release("job-0")
        confirmed = await first_router.settle("job-0", CallbackNamed("req-0"))
        again = await second_router.settle("job-0", CallbackNamed(second_heard))
    assert confirmed.state is JobState.SUBMITTED
    assert again.action is Action.REST
    lines = [json.loads(line) for line in log_tap.sink.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert [line["event"] for line in lines if line["level"] == "error"] == errors
    assert len(log_tap.named("moved_on_elsewhere")) == 1
